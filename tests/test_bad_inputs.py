"""A corpus of bad inputs: each gets a one-line error naming the file and the problem, and leaves no output."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from custom.checkpoints import load_state_dict
from custom.transforms import InputError, preprocessing
from tests.bundle_utils import SOURCE

SPACING = (4.0, 3.8, 3.8)


def _head(shape=(24, 28, 20)):
    """A small head-like volume and its brain mask (ellipsoids)."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    r = np.sqrt((grid**2).sum(0))
    image = np.where(r < 0.9, 80.0, 5.0) + np.where(r < 0.6, 40.0, 0.0)
    return image.astype(np.float32), (r < 0.6).astype(np.uint8)


def _save(path: Path, array, affine=None, zooms=None) -> Path:
    img = nib.Nifti1Image(array, np.diag([1.0, 1.0, 1.0, 1.0]) if affine is None else affine)
    if zooms is not None:
        img.header.set_zooms(zooms)
    nib.save(img, str(path))
    return path


@pytest.fixture
def good(tmp_path):
    image, mask = _head()
    return _save(tmp_path / "img.nii.gz", image), _save(tmp_path / "mask.nii.gz", mask)


def _bad_image(tmp_path, kind):
    image, _ = _head()
    path = tmp_path / f"{kind}.nii.gz"
    if kind == "truncated_gzip":
        _save(path, image)
        path.write_bytes(path.read_bytes()[:400])
    elif kind == "not_nifti":
        path.write_bytes(gzip.compress(b"this is a text file, not an image" * 20))
    elif kind == "image_2d":
        _save(path, image[:, :, 0])
    elif kind == "image_4d":
        _save(path, np.stack([image, image, image], axis=-1))
    elif kind == "nan_voxels":
        image[3, 3, 3] = np.nan
        _save(path, image)
    elif kind == "inf_voxels":
        image[3, 3, 3] = np.inf
        _save(path, image)
    elif kind == "constant":
        _save(path, np.full_like(image, 7.0))
    elif kind == "absurd_spacing":
        _save(path, image, affine=np.diag([250.0, 250.0, 250.0, 1.0]))
    elif kind == "missing":
        pass
    return path


IMAGE_PROBLEMS = {
    "truncated_gzip": "cannot read",
    "not_nifti": "cannot read",
    "image_2d": "expected a 3D volume",
    "image_4d": "4D image with 3 volumes",
    "nan_voxels": "NaN or infinite",
    "inf_voxels": "NaN or infinite",
    "constant": "constant",
    "absurd_spacing": "implausible voxel spacing",
    "missing": "file not found",
}


@pytest.mark.parametrize("kind", sorted(IMAGE_PROBLEMS))
def test_bad_image_is_named_with_its_problem(tmp_path, kind):
    path = _bad_image(tmp_path, kind)
    with pytest.raises(Exception) as info:
        preprocessing(keys=["image"], spacing=SPACING)({"image": str(path)})
    error = _own(info.value)
    assert isinstance(error, InputError)
    message = str(error)
    assert str(path) in message and IMAGE_PROBLEMS[kind] in message and "\n" not in message


def _own(exc):
    while exc is not None and not isinstance(exc, InputError):
        exc = exc.__cause__ or exc.__context__
    return exc


def test_singleton_fourth_axis_is_simply_handled(tmp_path):
    image, _ = _head()
    path = _save(tmp_path / "t1_4d.nii.gz", image[..., None])
    out = preprocessing(keys=["image"], spacing=SPACING)({"image": str(path)})["image"]
    assert out.ndim == 4 and out.shape[0] == 1


def _mask_case(tmp_path, kind):
    image, mask = _head()
    img = _save(tmp_path / "img.nii.gz", image)
    if kind == "empty_mask":
        m = _save(tmp_path / "m.nii.gz", np.zeros_like(mask))
    elif kind == "non_binary_mask":
        m = _save(tmp_path / "m.nii.gz", mask * 3)
    elif kind == "shape_mismatch":
        m = _save(tmp_path / "m.nii.gz", mask[:-2])
    elif kind == "affine_mismatch":
        m = _save(tmp_path / "m.nii.gz", mask, affine=np.diag([1.0, 1.0, 1.3, 1.0]))
    return img, m


MASK_PROBLEMS = {
    "empty_mask": "the mask is empty",
    "non_binary_mask": "not binary",
    "shape_mismatch": "differs from image shape",
    "affine_mismatch": "geometry (affine) differs",
}


@pytest.mark.parametrize("kind", sorted(MASK_PROBLEMS))
def test_bad_mask_is_named_with_its_problem(tmp_path, kind):
    img, mask = _mask_case(tmp_path, kind)
    with pytest.raises(Exception) as info:
        preprocessing(keys=["image", "label"], spacing=SPACING)({"image": str(img), "label": str(mask)})
    message = str(_own(info.value))
    assert str(mask) in message and MASK_PROBLEMS[kind] in message


def test_good_pair_passes(good):
    img, mask = good
    out = preprocessing(keys=["image", "label"], spacing=SPACING)({"image": str(img), "label": str(mask)})
    assert float(out["image"].max()) == pytest.approx(1.0) and set(torch.unique(out["label"]).tolist()) == {0.0, 1.0}


@pytest.mark.parametrize("content", [b"", b"not a torch file", None])
def test_weights_are_loaded_as_tensors_only(tmp_path, content):
    path = tmp_path / "model.pt"
    if content is None:  # a pickle that would run code if unpickled without weights_only
        torch.save({"model": {"w": torch.zeros(1)}, "hook": print}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match="model.pt"):
        load_state_dict(path)


# ---- the real command line: one line on stderr, exit 2, nothing written --------------------------------------

def _run_inference(tmp_path, inputs: Path, *extra: str):
    out = tmp_path / "out"
    weights = tmp_path / "model.pt"
    from custom.networks import UNet2D

    torch.save(UNet2D().state_dict(), weights)
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(SOURCE / "configs" / "inference.yaml"),
         "--dataset_dir", str(inputs), "--output_dir", str(out), "--model_path", str(weights),
         "--spacing", "[4.0,3.8,3.8]", *extra],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    return proc, out


@pytest.mark.slow
def test_cli_bad_volume_gives_one_line_and_no_output(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    bad = _bad_image(inputs, "nan_voxels")
    proc, out = _run_inference(tmp_path, inputs)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(bad) in last and "NaN" in last
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
def test_cli_unknown_option_is_refused(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    _save(inputs / "ok.nii.gz", _head()[0])
    proc, out = _run_inference(tmp_path, inputs, "--save_strippd", "True")
    assert proc.returncode == 2
    assert "unknown option --save_strippd" in proc.stderr.strip().splitlines()[-1]
    assert not out.exists()


@pytest.mark.slow
def test_cli_empty_folder_is_refused(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    proc, out = _run_inference(tmp_path, inputs)
    assert proc.returncode == 2
    assert "no NIfTI, NRRD, MHA or DICOM volumes found" in proc.stderr.strip().splitlines()[-1]
    assert not out.exists()
