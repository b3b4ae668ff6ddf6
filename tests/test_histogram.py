"""Histogram matching: a known distribution onto another, identity on its own reference, the reference file, and
``--histogram_reference`` on the inference bundle's real command line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from custom.cc359 import index_dataset
from custom.histogram import HistogramMatchd, HistogramReference, build_reference, match_histogram
from custom.transforms import InputError, preprocessing
from tests.bundle_utils import FAST, ROOT, SOURCE, tiny_dataset

PROBS = np.linspace(0.05, 0.95, 19)


def _normal_image(seed=0, n=200_000):
    rng = np.random.default_rng(seed)
    values = np.clip(rng.normal(0.5, 0.1, n), 1e-3, 1.0)
    values[: n // 4] = 0.0  # background, clipped to 0 by the preprocessing
    return rng.permutation(values).reshape(1, 50, 40, -1).astype(np.float32)


def test_a_normal_distribution_is_mapped_onto_a_uniform_one():
    image = _normal_image()
    uniform = np.random.default_rng(1).uniform(0.2, 0.8, 300_000)
    reference = build_reference([uniform], n_levels=1001)
    matched = match_histogram(image, reference)
    fg = image > 0
    assert np.allclose(np.quantile(matched[fg], PROBS), 0.2 + 0.6 * PROBS, atol=0.005)
    assert np.array_equal(matched[~fg], image[~fg])  # background untouched
    order = np.argsort(image[fg], kind="stable")
    assert np.all(np.diff(matched[fg][order]) >= 0)  # the order of intensities is kept


def test_matching_to_its_own_reference_is_the_identity():
    image = _normal_image(seed=2)
    matched = match_histogram(image, build_reference([{"image": image}]))
    assert np.abs(matched - image).max() < 0.01  # the sparse tails: one table entry spans a few voxels
    assert np.abs(matched - image).mean() < 1e-4


def test_the_reference_averages_scans_and_round_trips(tmp_path):
    a, b = np.linspace(0.1, 0.5, 1001), np.linspace(0.3, 0.9, 1001)
    reference = build_reference([torch.as_tensor(a), torch.as_tensor(b)], n_levels=11)
    assert reference.n_scans == 2 and len(reference.levels) == 11 + 2 * 16
    assert np.allclose(reference.quantiles, (np.quantile(a, reference.levels) + np.quantile(b, reference.levels)) / 2)
    loaded = HistogramReference.load(reference.save(tmp_path / "ref.json"))
    assert np.allclose(loaded.quantiles, reference.quantiles) and np.array_equal(loaded.levels, reference.levels)


def test_a_bad_reference_file_is_one_line_naming_it(tmp_path):
    with pytest.raises(InputError, match=r"nowhere.json: histogram reference not found"):
        HistogramMatchd("image", tmp_path / "nowhere.json")
    for content in ("not json", json.dumps({"format": "other"}),
                    json.dumps({"format": "brain-extraction-histogram/1", "levels": [0, 1], "quantiles": [1, 0]})):
        bad = tmp_path / "bad.json"
        bad.write_text(content)
        with pytest.raises(InputError, match=r"bad.json: not a histogram reference"):
            HistogramMatchd("image", bad)
    with pytest.raises(ValueError, match="no scans"):
        build_reference([])


def test_the_transform_keeps_metadata_and_is_off_without_a_reference():
    image = MetaTensor(torch.as_tensor(_normal_image()), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    reference = build_reference([np.random.default_rng(1).uniform(0.2, 0.8, 10_000)])
    out = HistogramMatchd("image", reference)({"image": image})["image"]
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, image.affine)
    assert not torch.equal(out, image)
    assert HistogramMatchd("image", "")({"image": image})["image"] is image
    names = lambda steps: [type(t).__name__ for t in steps.transforms]  # noqa: E731
    assert "HistogramMatchd" in names(preprocessing(["image"], histogram_reference=reference))
    assert "HistogramMatchd" not in names(preprocessing(["image"], histogram_reference=""))


# ---- the reference script and the inference bundle's command line --------------------------------------------

def _infer(tmp_path, target, out, *args):
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(SOURCE / "configs/inference.yaml"),
           "--dataset_dir", str(target), "--output_dir", str(out), "--spacing", str(FAST["spacing"]).replace(" ", ""),
           "--precision", "fp32", "--num_threads", "1", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)


def test_histogram_reference_option_on_the_command_line(tmp_path):
    scans = index_dataset(tiny_dataset(tmp_path / "data"))
    (tmp_path / "source").mkdir()
    (tmp_path / "target").mkdir()
    for s in scans:
        if s.domain == "siemens_15":
            shutil.copy(s.image, tmp_path / "source" / f"{s.id}.nii.gz")
    shutil.copy(next(s.image for s in scans if s.domain == "ge_3"), tmp_path / "target" / "scan.nii.gz")
    ref = tmp_path / "ref.json"
    script = [sys.executable, str(ROOT / "scripts/histogram_reference.py"), "--spacing",
              str(FAST["spacing"]).replace(" ", "")]
    built = subprocess.run([*script, "--scans", str(tmp_path / "source"), "--output", str(ref)], capture_output=True,
                           text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    assert HistogramReference.load(ref).n_scans == 2
    by_domain = subprocess.run([*script, "--scans", str(tmp_path / "data"), "--domain", "siemens_15", "--output",
                                str(tmp_path / "by_domain.json")], capture_output=True, text=True, timeout=300)
    assert by_domain.returncode == 0, by_domain.stderr[-2000:]
    assert json.loads((tmp_path / "by_domain.json").read_text()) == json.loads(ref.read_text())
    unknown = subprocess.run([*script, "--scans", str(tmp_path / "data"), "--domain", "siemens_7", "--output",
                              str(tmp_path / "none.json")], capture_output=True, text=True, timeout=300)
    assert unknown.returncode == 2 and "no scans of domain 'siemens_7'" in unknown.stderr
    assert not (tmp_path / "none.json").exists()

    flat = tmp_path / "flat.json"  # every voxel inside the head gets the same value: the masks must change
    record = json.loads(ref.read_text())
    flat.write_text(json.dumps({**record, "quantiles": [0.5] * len(record["quantiles"])}))
    masks = {}
    for name, extra in (("plain", []), ("matched", ["--histogram_reference", str(ref)]),
                        ("flat", ["--histogram_reference", str(flat)])):
        proc = _infer(tmp_path, tmp_path / "target", tmp_path / name, *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
        masks[name] = np.asarray(nib.load(tmp_path / name / "scan_brainmask.nii.gz").dataobj)
    assert masks["matched"].any()
    assert not np.array_equal(masks["flat"], masks["plain"])

    missing = tmp_path / "nowhere.json"
    proc = _infer(tmp_path, tmp_path / "target", tmp_path / "bad", "--histogram_reference", str(missing))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == f"error: {missing}: histogram reference not found"
    assert not (tmp_path / "bad").exists()
