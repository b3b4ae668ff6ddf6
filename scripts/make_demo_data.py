"""Build a small six-scanner demo dataset from real anatomy, in CC359's official layout.

Every subject is the Colin27 head (``custom/resources/colin27_t1.nii.gz``, see ``custom/resources/NOTICE``)
and its cleaned brain mask, turned into a new "subject" by a smooth random deformation (cubic B-spline
field from a coarse 5 x 6 x 5 random grid, 1.5-3 mm standard deviation), a head-size change (scale
0.9-1.1, up to 3 % anisotropic) and a change of pose (pitch up to 10 degrees, roll up to 4, yaw up to 6,
shifts up to 6 mm).
The image and the mask are resampled through the SAME coordinate map (image: linear interpolation;
mask: linear interpolation thresholded at 0.5), so the mask stays aligned with the anatomy.

Six simulated scanners carry CC359's domain names and differ the way real scanners do:

- intensity response and tissue contrast: a per-domain piecewise-linear response curve over the
  source's tissue range (CSF / grey / white matter / fat) followed by a gamma curve, so the grey-white
  contrast and the scalp-fat brightness change (``ge_15`` has a flat brain contrast and a very bright
  scalp, ``philips_15`` a scalp darker than white matter: an inversion of the scalp-vs-brain order);
- a separate gain on tissue more than a few mm outside the brain (scalp, fat, muscle);
- a smooth multiplicative bias field, stronger at 3 T, where a centre-brightening term is added;
- Rician noise with a per-domain level; a per-domain stored intensity range (int16);
- voxel spacing (mirrors CC359: ``siemens_3`` 1.33 mm along the first axis, ``philips_15`` y = z drawn
  from 0.889-1.0 mm, ``philips_3`` y = z 0.982 or 1.0 mm, others 1 mm);
- field of view (background margins) and neck coverage (from 32 mm more neck than the source has,
  for ``ge_15``, to 4 mm of the inferior head cut away, for ``philips_15``; the source's lowest slice
  is repeated downwards with a fading signal to give a neck, outside the mask);
- resolution: a per-domain anisotropic Gaussian point-spread function, wider in-plane at 1.5 T.

The per-domain numbers are in ``DOMAINS`` below.

Arrays are RAS-oriented like the source (axis 0 left-right, axis 1 posterior-anterior, axis 2
inferior-superior); the 2D model slices along the LAST axis (axial slices).

Layout (ids ``CC0001``... are consecutive over the domains in the order siemens_15, siemens_3, ge_15, ge_3,
philips_15, philips_3; age 20-80 and sex M/F drawn at random)::

    <output_dir>/Original/CC0001_siemens_15_58_F.nii.gz          int16 image
    <output_dir>/Silver-standard/CC0001_siemens_15_58_F_ss.nii.gz  uint8 0/1 brain mask
    <output_dir>/mosaic.png                                       one axial slice per domain + contour

``--resolution small`` (default) doubles every domain's spacing: about 2 mm voxels (``siemens_15``,
``ge_15``, ``ge_3`` 2 x 2 x 2 mm; ``siemens_3`` 2.66 x 2 x 2 mm; ``philips_15`` 2 x s x s with s from
1.778 to 2.0; ``philips_3`` 2 x s x s with s 1.964 or 2.0), e.g. 98 x 118 x 101 voxels for ``siemens_15``,
which keeps the CPU demo fast. ``--resolution full`` writes the CC359-like ~1 mm spacing (e.g.
196 x 236 x 202 voxels) for GPU runs.

Measured generation time (one process, the default ``--workers 1``): 6 domains x 8 subjects at ``small``
take about 21 s of CPU time (18.6 s user + 2.1 s system; 22 s wall-clock on an idle 2-core machine),
about 75 MB of output; ``full`` takes about 3.5 s of CPU time per scan (about 3 min for 48 scans, about
0.5 GB). ``--workers N`` spreads the scans over N processes (0: one per CPU) without changing the files.

The same seed gives bit-identical files. Each (domain, subject) draws from its own random stream
``(seed, domain index, subject index)``.

Usage::

    python scripts/make_demo_data.py --output_dir demo_data --n_subjects 8 --seed 0 --resolution small
    python -c "from scripts.make_demo_data import make_demo_data; make_demo_data('demo_data', overwrite=True)"

An existing non-empty output folder is only replaced with ``--overwrite``. The dataset is written to a
temporary folder next to the output and renamed into place at the end, so an interrupted run leaves no
partial dataset behind.
"""

from __future__ import annotations

import concurrent.futures
import functools
import gzip
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

RESOURCES = Path(__file__).resolve().parents[1] / "custom" / "resources"
T1_NAME = "colin27_t1.nii.gz"
MASK_NAME = "colin27_brainmask.nii.gz"
RESOLUTIONS = {"small": 2.0, "full": 1.0}

# Source intensities are expressed relative to white matter (u = 1); these are the knots of the per-domain
# response curve: background, dark CSF, CSF, grey-white partial volume, grey matter, white matter, then
# brighter-than-brain tissue up to the fat in the scalp (u ~ 2).
RESPONSE_KNOTS = (0.0, 0.12, 0.3, 0.55, 0.75, 1.0, 1.3, 1.7, 2.2)


@dataclass(frozen=True)
class Domain:
    """One simulated scanner. Lengths in mm at full resolution; ``spacing`` x, y, z."""

    name: str
    spacing: tuple[float, float, float]
    response: tuple[float, ...]  # output at RESPONSE_KNOTS (white matter = 1)
    gamma: float  # applied after the response curve
    scalp_gain: float  # extra gain on tissue far (> ~9 mm) from the brain
    noise: float  # Rician sigma as a fraction of the white-matter signal
    bias: float  # std of the smooth random log bias field
    centre_brightening: float  # 3 T dielectric effect: + this at the centre, 0 at the FOV edge
    psf_mm: tuple[float, float, float]  # Gaussian blur sigma per axis
    fov_mm: tuple[float, float]  # extent along x and y
    top_margin_mm: float  # background above the head
    inferior_crop_mm: float  # < 0: more neck below the source's lowest slice; > 0: inferior head cut away
    white_level: int  # stored value of white matter (int16 dynamic range)
    inplane_spacings: tuple[float, ...] = ()  # if set: y = z spacing drawn per subject from these


DOMAINS: tuple[Domain, ...] = (
    Domain(
        name="siemens_15", spacing=(1.0, 1.0, 1.0),
        response=(0.0, 0.10, 0.30, 0.55, 0.74, 1.0, 1.20, 1.40, 1.55), gamma=1.0,
        scalp_gain=1.0, noise=0.035, bias=0.07, centre_brightening=0.0, psf_mm=(0.5, 0.7, 0.7),
        fov_mm=(196.0, 236.0), top_margin_mm=12.0, inferior_crop_mm=-16.0, white_level=500,
    ),
    Domain(
        name="siemens_3", spacing=(1.33, 1.0, 1.0),
        response=(0.0, 0.04, 0.14, 0.40, 0.60, 1.0, 1.05, 1.00, 0.95), gamma=1.25,
        scalp_gain=0.75, noise=0.02, bias=0.22, centre_brightening=0.3, psf_mm=(0.4, 0.3, 0.3),
        fov_mm=(200.0, 240.0), top_margin_mm=14.0, inferior_crop_mm=-8.0, white_level=900,
    ),
    Domain(
        name="ge_15", spacing=(1.0, 1.0, 1.0),
        response=(0.0, 0.28, 0.48, 0.68, 0.80, 1.0, 1.70, 2.70, 3.30), gamma=0.7,
        scalp_gain=1.7, noise=0.05, bias=0.08, centre_brightening=0.0, psf_mm=(0.8, 1.3, 1.3),
        fov_mm=(208.0, 248.0), top_margin_mm=18.0, inferior_crop_mm=-32.0, white_level=2400,
    ),
    Domain(
        name="ge_3", spacing=(1.0, 1.0, 1.0),
        response=(0.0, 0.08, 0.22, 0.48, 0.68, 1.0, 1.25, 1.45, 1.60), gamma=1.1,
        scalp_gain=0.9, noise=0.025, bias=0.2, centre_brightening=0.25, psf_mm=(0.4, 0.4, 0.4),
        fov_mm=(200.0, 236.0), top_margin_mm=12.0, inferior_crop_mm=-24.0, white_level=1500,
    ),
    Domain(
        name="philips_15", spacing=(1.0, 0.94, 0.94),
        response=(0.0, 0.18, 0.36, 0.62, 0.80, 1.0, 0.95, 0.85, 0.80), gamma=1.4,
        scalp_gain=0.5, noise=0.045, bias=0.07, centre_brightening=0.0, psf_mm=(0.6, 1.1, 1.1),
        fov_mm=(192.0, 230.0), top_margin_mm=12.0, inferior_crop_mm=4.0, white_level=300,
        inplane_spacings=(0.889, 0.9, 0.92, 0.9375, 0.95, 0.96, 0.98, 1.0),
    ),
    Domain(
        name="philips_3", spacing=(1.0, 1.0, 1.0),
        response=(0.0, 0.06, 0.18, 0.45, 0.66, 1.0, 1.60, 2.50, 3.00), gamma=0.55,
        scalp_gain=1.5, noise=0.03, bias=0.22, centre_brightening=0.2, psf_mm=(0.3, 0.5, 0.5),
        fov_mm=(196.0, 232.0), top_margin_mm=12.0, inferior_crop_mm=0.0, white_level=700,
        inplane_spacings=(0.982, 1.0),
    ),
)
DOMAIN_NAMES = tuple(d.name for d in DOMAINS)


@dataclass(frozen=True)
class _Source:
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
def _load_source(resolution: str) -> _Source:
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
    return _Source(
        u=np.ascontiguousarray(u), mask=mask.astype(np.float32), far=np.ascontiguousarray(far),
        origin=origin, centre=centre, top=float(head_z.max() + NECK_PAD_MM),
    )


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
    src = _load_source(resolution)
    signal = np.interp(src.u, RESPONSE_KNOTS, domain.response).astype(np.float32)
    signal *= 1.0 + np.float32(domain.scalp_gain - 1.0) * src.far
    return np.power(np.maximum(signal, 0.0), np.float32(domain.gamma))


def _subject(
    domain: Domain, resolution: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Simulate one acquisition; returns (int16 image, uint8 mask, 4x4 affine)."""
    src = _load_source(resolution)

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


def _write_nifti(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Deterministic .nii.gz (gzip header without time stamp or file name)."""
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    with open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", compresslevel=1, fileobj=raw, mtime=0) as f:
            f.write(image.to_bytes())


def _write_mosaic(slices: list[tuple[str, str, np.ndarray, np.ndarray, np.ndarray]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(slices)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.6 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (domain, stem, image, mask, spacing) in zip(axes.ravel(), slices, strict=False):
        lo, hi = np.percentile(image, [0.5, 99.5])
        # rows = anterior (top) to posterior, columns = axis 0
        ax.imshow(np.rot90(image), cmap="gray", vmin=lo, vmax=hi, aspect=spacing[1] / spacing[0],
                  interpolation="nearest")
        if mask.any():
            ax.contour(np.rot90(mask), levels=[0.5], colors="#ff3030", linewidths=0.9)
        ax.set_title(f"{domain}\n{stem}", fontsize=10)
    fig.suptitle("demo data: middle slice along the last axis, brain-mask contour in red", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _make_scan(task: tuple[str, int, int, int, int, str]) -> tuple[str, tuple, tuple, tuple | None]:
    """Simulate and write one (domain, subject) scan; returns what the progress line and mosaic need."""
    folder, d_index, s_index, n_subjects, seed, resolution = task
    domain = DOMAINS[d_index]
    rng = np.random.default_rng([seed, d_index, s_index])
    age = int(rng.integers(20, 81))
    sex = "M" if rng.random() < 0.5 else "F"
    stem = f"CC{d_index * n_subjects + s_index + 1:04d}_{domain.name}_{age}_{sex}"
    image, mask, affine = _subject(domain, resolution, rng)
    _write_nifti(image, affine, Path(folder) / "Original" / f"{stem}.nii.gz")
    _write_nifti(mask, affine, Path(folder) / "Silver-standard" / f"{stem}_ss.nii.gz")
    spacing = tuple(round(float(v), 3) for v in np.diag(affine)[:3])
    k = image.shape[2] // 2
    tile = (domain.name, stem, image[:, :, k], mask[:, :, k], np.diag(affine)[:3]) if s_index == 0 else None
    return stem, image.shape, spacing, tile


def make_demo_data(
    output_dir: str = "demo_data",
    n_subjects: int = 8,
    seed: int = 0,
    resolution: str = "small",
    overwrite: bool = False,
    workers: int = 1,
    verbose: bool = True,
) -> Path:
    """Write ``n_subjects`` simulated scans for each of the six domains; returns the output folder.

    ``workers`` > 1 simulates scans in that many processes (0: one per CPU); the files do not depend on it.
    """

    def _is_int(v: object) -> bool:
        return isinstance(v, int | np.integer) and not isinstance(v, bool)

    if not _is_int(n_subjects) or n_subjects < 1:
        raise ValueError(f"n_subjects must be an integer >= 1, got {n_subjects!r}")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {sorted(RESOLUTIONS)}, got {resolution!r}")
    if not _is_int(workers) or workers < 0:
        raise ValueError(f"workers must be an integer >= 0, got {workers!r}")
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output_dir exists and is not a folder: {out}")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"output_dir is not empty: {out} (pass --overwrite to replace it)")
    _load_source(resolution)  # fail early on missing resources
    n_subjects, seed = int(n_subjects), int(seed)
    workers = min(int(workers) or os.cpu_count() or 1, 6 * n_subjects)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        (tmp / "Original").mkdir()
        (tmp / "Silver-standard").mkdir()
        tasks = [(str(tmp), d, s, n_subjects, seed, resolution) for d in range(len(DOMAINS)) for s in range(n_subjects)]
        pool = None
        if workers > 1:
            context = multiprocessing.get_context("spawn")
            pool = concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context)
        try:
            results = pool.map(_make_scan, tasks) if pool else map(_make_scan, tasks)
            mosaic, shapes, spacings, start = [], set(), set(), time.perf_counter()
            for (_, d_index, s_index, *_rest), (_, shape, spacing, tile) in zip(tasks, results, strict=True):
                shapes.add(shape)
                spacings.add(spacing)
                if tile is not None:
                    mosaic.append(tile)
                if s_index == n_subjects - 1:
                    if verbose:
                        _progress(DOMAINS[d_index].name, n_subjects, shapes, spacings, time.perf_counter() - start)
                    shapes, spacings, start = set(), set(), time.perf_counter()
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        _write_mosaic(mosaic, tmp / "mosaic.png")

        if out.is_dir() and any(out.iterdir()):
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if out.is_dir():
                out.rmdir()
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if verbose:
        print(f"make_demo_data: wrote {6 * n_subjects} scans to {out}", flush=True)
    return out


def _progress(name: str, n: int, shapes: set, spacings: set, seconds: float) -> None:
    shape_txt = " | ".join("x".join(map(str, s)) for s in sorted(shapes)[:2]) + (" ..." if len(shapes) > 2 else "")
    spacing_txt = " | ".join("x".join(f"{v:g}" for v in s) for s in sorted(spacings)[:3])
    more = " ..." if len(spacings) > 3 else ""
    print(
        f"make_demo_data: {name:<10} {n} subjects, shape {shape_txt}, spacing {spacing_txt}{more} mm, {seconds:.1f}s",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    import fire

    from custom.options import refuse_unknown_options

    def cli(
        output_dir: str = "demo_data",
        n_subjects: int = 8,
        seed: int = 0,
        resolution: str = "small",
        overwrite: bool = False,
        workers: int = 1,
    ) -> None:
        make_demo_data(output_dir, n_subjects, seed, resolution, overwrite, workers)

    cli.__doc__ = make_demo_data.__doc__
    try:
        fire.Fire(cli, command=refuse_unknown_options(cli, argv, "make_demo_data: error: "), name="make_demo_data")
    except (ValueError, FileNotFoundError) as err:
        print(f"make_demo_data: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
