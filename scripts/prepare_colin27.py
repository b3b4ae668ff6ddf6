"""Derive the committed demo anatomy in ``custom/resources/`` from MRIcron's Colin27 templates.

One-off provenance script: it is not run by the demo or the tests, it documents how the two committed
volumes were produced. Inputs are ``ch2.nii.gz`` (Colin27 T1 head with skull, 181x217x181 at 1 mm) and
``ch2bet.nii.gz`` (the same image brain-extracted), both from the ``templates`` folder of MRIcron
(Debian package ``mricron-data``)::

    python scripts/prepare_colin27.py --head ch2.nii.gz --brain ch2bet.nii.gz --output_dir custom/resources

Outputs (1 mm, same voxel grid, RAS affine of the input shifted to the crop):

- ``colin27_t1.nii.gz``: the head cropped to its bounding box plus ``margin`` voxels, intensities
  clipped at the head's 99.9th percentile and rescaled to uint8 0..255, background outside the head 0;
- ``colin27_brainmask.nii.gz``: a cleaned brain mask from ``ch2bet > 0`` (largest connected component,
  binary closing, hole filling, largest component again), uint8 0/1, same crop.

Both are gzip-compressed at level 9 with a zero timestamp, so re-running the script gives identical bytes.
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

T1_NAME = "colin27_t1.nii.gz"
MASK_NAME = "colin27_brainmask.nii.gz"


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndi.label(mask)
    if n == 0:
        raise ValueError("empty mask")
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == sizes.argmax()


def _ball(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2) <= radius**2


def head_mask(image: np.ndarray, threshold_fraction: float = 0.05) -> np.ndarray:
    """Foreground of a head T1: threshold, largest component, closing and hole filling."""
    image = np.asarray(image, dtype=np.float32)
    threshold = threshold_fraction * np.percentile(image[image > 0], 99)
    mask = _largest_component(image > threshold)
    mask = ndi.binary_closing(mask, structure=_ball(3), iterations=1, border_value=0) | mask
    return ndi.binary_fill_holes(mask)


def clean_brain_mask(brain: np.ndarray, closing_radius: int = 2) -> np.ndarray:
    """``brain > 0`` -> largest connected component, binary closing, 3D hole filling, largest component."""
    mask = _largest_component(np.asarray(brain) > 0)
    padded = np.pad(mask, closing_radius + 1)
    padded = ndi.binary_closing(padded, structure=_ball(closing_radius))
    mask = padded[(slice(closing_radius + 1, -closing_radius - 1),) * 3] | mask
    mask = ndi.binary_fill_holes(mask)
    return _largest_component(mask)


def save_nifti(data: np.ndarray, affine: np.ndarray, path: Path, descrip: str) -> None:
    image = nib.Nifti1Image(data, affine)
    image.header["descrip"] = descrip.encode()[:79]
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    with open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=raw, mtime=0) as f:
            f.write(image.to_bytes())


def prepare_colin27(head: str, brain: str, output_dir: str = "custom/resources", margin: int = 3) -> dict:
    """Crop, rescale and clean the Colin27 templates; write the two resource volumes into ``output_dir``."""
    head_path, brain_path = Path(head), Path(brain)
    for path in (head_path, brain_path):
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
    head_img, brain_img = nib.load(head_path), nib.load(brain_path)
    if head_img.shape != brain_img.shape or not np.allclose(head_img.affine, brain_img.affine):
        raise ValueError("head and brain images must share the voxel grid")
    if not np.allclose(head_img.header.get_zooms()[:3], 1.0):
        raise ValueError("expected 1 mm isotropic inputs")
    image = np.asarray(head_img.dataobj, dtype=np.float32)
    brain_mask = clean_brain_mask(np.asarray(brain_img.dataobj))
    foreground = head_mask(image) | brain_mask

    nz = np.nonzero(foreground)
    lo = [max(int(idx.min()) - margin, 0) for idx in nz]
    hi = [min(int(idx.max()) + margin + 1, size) for idx, size in zip(nz, image.shape, strict=True)]
    crop = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))

    top = float(np.percentile(image[foreground], 99.9))
    scaled = np.clip(image / top, 0.0, 1.0) * 255.0
    scaled[~ndi.binary_dilation(foreground, iterations=2)] = 0.0
    t1 = np.rint(scaled[crop]).astype(np.uint8)
    mask = brain_mask[crop].astype(np.uint8)

    affine = head_img.affine.copy()
    affine[:3, 3] = head_img.affine[:3, :3] @ np.asarray(lo, dtype=float) + head_img.affine[:3, 3]

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_nifti(t1, affine, out / T1_NAME, "Colin27 T1 (MRIcron ch2), cropped, uint8")
    save_nifti(mask, affine, out / MASK_NAME, "Colin27 brain mask (cleaned MRIcron ch2bet>0)")
    summary = {
        "shape": tuple(int(s) for s in t1.shape),
        "crop_start": tuple(lo),
        "brain_voxels": int(mask.sum()),
        "t1_bytes": (out / T1_NAME).stat().st_size,
        "mask_bytes": (out / MASK_NAME).stat().st_size,
    }
    print(f"prepare_colin27: {summary}")
    return summary


def main(argv: list[str] | None = None) -> None:
    import fire

    from custom.options import refuse_unknown_options

    try:
        args = refuse_unknown_options(prepare_colin27, argv, "prepare_colin27: error: ")
        fire.Fire(prepare_colin27, command=args, serialize=lambda _: None)
    except (ValueError, FileNotFoundError) as err:
        print(f"prepare_colin27: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
