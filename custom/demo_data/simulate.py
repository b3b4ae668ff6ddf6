"""One simulated acquisition: the source anatomy deformed into a new subject and rendered by one scanner.

A subject is a smooth random deformation (cubic B-spline field from a coarse 5 x 6 x 5 grid, 1.5-3 mm standard
deviation), a head-size change (0.9-1.1, up to 3 % anisotropic) and a change of pose (pitch up to 10 degrees, roll up
to 4, yaw up to 6, shifts up to 6 mm). Image and mask go through the SAME coordinate map (the mask: linear
interpolation thresholded at 0.5), so the mask stays aligned with the anatomy. Arrays are RAS-oriented like the
source; the 2D model slices along the last axis.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import ndimage as ndi

from custom.demo_data.anatomy import NECK_PAD_MM, load_source
from custom.demo_data.scanners import RESOLUTIONS, RESPONSE_KNOTS, Domain

__all__ = ["simulate"]


def _rotation(angles_deg: np.ndarray) -> np.ndarray:
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _bspline3(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1, 2 / 3 - x**2 + x**3 / 2, np.where(x < 2, (2 - x) ** 3 / 6, 0.0))


def _smooth_field(rng: np.random.Generator, knots: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
    """A coarse standard-normal grid upsampled to ``shape`` with cubic B-splines (unit variance, smooth).

    Separable weights make this a few small tensor contractions instead of a 3D spline zoom."""
    weights = []
    for k, n in zip(knots, shape, strict=True):
        w = _bspline3(np.linspace(0.0, k - 1.0, n)[:, None] - np.arange(k)[None, :])
        weights.append(w / np.sqrt((w**2).sum(axis=1, keepdims=True)))
    coarse = rng.standard_normal(knots)
    return np.einsum("ia,jb,kc,abc->ijk", *weights, coarse, optimize=True).astype(np.float32)


@functools.lru_cache(maxsize=6)
def _domain_signal(domain: Domain, resolution: str) -> np.ndarray:
    """The source head as this scanner renders it (response curve, scalp gain, gamma), before resampling."""
    src = load_source(resolution)
    signal = np.interp(src.u, RESPONSE_KNOTS, domain.response).astype(np.float32)
    signal *= 1.0 + np.float32(domain.scalp_gain - 1.0) * src.far
    return np.power(np.maximum(signal, 0.0), np.float32(domain.gamma))


def simulate(
    domain: Domain, resolution: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Simulate one acquisition; returns (int16 image, uint8 mask, 4x4 affine)."""
    src = load_source(resolution)

    spacing = np.array(domain.spacing, dtype=float)
    if domain.inplane_spacings:
        spacing[1] = spacing[2] = float(rng.choice(domain.inplane_spacings))
    spacing *= RESOLUTIONS[resolution]

    # field of view in source mm (= source voxel units, 1 mm)
    z_lo = NECK_PAD_MM + domain.inferior_crop_mm
    z_hi = src.top + domain.top_margin_mm
    lo = np.array([src.centre[0] - domain.fov_mm[0] / 2, src.centre[1] - domain.fov_mm[1] / 2, z_lo])
    extent = np.array([domain.fov_mm[0], domain.fov_mm[1], z_hi - z_lo])
    shape = tuple(int(round(e / s)) for e, s in zip(extent, spacing, strict=True))
    axes = [lo[a] + spacing[a] * np.arange(shape[a]) for a in range(3)]

    # subject: head size, pose and a smooth deformation; output point p -> source point q
    size = rng.uniform(0.9, 1.1) * (1.0 + rng.uniform(-0.03, 0.03, size=3))
    angles = rng.uniform(-1.0, 1.0, size=3) * np.array([4.0, 4.0, 6.0])
    angles[0] = rng.uniform(-10.0, 10.0)  # pitch (nodding) varies most
    shift = rng.uniform(-6.0, 6.0, size=3)
    inverse = _rotation(angles).T / size[:, None]
    c = src.centre
    offset = c - inverse @ (c + shift)
    amplitude = rng.uniform(1.5, 3.0)
    coords = np.empty((3, *shape), dtype=np.float32)
    for a in range(3):
        coords[a] = (
            offset[a]
            + inverse[a, 0] * axes[0][:, None, None]
            + inverse[a, 1] * axes[1][None, :, None]
            + inverse[a, 2] * axes[2][None, None, :]
        )
        coords[a] += amplitude * _smooth_field(rng, (5, 6, 5), shape)

    source = _domain_signal(domain, resolution)
    signal = ndi.map_coordinates(source, coords, order=1, mode="constant", cval=0.0, output=np.float32)
    mask = ndi.map_coordinates(src.mask, coords, order=1, mode="constant", cval=0.0, output=np.float32)
    mask = (mask >= 0.5).astype(np.uint8)
    # per-subject contrast jitter
    np.power(signal, np.float32(np.exp(0.05 * rng.standard_normal())), out=signal)

    # point-spread function
    sigma = np.asarray(domain.psf_mm) / spacing
    if np.any(sigma > 0.05):
        signal = ndi.gaussian_filter(signal, sigma, mode="constant")

    # bias field: smooth random log-field, plus centre brightening at 3 T
    log_bias = domain.bias * _smooth_field(rng, (3, 3, 3), shape)
    if domain.centre_brightening:
        grids = [((np.arange(n, dtype=np.float32) - (n - 1) / 2) / (n / 2)) ** 2 for n in shape]
        r2 = grids[0][:, None, None] + grids[1][None, :, None] + grids[2][None, None, :]
        log_bias += np.float32(domain.centre_brightening) * np.clip(1.0 - r2, 0.0, 1.0)
    signal *= np.exp(log_bias)

    # stored range and Rician noise
    signal *= np.float32(domain.white_level)
    sd = np.float32(domain.noise * domain.white_level)
    real = signal + sd * rng.standard_normal(shape, dtype=np.float32)
    imag = sd * rng.standard_normal(shape, dtype=np.float32)
    image = np.sqrt(real * real + imag * imag)
    image = np.clip(np.rint(image), 0, np.iinfo(np.int16).max).astype(np.int16)

    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = src.origin + lo
    return image, mask, affine

