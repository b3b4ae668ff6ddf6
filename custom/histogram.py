"""Histogram matching to the source domain: the paper's other reference point for adaptation without labels.

A *reference* is the source domain's intensity distribution inside the head: the quantiles, at about ``n_levels``
cumulative probabilities from 0 to 1 (denser in the tails), of the voxels above ``threshold`` in the network's
input space (after the paper's preprocessing: resampled, clipped to the scan's [1, 99] percentiles and scaled to
[0, 1], where the clipped background is exactly 0), averaged over the source scans (Nyul & Udupa's landmark
averaging). It is a small JSON file.

Matching a target scan replaces each foreground voxel's value ``v`` by the reference quantile at ``v``'s rank in the
scan's own foreground (the mean rank of ties): the scan's foreground then has the reference's distribution, its
order is kept, and the background (``<= threshold``) is left as it is.

Build a reference from source-domain scans::

    python scripts/histogram_reference.py --scans <folder of source scans> --output source_histogram.json
    python scripts/histogram_reference.py --scans <CC359 folder> --domain siemens_15 --output siemens_15.json
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["FORMAT", "HistogramMatchd", "HistogramReference", "build_reference", "default_levels", "match_histogram",
           "reference_from_scans"]

FORMAT = "brain-extraction-histogram/1"


@dataclass(frozen=True)
class HistogramReference:
    """Quantiles of the source domain's foreground intensities at cumulative probabilities ``levels``."""

    levels: np.ndarray  # increasing, from 0 to 1
    quantiles: np.ndarray  # non-decreasing, same length
    threshold: float = 0.0  # foreground: voxels above it
    n_scans: int = 0

    def __post_init__(self):
        levels, quantiles = np.asarray(self.levels, float), np.asarray(self.quantiles, float)
        if levels.ndim != 1 or levels.shape != quantiles.shape or levels.size < 2:
            raise ValueError("a histogram reference needs at least 2 levels and as many quantiles")
        if levels[0] != 0 or levels[-1] != 1 or np.any(np.diff(levels) <= 0) or np.any(np.diff(quantiles) < 0):
            raise ValueError("levels must increase from 0 to 1 and quantiles must not decrease")
        if not np.all(np.isfinite(quantiles)):
            raise ValueError("quantiles must be finite")
        object.__setattr__(self, "levels", levels)
        object.__setattr__(self, "quantiles", quantiles)

    def save(self, path: str | Path) -> Path:
        """Write the reference as JSON (atomically)."""
        from custom.checkpoints import atomic_write_text

        record = {"format": FORMAT, "threshold": float(self.threshold), "n_scans": int(self.n_scans),
                  "levels": [float(x) for x in self.levels], "quantiles": [float(x) for x in self.quantiles]}
        return atomic_write_text(path, json.dumps(record) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> HistogramReference:
        """Read a reference written by ``save``.

        Raises:
            custom.transforms.InputError: a missing file, or one that is not a histogram reference (one line).
        """
        from custom.transforms import InputError

        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: histogram reference not found")
        try:
            record = json.loads(path.read_text())
            if not isinstance(record, dict) or record.get("format") != FORMAT:
                raise ValueError(f"expected format {FORMAT!r}")
            return cls(np.asarray(record["levels"], float), np.asarray(record["quantiles"], float),
                       float(record.get("threshold", 0.0)), int(record.get("n_scans", 0)))
        except (ValueError, KeyError, TypeError) as e:
            detail = " ".join(str(e).split())[:200] or type(e).__name__
            raise InputError(f"{path}: not a histogram reference ({detail})") from None


def _foreground(image, threshold: float) -> np.ndarray:
    values = torch.as_tensor(image).detach().cpu().reshape(-1).numpy().astype(np.float64)
    return values[values > threshold]


def default_levels(n_levels: int = 1001) -> np.ndarray:
    """``n_levels`` cumulative probabilities evenly from 0 to 1, plus log-spaced ones within 1e-6 .. 1e-3 of either
    end, where a head's few darkest and brightest voxels spread far apart (an even table would blur them)."""
    tails = np.logspace(-6, -3, 16)
    return np.unique(np.concatenate([np.linspace(0.0, 1.0, int(n_levels)), tails, 1.0 - tails]))


def build_reference(scans: Iterable, n_levels: int = 1001, threshold: float = 0.0) -> HistogramReference:
    """The reference of preprocessed source-domain scans: each scan's foreground quantiles, averaged.

    Args:
        scans: preprocessed images (arrays or tensors), or dicts holding one under ``"image"`` (a MONAI Dataset of
            ``custom.transforms.preprocessing(keys=["image"])``, as ``scripts/histogram_reference.py`` builds).
        n_levels: how many cumulative probabilities evenly from 0 to 1 (plus a few in the tails: ``default_levels``).
        threshold: foreground = voxels above it (0: everything but the clipped background).

    Raises:
        ValueError: no scan, or a scan without foreground voxels.
    """
    levels = default_levels(n_levels)
    per_scan = []
    for i, scan in enumerate(scans):
        values = _foreground(scan["image"] if isinstance(scan, Mapping) else scan, threshold)
        if values.size == 0:
            raise ValueError(f"build_reference: scan {i} has no voxel above {threshold}")
        per_scan.append(np.quantile(values, levels))
    if not per_scan:
        raise ValueError("build_reference: no scans")
    return HistogramReference(levels, np.mean(per_scan, axis=0), float(threshold), len(per_scan))


def match_histogram(image, reference: HistogramReference):
    """``image`` (array or tensor, any shape) with its foreground mapped onto ``reference``'s distribution."""
    tensor = torch.as_tensor(image)
    mask = tensor > reference.threshold
    values = tensor[mask].detach().cpu().numpy().astype(np.float64)
    if values.size == 0:
        return image
    unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    # each distinct value's mean sorted position, scaled as np.quantile's (linear) positions: 0 .. n - 1 -> 0 .. 1
    position = np.cumsum(counts) - counts + 0.5 * (counts - 1)
    ranks = position / max(values.size - 1, 1)
    mapped = np.interp(ranks, reference.levels, reference.quantiles)[inverse.reshape(-1)]
    out = tensor.clone()
    out[mask] = torch.from_numpy(mapped).to(dtype=out.dtype, device=out.device)
    return out.numpy() if isinstance(image, np.ndarray) else out


class HistogramMatchd(MapTransform):
    """Match ``keys`` to a source-domain reference (``HistogramReference`` or its JSON file); ``""``/None: no-op.

    A missing or malformed reference file is refused when the transform is built (one line naming it).
    """

    def __init__(self, keys: KeysCollection, reference: str | Path | HistogramReference | None = None,
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        if isinstance(reference, str | Path) and str(reference).strip():
            reference = HistogramReference.load(str(reference).strip())
        self.reference = reference if isinstance(reference, HistogramReference) else None

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        if self.reference is None:
            return d
        for key in self.key_iterator(d):
            d[key] = match_histogram(d[key], self.reference)
        return d


def reference_from_scans(scans: str | Path | Sequence[str | Path], spacing: Sequence[float] = (1.0, 0.95, 0.95),
                         orientation: str | None = "RAS", n_levels: int = 1001,
                         threshold: float = 0.0) -> HistogramReference:
    """``build_reference`` on scan files, preprocessed as the bundles do (``custom.transforms.preprocessing``).

    Args:
        scans: a folder (every volume below it, as ``custom.transforms.find_volumes``), or a list of volume paths.
    """
    from monai.data import Dataset

    from custom.transforms import find_volumes, preprocessing

    items = find_volumes(scans) if isinstance(scans, str | Path) else [{"image": str(p)} for p in scans]
    steps = preprocessing(keys=["image"], spacing=spacing, orientation=orientation, divisible_by=1)
    return build_reference(Dataset(items, transform=steps), n_levels, threshold)

