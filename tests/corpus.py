"""The corpus of bad inputs every entry point is tested with: small head-like volumes, broken in one way each."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np

SPACING = (4.0, 3.8, 3.8)  # coarse voxels: the volumes below are ~10 cm heads in a few hundred voxels


def head(shape=(24, 28, 20)):
    """A small head-like volume and its brain mask (ellipsoids)."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    r = np.sqrt((grid**2).sum(0))
    image = np.where(r < 0.9, 80.0, 5.0) + np.where(r < 0.6, 40.0, 0.0)
    return image.astype(np.float32), (r < 0.6).astype(np.uint8)


def save(path: Path, array, affine=None, zooms=None) -> Path:
    img = nib.Nifti1Image(array, np.diag([1.0, 1.0, 1.0, 1.0]) if affine is None else affine)
    if zooms is not None:
        img.header.set_zooms(zooms)
    nib.save(img, str(path))
    return path


# kind -> the words the error must contain
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
MASK_PROBLEMS = {
    "empty_mask": "the mask is empty",
    "non_binary_mask": "not binary",
    "shape_mismatch": "differs from image shape",
    "affine_mismatch": "geometry (affine) differs",
}


def corrupt_image(path: Path, kind: str) -> Path:
    """Rewrite the NIfTI image at ``path`` (same name) broken as ``kind`` says; "missing" deletes it."""
    img = nib.load(str(path))
    image, affine = np.asarray(img.dataobj, dtype=np.float32), img.affine
    if kind == "truncated_gzip":
        path.write_bytes(path.read_bytes()[:400])
    elif kind == "not_nifti":
        path.write_bytes(gzip.compress(b"this is a text file, not an image" * 20))
    elif kind == "image_2d":
        save(path, image[:, :, image.shape[2] // 2], affine)
    elif kind == "image_4d":
        save(path, np.stack([image, image, image], axis=-1), affine)
    elif kind in ("nan_voxels", "inf_voxels"):
        image[tuple(n // 2 for n in image.shape)] = np.nan if kind == "nan_voxels" else np.inf
        save(path, image, affine)
    elif kind == "constant":
        save(path, np.full_like(image, 7.0), affine)
    elif kind == "absurd_spacing":
        save(path, image, np.diag([250.0, 250.0, 250.0, 1.0]))
    elif kind == "missing":
        path.unlink()
    else:
        raise ValueError(kind)
    return path


def corrupt_mask(path: Path, kind: str) -> Path:
    """Rewrite the brain mask at ``path`` (same name) broken as ``kind`` says."""
    img = nib.load(str(path))
    mask, affine = np.asarray(img.dataobj).astype(np.uint8), img.affine
    if kind == "empty_mask":
        save(path, np.zeros_like(mask), affine)
    elif kind == "non_binary_mask":
        save(path, mask * 3, affine)
    elif kind == "shape_mismatch":
        save(path, mask[:-2], affine)
    elif kind == "affine_mismatch":
        save(path, mask, affine @ np.diag([1.0, 1.0, 1.3, 1.0]))
    else:
        raise ValueError(kind)
    return path


def bad_image(folder: Path, kind: str) -> Path:
    """``folder/<kind>.nii.gz`` broken as ``kind`` says (for "missing": a path that does not exist)."""
    return corrupt_image(save(folder / f"{kind}.nii.gz", head()[0]), kind)


def bad_mask(folder: Path, kind: str) -> tuple[Path, Path]:
    """A good image and a mask broken as ``kind`` says: ``(image, mask)``."""
    image, mask = head()
    img = save(folder / f"{kind}_image.nii.gz", image)
    return img, corrupt_mask(save(folder / f"{kind}_mask.nii.gz", mask), kind)


def good_pair(folder: Path, name: str = "good") -> tuple[Path, Path]:
    image, mask = head()
    return save(folder / f"{name}_image.nii.gz", image), save(folder / f"{name}_mask.nii.gz", mask)


def singleton_4d(folder: Path) -> tuple[Path, Path]:
    """A good pair whose image carries a singleton 4th axis: simply handled, never an error."""
    image, mask = head()
    return save(folder / "t1_4d.nii.gz", image[..., None]), save(folder / "t1_4d_mask.nii.gz", mask)
