"""The real anatomy every demo subject is made from: the Colin27 head and its brain mask (custom/resources).

Intensities are relative to white matter; the head is faded out where the source's field of view cuts it, and a
neck is added below its lowest slice (that slice repeated with a fading signal, outside the mask).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from custom.demo_data.scanners import RESOLUTIONS

__all__ = ["NECK_PAD_MM", "Source", "load_source"]

RESOURCES = Path(__file__).resolve().parents[1] / "resources"
T1_NAME = "colin27_t1.nii.gz"
MASK_NAME = "colin27_brainmask.nii.gz"


@dataclass(frozen=True)
class Source:
    """The source head, ready to be resampled (arrays in source voxels, 1 mm)."""

    u: np.ndarray  # T1 relative to white matter
    mask: np.ndarray  # float32 0/1
    far: np.ndarray  # float32 0..1, 1 for tissue far outside the brain
    origin: np.ndarray  # world coordinate of source voxel (0, 0, 0)
    centre: np.ndarray  # brain bounding-box centre, source voxel = mm units
    top: float  # highest head voxel along z


def _resource_dir() -> Path:
    if (RESOURCES / T1_NAME).is_file():
        return RESOURCES
    from importlib import resources

    return Path(str(resources.files("custom") / "resources"))


NECK_PAD_MM = 48  # synthetic neck below the source's lowest slice (edge slice repeated, fading out)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


@functools.lru_cache(maxsize=2)
def load_source(resolution: str) -> Source:
    """The source head for ``resolution`` (anti-aliased for ``small``); FileNotFoundError without its files."""
    folder = _resource_dir()
    t1_path, mask_path = folder / T1_NAME, folder / MASK_NAME
    for path in (t1_path, mask_path):
        if not path.is_file():
            raise FileNotFoundError(f"missing demo anatomy: {path}")
    t1_img = nib.load(t1_path)
    t1 = np.asarray(t1_img.dataobj, dtype=np.float32)
    mask = np.asarray(nib.load(mask_path).dataobj) > 0
    if mask.shape != t1.shape:
        raise ValueError(f"demo anatomy: image {t1.shape} and mask {mask.shape} differ")
    u = t1 / np.float32(np.percentile(t1[mask], 85))
    # the source head is cut by its field of view at the sides and the front: fade it out over the last
    # 12 mm there (a coil-sensitivity-like fall-off) so no straight cut shows inside a wider field of view
    for axis in (0, 1):
        n = u.shape[axis]
        ramp = _smoothstep(np.minimum(np.arange(n), n - 1 - np.arange(n)) / 12.0).astype(np.float32)
        u *= ramp.reshape([-1 if a == axis else 1 for a in range(3)])
    # distance outside the brain, computed at 2 mm (it only drives a smooth weight)
    dist = ndi.distance_transform_edt(~mask[::2, ::2, ::2]) * 2.0
    far = np.clip((dist - 4.0) / 6.0, 0.0, 1.0).astype(np.float32)
    far = ndi.zoom(far, np.asarray(mask.shape) / np.asarray(far.shape), order=1)
    # neck: repeat the lowest slice downwards with a fading signal; the mask stays empty there
    fade = (0.35 + 0.65 * _smoothstep(1.0 - np.arange(NECK_PAD_MM, 0, -1) / NECK_PAD_MM)).astype(np.float32)
    u = np.concatenate([u[:, :, :1] * fade[None, None, :], u], axis=2)
    far = np.pad(far, ((0, 0), (0, 0), (NECK_PAD_MM, 0)), mode="edge")
    mask = np.pad(mask, ((0, 0), (0, 0), (NECK_PAD_MM, 0)))
    if RESOLUTIONS[resolution] > 1.0:  # anti-aliasing before sampling at ~2 mm
        u = ndi.gaussian_filter(u, 0.75)
    origin = t1_img.affine[:3, 3] - np.array([0.0, 0.0, NECK_PAD_MM])
    head_z = np.nonzero(t1.any(axis=(0, 1)))[0]
    idx = np.nonzero(mask)
    centre = np.array([(i.min() + i.max()) / 2.0 for i in idx])
    return Source(
        u=np.ascontiguousarray(u), mask=mask.astype(np.float32), far=np.ascontiguousarray(far),
        origin=origin, centre=centre, top=float(head_z.max() + NECK_PAD_MM),
    )

