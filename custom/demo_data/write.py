"""Writing the demo dataset in CC359's layout: deterministic ``.nii.gz`` files, a mosaic, an atomic rename."""

from __future__ import annotations

import concurrent.futures
import gzip
import math
import multiprocessing
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np

from custom.demo_data.anatomy import load_source
from custom.demo_data.scanners import DOMAINS, RESOLUTIONS
from custom.demo_data.simulate import simulate

__all__ = ["make_demo_data"]


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
    image, mask, affine = simulate(domain, resolution, rng)
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

    ``workers`` > 1 simulates scans in that many processes (0: one per CPU); the files do not depend on it. A
    non-empty ``output_dir`` is replaced only with ``overwrite``. The dataset is written to a temporary folder next
    to it and renamed into place at the end: an interrupted run leaves no partial dataset behind.
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
    load_source(resolution)  # fail early on missing resources
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

