"""The six-scanner demo dataset: layout, naming, spacing, masks, determinism, domain shift, CLI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from scripts import make_demo_data as mdd
from scripts.make_demo_data import DOMAIN_NAMES, make_demo_data

ROOT = Path(__file__).resolve().parents[1]
NAME = re.compile(r"^CC(\d{4})_(siemens|ge|philips)_(15|3)_(\d{2})_([MF])\.nii\.gz$")
N_SUBJECTS = 2


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("demo") / "data", n_subjects=N_SUBJECTS, seed=0, verbose=False)


def _scans(root: Path) -> dict[str, list[tuple[np.ndarray, np.ndarray, nib.Nifti1Image]]]:
    out: dict[str, list] = {d: [] for d in DOMAIN_NAMES}
    for path in sorted((root / "Original").iterdir()):
        match = NAME.match(path.name)
        assert match, path.name
        image = nib.load(path)
        mask = nib.load(root / "Silver-standard" / path.name.replace(".nii.gz", "_ss.nii.gz"))
        out[f"{match[2]}_{match[3]}"].append((np.asarray(image.dataobj), np.asarray(mask.dataobj), image))
    return out


def _normalise(image: np.ndarray) -> np.ndarray:
    """The protocol's intensity preprocessing: clip to the [1, 99] percentiles, min-max to [0, 1]."""
    lo, hi = np.percentile(image, [1, 99])
    return (np.clip(image.astype(np.float64), lo, hi) - lo) / (hi - lo)


def _head(image: np.ndarray) -> np.ndarray:
    head = image > 0.1 * np.percentile(image, 99)
    labels, _ = ndi.label(head)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return ndi.binary_fill_holes(labels == sizes.argmax())


def test_official_layout_and_naming(dataset):
    assert sorted(p.name for p in dataset.iterdir()) == ["Original", "Silver-standard", "mosaic.png"]
    images = sorted(p.name for p in (dataset / "Original").iterdir())
    masks = sorted(p.name for p in (dataset / "Silver-standard").iterdir())
    assert len(images) == 6 * N_SUBJECTS
    assert masks == [n.replace(".nii.gz", "_ss.nii.gz") for n in images]
    ids, per_domain = [], {d: 0 for d in DOMAIN_NAMES}
    for name in images:
        match = NAME.match(name)
        assert match, name
        ids.append(int(match[1]))
        per_domain[f"{match[2]}_{match[3]}"] += 1
        assert 20 <= int(match[4]) <= 80
    assert ids == list(range(1, 6 * N_SUBJECTS + 1))  # unique and consecutive across domains
    assert per_domain == {d: N_SUBJECTS for d in DOMAIN_NAMES}
    # no temporary folder is left next to the dataset
    assert [p.name for p in dataset.parent.iterdir()] == ["data"]


def test_mosaic_written(dataset):
    data = (dataset / "mosaic.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_masks_binary_nonempty_aligned_grid_inside_head(dataset):
    for domain, scans in _scans(dataset).items():
        for image, mask, img in scans:
            assert image.dtype == np.int16 and image.min() >= 0
            assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}, domain
            assert mask.shape == image.shape
            volume_ml = mask.sum() * np.prod(img.header.get_zooms()[:3]) / 1000
            assert 900 < volume_ml < 2800, (domain, volume_ml)
            assert (mask.astype(bool) & _head(image)).sum() / mask.sum() > 0.97, domain
            # the brain is inside the field of view, not cut by it (except its inferior brainstem end)
            assert not mask[0].any() and not mask[-1].any() and not mask[:, 0].any() and not mask[:, -1].any()
            assert not mask[:, :, -1].any()


def test_spacing_per_domain(dataset):
    for domain, scans in _scans(dataset).items():
        for _, _, img in scans:
            zooms = np.array(img.header.get_zooms()[:3], dtype=float)
            np.testing.assert_allclose(np.diag(img.affine)[:3], zooms, rtol=1e-5)
            assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
            assert zooms[0] == pytest.approx(2.66 if domain == "siemens_3" else 2.0, abs=1e-4), domain
            if domain == "philips_15":
                assert zooms[1] == pytest.approx(zooms[2]) and 1.778 - 1e-3 <= zooms[1] <= 2.0
            elif domain == "philips_3":
                assert zooms[1] == pytest.approx(zooms[2])
                assert min(abs(zooms[1] - 1.964), abs(zooms[1] - 2.0)) < 1e-3
            else:
                np.testing.assert_allclose(zooms[1:], [2.0, 2.0], atol=1e-5)


def test_full_resolution_spacing():
    image, mask, affine = mdd._subject(mdd.DOMAINS[DOMAIN_NAMES.index("siemens_3")], "full",
                                       np.random.default_rng(0))
    np.testing.assert_allclose(np.diag(affine)[:3], [1.33, 1.0, 1.0])
    assert image.shape == mask.shape and 120 < image.shape[0] < 170 and 200 < image.shape[1] < 260


def test_deterministic_per_seed(tmp_path):
    a = make_demo_data(tmp_path / "a", n_subjects=1, seed=3, verbose=False)
    b = make_demo_data(tmp_path / "b", n_subjects=1, seed=3, workers=2, verbose=False)  # processes: same files
    c = make_demo_data(tmp_path / "c", n_subjects=1, seed=4, verbose=False)
    for sub in ("Original", "Silver-standard"):
        names_a = sorted(p.name for p in (a / sub).iterdir())
        assert names_a == sorted(p.name for p in (b / sub).iterdir())
        for name in names_a:
            assert (a / sub / name).read_bytes() == (b / sub / name).read_bytes(), name
    first_a = sorted((a / "Original").iterdir())[0]
    first_c = sorted((c / "Original").iterdir())[0]
    arr_a, arr_c = np.asarray(nib.load(first_a).dataobj), np.asarray(nib.load(first_c).dataobj)
    assert arr_a.shape != arr_c.shape or not np.array_equal(arr_a, arr_c)


def test_domains_differ(dataset):
    """Scanner shift: the scalp-vs-brain order flips between domains and histograms differ."""
    ratio, hist = {}, {}
    for domain, scans in _scans(dataset).items():
        rs, hs = [], []
        for image, mask, _ in scans:
            x, brain, head = _normalise(image), mask.astype(bool), _head(image)
            scalp = head & ~ndi.binary_dilation(brain, iterations=4)
            rs.append(x[scalp].mean() / x[brain].mean())
            hs.append(np.histogram(x[head], bins=20, range=(0, 1))[0] / head.sum())
        ratio[domain], hist[domain] = np.mean(rs), np.mean(hs, axis=0)
    assert ratio["ge_15"] > 1.05  # scalp brighter than the brain on average
    assert ratio["philips_15"] < 0.45  # scalp much darker than the brain
    assert ratio["siemens_3"] < 0.75 * ratio["siemens_15"]
    tv = {(a, b): 0.5 * np.abs(hist[a] - hist[b]).sum() for a in DOMAIN_NAMES for b in DOMAIN_NAMES if a < b}
    assert max(tv.values()) > 0.35
    assert sum(v > 0.15 for v in tv.values()) >= 8, tv


def test_mask_follows_the_deformed_anatomy(dataset):
    """Cortex just inside the mask is brighter than CSF/skull just outside; a shifted mask loses that edge."""

    def edge_contrast(x: np.ndarray, m: np.ndarray) -> float:
        inner = m & ~ndi.binary_erosion(m)
        outer = ndi.binary_dilation(m) & ~m
        return x[inner].mean() / x[outer].mean()

    for domain, scans in _scans(dataset).items():
        for image, mask, _ in scans:
            x, brain = _normalise(image), mask.astype(bool)
            true = edge_contrast(x, brain)
            assert true > 1.08, domain
            for axis in range(3):
                for shift in (-3, 3):
                    assert edge_contrast(x, np.roll(brain, shift, axis=axis)) < true, (domain, axis, shift)


def test_refuses_to_overwrite(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        make_demo_data(out, n_subjects=1, verbose=False)
    assert (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    make_demo_data(out, n_subjects=1, overwrite=True, verbose=False)
    assert not (out / "keep.txt").exists() and (out / "mosaic.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_empty_output_folder_is_used(tmp_path):
    (tmp_path / "data").mkdir()
    make_demo_data(tmp_path / "data", n_subjects=1, verbose=False)
    assert len(list((tmp_path / "data" / "Original").iterdir())) == 6


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mdd, "_write_mosaic", boom)
    with pytest.raises(KeyboardInterrupt):
        make_demo_data(tmp_path / "data", n_subjects=1, verbose=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs", [{"n_subjects": 0}, {"n_subjects": 1.5}, {"resolution": "huge"}, {"seed": -1}, {"workers": -1}]
)
def test_bad_options_raise(tmp_path, kwargs):
    with pytest.raises(ValueError):
        make_demo_data(tmp_path / "data", verbose=False, **kwargs)
    assert list(tmp_path.iterdir()) == []


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_demo_data.py"), *args],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )


@pytest.mark.parametrize("bad", [["--n_subjects", "0"], ["--resolution", "huge"], ["--n_subject", "2"]])
def test_cli_bad_option_one_line_error(tmp_path, bad):
    result = _cli("--output_dir", str(tmp_path / "data"), *bad)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("make_demo_data: error: "), result.stderr
    assert not (tmp_path / "data").exists()


def test_cli_writes_dataset_and_progress(tmp_path):
    result = _cli("--output_dir", str(tmp_path / "data"), "--n_subjects", "1", "--seed", "1")
    assert result.returncode == 0, result.stderr
    progress = [line for line in result.stdout.splitlines() if line.startswith("make_demo_data: ")]
    assert [line.split()[1] for line in progress[:6]] == list(DOMAIN_NAMES)
    assert len(list((tmp_path / "data" / "Silver-standard").glob("CC000[1-6]_*_ss.nii.gz"))) == 6
    again = _cli("--output_dir", str(tmp_path / "data"), "--n_subjects", "1")
    assert again.returncode == 2 and "not empty" in again.stderr
