"""What the inference command line accepts: a folder tree of NIfTI files and DICOM series, one series, one file.

Real command lines (``python -m monai.bundle run``), real DICOM series written by ITK/GDCM. Masks mirror the
input's subfolders and keep each input's exact geometry as the same reader loads it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import itk
import numpy as np
import pytest
import torch
from monai.transforms import LoadImage

from custom.networks import UNet2D
from tests.bundle_utils import SOURCE
from tests.corpus import SPACING, head, save

pytestmark = pytest.mark.slow


def _dicom_series(folder: Path, spacing=(4.0, 3.8)) -> Path:
    """The corpus head as a DICOM series of int16 slices (one file per slice)."""
    folder.mkdir(parents=True)
    array = (head()[0] * 10).astype(np.int16)
    image = itk.image_from_array(np.ascontiguousarray(array.transpose(2, 1, 0)))  # ITK arrays are z, y, x
    image.SetSpacing([*spacing, 1.0])
    names = [str(folder / f"IM{i:04d}.dcm") for i in range(array.shape[2])]
    writer = itk.ImageSeriesWriter[type(image), itk.Image[itk.SS, 2]].New(
        Input=image, ImageIO=itk.GDCMImageIO.New(), FileNames=names)
    writer.Update()
    return folder


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "model.pt"
    torch.save(UNet2D().state_dict(), path)
    return path


def _infer(dataset: Path, out: Path, weights: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(SOURCE / "configs" / "inference.yaml"),
         "--dataset_dir", str(dataset), "--output_dir", str(out), "--model_path", str(weights),
         "--spacing", json.dumps(list(SPACING))],
        capture_output=True, text=True, timeout=300, cwd=out.parent,
    )


def _same_geometry(mask: Path, source: Path) -> None:
    loaded, original = LoadImage(image_only=True)(str(mask)), LoadImage(image_only=True)(str(source))
    assert loaded.shape == original.shape
    assert np.allclose(loaded.affine.numpy(), original.affine.numpy(), atol=1e-4)
    assert set(np.unique(loaded.numpy())) <= {0, 1}


def test_a_tree_of_series_and_files_is_mirrored(tmp_path, weights):
    scans = tmp_path / "scans"
    series = [_dicom_series(scans / "p1" / "T1"), _dicom_series(scans / "p2" / "T1")]  # same name, other patient
    (scans / "p3").mkdir()
    nifti = save(scans / "p3" / "t1.nii.gz", head()[0])
    result = _infer(scans, tmp_path / "masks", weights)
    assert result.returncode == 0, result.stderr[-2000:]
    written = sorted(str(p.relative_to(tmp_path / "masks")) for p in (tmp_path / "masks").rglob("*") if p.is_file())
    assert written == ["p1/T1_brainmask.nii.gz", "p2/T1_brainmask.nii.gz", "p3/t1_brainmask.nii.gz"]
    for source, mask in zip([*series, nifti], written, strict=True):
        _same_geometry(tmp_path / "masks" / mask, source)
    assert not list(tmp_path.glob(".masks.partial-*"))  # the staging folder is gone


@pytest.mark.parametrize("what", ["dicom series", "nifti file"])
def test_one_volume_as_dataset_dir(tmp_path, weights, what):
    """--dataset_dir may be one volume: its mask goes INTO output_dir, never beside it."""
    scan = _dicom_series(tmp_path / "T1") if what == "dicom series" else save(tmp_path / "t1.nii.gz", head()[0])
    result = _infer(scan, tmp_path / "masks", weights)
    assert result.returncode == 0, result.stderr[-2000:]
    name = "T1_brainmask.nii.gz" if what == "dicom series" else "t1_brainmask.nii.gz"
    assert [p.name for p in (tmp_path / "masks").iterdir()] == [name]
    assert not list(tmp_path.glob("*_brainmask.nii.gz"))
    _same_geometry(tmp_path / "masks" / name, scan)


def test_one_progress_line_per_volume(tmp_path, weights):
    """Inference says which volume it is on and how long each took; evaluate adds the volume's surface Dice."""
    scans = tmp_path / "scans"
    scans.mkdir()
    image, mask = head()
    paths = [save(scans / f"{n}.nii.gz", image) for n in ("a", "b")]
    result = _infer(scans, tmp_path / "masks", weights)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [ln for ln in (result.stdout + result.stderr).splitlines() if "custom.handlers - INFO - volume " in ln]
    assert [ln.split(" - INFO - ")[1].split(" (")[0] for ln in lines] == [
        f"volume 1/2: {paths[0]}", f"volume 2/2: {paths[1]}"]
    assert all(ln.endswith(" s)") for ln in lines)
    labels = [save(scans / f"{n}_mask.nii.gz", mask) for n in ("a", "b")]
    datalist = tmp_path / "dl.json"
    entries = [{"image": str(i), "label": str(m)} for i, m in zip(paths, labels, strict=True)]
    datalist.write_text(json.dumps({"test": entries}))
    configs = json.dumps([str(SOURCE / "configs" / f) for f in ("inference.yaml", "evaluate.yaml")])
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", configs, "--datalist_file", str(datalist),
         "--output_dir", str(tmp_path / "eval"), "--model_path", str(weights), "--spacing", json.dumps(list(SPACING))],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [ln for ln in (result.stdout + result.stderr).splitlines() if "custom.handlers - INFO - volume " in ln]
    rows = (tmp_path / "eval" / "metrics.csv").read_text().splitlines()[1:]
    assert len(lines) == 2 == len(rows)
    for line, row in zip(lines, rows, strict=True):  # the line's surface Dice is the scan's row in metrics.csv
        assert f"surface Dice {float(row.split(',')[2]):.4f})" in line


def test_outputs_keep_the_inputs_format(tmp_path):
    """A 4D single-volume input gives a 4D mask; header codes survive; the stripped image keeps the input's dtype
    and stored values inside the mask (here a network that calls every voxel brain)."""
    import nibabel as nib

    state = UNet2D().state_dict()
    state["out_path.2.bias"] = torch.full_like(state["out_path.2.bias"], 20.0)  # logits >> 0 everywhere
    weights = tmp_path / "all_brain.pt"
    torch.save(state, weights)
    scans = tmp_path / "scans"
    scans.mkdir()
    template = nib.load(save(scans / "tmp.nii.gz", head()[0]))
    stored = (np.asanyarray(template.dataobj) * 10).astype(np.int16)
    for name, array in (("int16_3d", stored), ("float_4d", stored[..., None].astype(np.float32))):
        image = nib.Nifti1Image(array, template.affine)
        image.set_qform(template.affine, code=2)
        image.set_sform(template.affine, code=4)
        nib.save(image, scans / f"{name}.nii.gz")
    (scans / "tmp.nii.gz").unlink()
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(SOURCE / "configs" / "inference.yaml"),
         "--dataset_dir", str(scans), "--output_dir", str(tmp_path / "out"), "--model_path", str(weights),
         "--spacing", json.dumps(list(SPACING)), "--save_stripped", "true"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("int16_3d", "float_4d"):
        source = nib.load(scans / f"{name}.nii.gz")
        mask = nib.load(tmp_path / "out" / f"{name}_brainmask.nii.gz")
        stripped = nib.load(tmp_path / "out" / f"{name}_stripped.nii.gz")
        assert mask.shape == stripped.shape == source.shape
        assert mask.get_data_dtype() == np.uint8 and stripped.get_data_dtype() == source.get_data_dtype()
        for out in (mask, stripped):
            assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (2, 4)
            assert np.allclose(out.affine, source.affine)
        assert np.asanyarray(mask.dataobj).min() == 1  # every voxel brain
        assert np.array_equal(np.asanyarray(stripped.dataobj), np.asanyarray(source.dataobj))
