"""Synthetic but realistic data: brain-like mask pairs, T1-like head volumes and the training set written from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from custom.benchmark.settings import Settings

__all__ = ["brain_mask_pair", "head_phantom", "write_training_data"]


def _smooth_noise(shape: tuple[int, ...], rng: np.random.Generator, cells: int = 8) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a coarse random grid, trilinearly upsampled to ``shape``."""
    coarse = torch.from_numpy(rng.uniform(-1.0, 1.0, size=(1, 1, *(max(2, s // cells) for s in shape))))
    fine = torch.nn.functional.interpolate(coarse.float(), size=shape, mode="trilinear", align_corners=True)
    return fine[0, 0].numpy()


def _radius(shape: tuple[int, ...], spacing, shift=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Normalised ellipsoidal radius: 1 on a brain-sized ellipsoid centred in the field of view."""
    extent = [n * s for n, s in zip(shape, spacing, strict=True)]
    semi = [0.36 * e for e in extent]
    axes = [
        ((np.arange(n, dtype=np.float32) + 0.5) * s - e / 2 - d) / a
        for n, s, e, a, d in zip(shape, spacing, extent, semi, shift, strict=True)
    ]
    z, y, x = np.meshgrid(*axes, indexing="ij", sparse=True)
    return np.sqrt(z * z + y * y + x * x)


def brain_mask_pair(shape, spacing, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A brain-like mask (a bumpy ellipsoid) and a perturbed copy: 1 mm shifted, its boundary rippled."""
    rng = np.random.default_rng(seed)
    bumps = _smooth_noise(tuple(shape), rng)
    target = (_radius(shape, spacing) - 0.06 * bumps) < 1.0
    ripple = _smooth_noise(tuple(shape), rng, cells=4)
    pred = (_radius(shape, spacing, shift=(1.0, -1.0, 0.5)) - 0.06 * bumps - 0.015 * ripple) < 1.0
    return pred, target


def head_phantom(shape, spacing, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A T1-like head: textured brain, dark CSF rim, bright skull and scalp, noisy background; and its brain mask."""
    rng = np.random.default_rng(seed)
    r = _radius(shape, spacing) - 0.05 * _smooth_noise(tuple(shape), rng)
    brain = r < 1.0
    texture = _smooth_noise(tuple(shape), rng, cells=3)
    image = np.where(brain, 0.55 + 0.15 * (texture > 0) + 0.05 * texture, 0.0).astype(np.float32)
    image[(r >= 1.0) & (r < 1.06)] = 0.15  # CSF
    image[(r >= 1.06) & (r < 1.16)] = 0.9  # skull / scalp
    image += rng.normal(0.0, 0.03, size=shape).astype(np.float32)
    return np.clip(image, 0.0, None), brain


def write_training_data(folder: Path, s: Settings) -> Path:
    """``s.train_volumes`` NIfTI head volumes (at the bundle's 1 x 0.95 x 0.95 mm, in RAS) and a datalist JSON."""
    import nibabel as nib

    from custom.splits import write_datalist

    spacing = (1.0, 0.95, 0.95)
    shape = (s.roi + 8, s.roi + 8, s.train_slices)  # slices along the last axis, a bit larger than the crop
    affine = np.diag([*spacing, 1.0])
    entries = []
    for i in range(s.train_volumes):
        image, mask = head_phantom(shape, spacing, seed=s.seed + i)
        image_path, mask_path = folder / f"head{i}.nii.gz", folder / f"head{i}_brainmask.nii.gz"
        nib.save(nib.Nifti1Image(image, affine), str(image_path))
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), str(mask_path))
        entries.append({"image": str(image_path), "label": str(mask_path), "id": f"head{i}", "domain": "synthetic"})
    return write_datalist({"name": "benchmark", "training": entries, "validation": [], "test": []},
                          folder / "datalist.json")
