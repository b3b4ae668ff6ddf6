"""Segmentation metrics of the paper: Dice and surface Dice, plus the MONAI metric (``BinarySurfaceDiceMetric``) and
handler (``SurfaceDice``) that wrap them.

``surface_dice`` is the surface Dice (normalised surface distance) of Nikolov et al. (2018) and gives the same
number as DeepMind's reference package ``surface-distance``::

    surface_distance.compute_surface_dice_at_tolerance(
        surface_distance.compute_surface_distances(target, pred, spacing), tolerance)

The surface is the set of corners of the voxel grid whose 2x2 (2x2x2 in 3D) neighbourhood is neither
empty nor full; each such corner carries the contour length (surface area) that marching squares (cubes)
assigns to its neighbourhood code, taken from the package's lookup-table builders. A surface element of one
mask counts as overlapping when its Euclidean distance (in mm) to the nearest surface corner of the other
mask is at most ``tolerance``. The neighbourhood encoding and table lookup run in torch, on the device of
the inputs; the distance transform runs in scipy on CPU, and on CUDA through cuCIM's
(``monai.transforms.utils.distance_transform_edt``) when cupy and cuCIM are installed (``pip install -e ".[gpu]"``);
without them CUDA masks take the CPU path (copied to the CPU, the distances moved back to their device).

In a bundle, ``SurfaceDice`` is the evaluation handler (like ``monai.handlers.MeanDice``)::

    - _target_: custom.metrics.SurfaceDice
      tolerance: 1.0
      output_transform: "$monai.handlers.from_engine(['pred', 'label'])"
      save_details: true
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.handlers import IgniteMetricHandler
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction
from monai.transforms.utils import distance_transform_edt
from monai.utils import MetricReduction
from scipy import ndimage
from surface_distance import lookup_tables

__all__ = ["BinarySurfaceDiceMetric", "SurfaceDice", "dice", "surface_dice"]

ArrayLike = np.ndarray | torch.Tensor


# --------------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------------


def _to_bool_tensor(x: Any, name: str) -> torch.Tensor:
    """A plain (non-Meta) bool tensor, ``True`` where ``x`` is nonzero; torch inputs keep their device."""
    if isinstance(x, MetaTensor):
        x = x.as_tensor()
    if isinstance(x, torch.Tensor):
        return x.detach() if x.dtype == torch.bool else x.detach() != 0
    try:
        arr = np.asarray(x)
    except Exception as e:  # re-raised with a clearer message
        raise ValueError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}") from e
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise ValueError(f"{name} must be a numeric or bool array, got dtype {arr.dtype}")
    return torch.from_numpy(np.ascontiguousarray(arr != 0))


def _pair(pred: Any, target: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Both masks as bool tensors of the same shape, on CUDA if either is there."""
    p, t = _to_bool_tensor(pred, "pred"), _to_bool_tensor(target, "target")
    if p.shape != t.shape:
        shapes = f"{tuple(p.shape)} and {tuple(t.shape)}"
        raise ValueError(f"pred and target must have the same shape, got {shapes}")
    if p.device != t.device:
        device = p.device if p.device.type != "cpu" else t.device
        p, t = p.to(device), t.to(device)
    return p, t


def _check_spacing(spacing: Any, ndim: int) -> tuple[float, ...]:
    if isinstance(spacing, torch.Tensor):
        spacing = spacing.detach().cpu().tolist()
    try:
        values = tuple(float(s) for s in np.asarray(spacing, dtype=np.float64).reshape(-1))
    except (TypeError, ValueError) as e:
        raise ValueError(f"spacing must be a sequence of {ndim} floats, got {spacing!r}") from e
    if np.ndim(spacing) != 1 or len(values) != ndim:
        raise ValueError(f"spacing must have one value per axis ({ndim}), got {spacing!r}")
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing values must be positive and finite, got {values}")
    return values


def _check_tolerance(tolerance: Any) -> float:
    try:
        tol = float(tolerance)
    except (TypeError, ValueError) as e:
        raise ValueError(f"tolerance must be a number of mm, got {tolerance!r}") from e
    if math.isnan(tol) or tol < 0:
        raise ValueError(f"tolerance must be a non-negative number of mm, got {tolerance!r}")
    return tol


# --------------------------------------------------------------------------------------------------
# Dice
# --------------------------------------------------------------------------------------------------


def dice(pred: ArrayLike, target: ArrayLike) -> float:
    """Volumetric Dice ``2 |P & T| / (|P| + |T|)`` of two masks of any shape (nonzero = foreground).

    Accepts numpy arrays or torch tensors (any device, bool/int/float). Conventions: both masks empty gives
    ``nan`` (0/0, as DeepMind's ``compute_dice_coefficient``); exactly one empty gives ``0.0``.

    Raises:
        ValueError: the shapes differ.
    """
    p, t = _pair(pred, target)
    total = int(torch.count_nonzero(p)) + int(torch.count_nonzero(t))
    if total == 0:
        return float("nan")
    return 2.0 * int(torch.count_nonzero(p & t)) / total


# --------------------------------------------------------------------------------------------------
# Surface Dice
# --------------------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _surfel_table(spacing: tuple[float, ...]) -> np.ndarray:
    """Contour length (2D) or surface area (3D) in mm (mm^2) of each neighbourhood code."""
    if len(spacing) == 2:
        table = lookup_tables.create_table_neighbour_code_to_contour_length(spacing)
    else:
        table = lookup_tables.create_table_neighbour_code_to_surface_area(spacing)
    table = np.asarray(table, dtype=np.float64)
    table.setflags(write=False)
    return table


def _kernel(ndim: int) -> np.ndarray:
    if ndim == 2:
        return np.asarray(lookup_tables.ENCODE_NEIGHBOURHOOD_2D_KERNEL)
    return np.asarray(lookup_tables.ENCODE_NEIGHBOURHOOD_3D_KERNEL)


def _bounding_box(mask: torch.Tensor) -> tuple[slice, ...]:
    """Slices of the smallest box holding every nonzero element of a non-empty mask."""
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        idx = torch.nonzero(mask.any(dim=others)).flatten()
        box.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return tuple(box)


def _neighbour_codes(mask: torch.Tensor) -> torch.Tensor:
    """Code of the 2x2(x2) neighbourhood of every grid corner of ``mask`` (shape + 1 per axis).

    Corner ``c`` sees voxels ``c - 1`` and ``c`` on each axis (outside the array counts as background), the
    voxel at offset ``o`` in {0, 1}^ndim weighted by the package's kernel entry ``kernel[o]``; this is what
    the reference obtains with ``scipy.ndimage.correlate`` on a crop zero-padded at its upper end.
    """
    kernel = _kernel(mask.ndim)
    padded = torch.nn.functional.pad(mask.to(torch.uint8), (1, 1) * mask.ndim)
    out_shape = tuple(s + 1 for s in mask.shape)
    codes = torch.zeros(out_shape, dtype=torch.uint8, device=mask.device)
    for offset in itertools.product((0, 1), repeat=mask.ndim):
        window = tuple(slice(o, o + n) for o, n in zip(offset, out_shape, strict=True))
        codes.add_(padded[window], alpha=int(kernel[offset]))
    return codes


def _has_cucim() -> bool:
    """cupy and cuCIM's distance transform import (the ``gpu`` extra); nothing else installs them."""
    from monai.utils import optional_import

    has_cupy = optional_import("cupy")[1]
    return bool(has_cupy and optional_import("cucim.core.operations.morphology", name="distance_transform_edt")[1])


def _gpu_distance_transform(features: torch.Tensor) -> bool:
    """Whether the distance transform of ``features`` runs on its GPU: a CUDA tensor and cuCIM installed."""
    return features.device.type == "cuda" and _has_cucim()


def _distances_to(features: torch.Tensor, query: torch.Tensor, spacing: tuple[float, ...]) -> torch.Tensor:
    """Euclidean distance (mm) from each ``True`` element of ``query`` (row-major order) to the nearest
    ``True`` element of ``features``, which must not be empty; float64 on the device of the inputs."""
    if not _gpu_distance_transform(features):
        device = query.device
        features, query = features.cpu(), query.cpu()
        # Feature transform only, then distances at the query points alone; the arithmetic is scipy's own
        # (integer offset -> float64, times spacing, squared, summed in axis order, square root).
        nearest = ndimage.distance_transform_edt(
            ~features.numpy(), sampling=spacing, return_distances=False, return_indices=True
        )
        points = np.nonzero(query.numpy())
        squared = None
        for axis, s in enumerate(spacing):
            delta = (nearest[axis][points] - points[axis]).astype(np.float64) * np.float64(s)
            delta *= delta
            squared = delta if squared is None else squared + delta
        return torch.from_numpy(np.sqrt(squared)).to(device)
    dist = distance_transform_edt((~features)[None], sampling=list(spacing), float64_distances=True)
    return torch.as_tensor(dist, device=query.device)[0][query]


def surface_dice(
    pred: ArrayLike,
    target: ArrayLike,
    spacing: Sequence[float],
    tolerance: float = 1.0,
) -> float:
    """Surface Dice (normalised surface distance) at ``tolerance`` mm between two binary masks.

    Equal, up to floating-point summation order, to DeepMind's
    ``compute_surface_dice_at_tolerance(compute_surface_distances(target, pred, spacing), tolerance)``.
    The measure is symmetric in ``pred`` and ``target``.

    Args:
        pred: predicted mask, 2D or 3D numpy array or torch tensor (CPU or CUDA; bool, int or float, nonzero
            is foreground).
        target: ground-truth mask of the same shape.
        spacing: voxel size in mm along each array axis (one positive finite value per axis).
        tolerance: the largest surface-to-surface distance in mm that still counts as overlap (>= 0).

    Returns:
        A float in [0, 1]. Conventions: both masks empty gives ``nan`` (0/0, as the reference); exactly one
        empty gives ``0.0``.

    Raises:
        ValueError: shapes differ, the masks are not 2D or 3D, ``spacing`` does not have one positive finite
            value per axis, or ``tolerance`` is negative or NaN.
    """
    p, t = _pair(pred, target)
    if p.ndim not in (2, 3):
        raise ValueError(f"surface_dice supports 2D or 3D masks only, got shape {tuple(p.shape)}")
    spacing_ = _check_spacing(spacing, p.ndim)
    tol = _check_tolerance(tolerance)

    p_any, t_any = bool(p.any()), bool(t.any())
    if not (p_any or t_any):
        return float("nan")
    if not (p_any and t_any):
        return 0.0

    box = _bounding_box(p | t)
    codes_p, codes_t = _neighbour_codes(p[box]), _neighbour_codes(t[box])
    full = int(_kernel(p.ndim).sum())  # every neighbour inside: 0b1111 (2D), 0b11111111 (3D)
    border_p = (codes_p != 0) & (codes_p != full)
    border_t = (codes_t != 0) & (codes_t != full)

    table = torch.tensor(_surfel_table(spacing_), device=codes_p.device)
    area_p = table[codes_p[border_p].long()]
    area_t = table[codes_t[border_t].long()]

    dist_t_to_p = _distances_to(border_p, border_t, spacing_).to(area_t.device)
    dist_p_to_t = _distances_to(border_t, border_p, spacing_).to(area_p.device)

    overlap = area_t[dist_t_to_p <= tol].sum() + area_p[dist_p_to_t <= tol].sum()
    return float(overlap / (area_t.sum() + area_p.sum()))


# --------------------------------------------------------------------------------------------------
# MONAI metric and handler
# --------------------------------------------------------------------------------------------------


def _spacing_from_meta(
    x: torch.Tensor,
    batch_size: int,
    ndim: int,
) -> list[tuple[tuple[float, ...], bool]] | None:
    """Per-item ``(spacing, explicit)`` from a (batched or single) MetaTensor, ``None`` for a plain tensor.

    The affine is kept current by MONAI's spatial transforms (``Spacing``, ``Orientation``, ...), so the
    spacing is the norm of each of its first ``ndim`` columns (linear part). The ``pixdim`` meta entry, as
    read from a NIfTI header, is not updated by those transforms, so it is used only when the affine is the
    identity that MetaTensor defaults to: NIfTI-style (``[qfac, dx, dy, dz, ...]``) or one value per axis.
    ``explicit`` is False when neither says more than that default identity (spacing 1).
    """
    if not isinstance(x, MetaTensor):
        return None
    affine = torch.as_tensor(x.affine).detach().to("cpu", torch.float64)
    affines = affine if affine.ndim == 3 else affine[None].expand(batch_size, -1, -1)
    pixdim = x.meta.get("pixdim")
    pixdims = None
    if pixdim is not None:
        if not torch.is_tensor(pixdim):
            pixdim = torch.as_tensor(np.asarray(pixdim, dtype=np.float64))
        pixdim = pixdim.detach().to("cpu", torch.float64)
        pixdims = pixdim if pixdim.ndim == 2 else pixdim[None].expand(batch_size, -1)
    if affines.shape[0] != batch_size or (pixdims is not None and pixdims.shape[0] != batch_size):
        raise ValueError(f"metadata of {affines.shape[0]} items for a batch of {batch_size}")

    items = []
    for b in range(batch_size):
        a = affines[b]
        pd = pixdims[b] if pixdims is not None else None
        if not torch.equal(a, torch.eye(a.shape[0], dtype=a.dtype)):
            items.append((torch.linalg.vector_norm(a[:-1, :ndim], dim=0), True))
        elif pd is not None and pd.numel() == ndim:
            items.append((pd, True))
        elif pd is not None and pd.numel() > ndim:
            items.append((pd[1 : ndim + 1], True))
        else:
            items.append((torch.ones(ndim, dtype=torch.float64), False))
    return [(tuple(float(v) for v in values), explicit) for values, explicit in items]


def _item_spacings(
    y: torch.Tensor,
    y_pred: torch.Tensor,
    batch_size: int,
    ndim: int,
) -> list[tuple[float, ...]]:
    """Spacing of each batch item: the label's metadata, or the prediction's where the label's is default."""
    sources = [m for m in (_spacing_from_meta(t, batch_size, ndim) for t in (y, y_pred)) if m is not None]
    if not sources:
        raise ValueError("BinarySurfaceDiceMetric reads the voxel spacing from MetaTensors, got plain tensors")
    spacings = []
    for b in range(batch_size):
        candidates = [source[b] for source in sources]
        spacings.append(next((sp for sp, explicit in candidates if explicit), candidates[0][0]))
    return spacings


class BinarySurfaceDiceMetric(CumulativeIterationMetric):
    """Per-volume surface Dice of binary masks at ``tolerance`` mm, cumulated over iterations like MONAI's
    ``DiceMetric``.

    Not ``monai.metrics.SurfaceDiceMetric``, which takes one-hot classes with a threshold per class and, by default,
    counts boundary voxels: this one weighs each surface element by its area, as ``surface_dice`` (and the
    ``surface-distance`` package) do.

    Inputs are binary masks: batch-first, channel-first tensors ``(B, 1, H, W[, D])`` or lists of
    ``(1, H, W[, D])`` tensors (decollated), of which the label, the prediction or both are MetaTensors: the
    voxel spacing of every item is read from its metadata (the label's, unless it only carries MetaTensor's
    default identity affine; see ``_spacing_from_meta``), never assumed. Item ``b`` gives
    ``surface_dice(y_pred[b, 0], y[b, 0], spacing_b, tolerance)``, so one empty mask gives 0 and two empty
    masks give NaN; ``aggregate`` reduces with ``do_metric_reduction``, which ignores NaNs as MONAI's
    metrics do.

    Args:
        tolerance: tolerance in mm.
        reduction: a ``monai.utils.MetricReduction`` mode for ``aggregate``.
        get_not_nans: ``aggregate`` also returns the number of non-NaN values.
    """

    def __init__(
        self,
        tolerance: float = 1.0,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__()
        self.tolerance = _check_tolerance(tolerance)
        self.reduction = reduction
        self.get_not_nans = get_not_nans

    def _compute_tensor(
        self,
        y_pred: torch.Tensor,
        y: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if y is None:
            raise ValueError("BinarySurfaceDiceMetric needs both y_pred and y")
        if y_pred.shape != y.shape:
            shapes = f"{tuple(y_pred.shape)} and {tuple(y.shape)}"
            raise ValueError(f"y_pred and y must have the same shape, got {shapes}")
        if y_pred.ndim not in (4, 5):
            raise ValueError(f"expected (B, 1, H, W[, D]) masks, got shape {tuple(y_pred.shape)}")
        if y_pred.shape[1] != 1:
            raise ValueError(
                f"expected one channel of binary foreground, got {y_pred.shape[1]}; threshold or argmax first"
            )
        batch, ndim = y_pred.shape[0], y_pred.ndim - 2
        spacings = _item_spacings(y, y_pred, batch, ndim)
        pred = y_pred.as_tensor() if isinstance(y_pred, MetaTensor) else y_pred
        label = y.as_tensor() if isinstance(y, MetaTensor) else y
        values = [surface_dice(pred[b, 0], label[b, 0], spacings[b], self.tolerance) for b in range(batch)]
        return torch.tensor(values, dtype=torch.float32, device=y_pred.device).unsqueeze(1)

    def aggregate(
        self, reduction: MetricReduction | str | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Reduce the buffered per-volume values (NaNs ignored); ``reduction`` overrides the constructor's."""
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError(f"the data to aggregate must be a PyTorch Tensor, got {type(data)}")
        f, not_nans = do_metric_reduction(data, reduction or self.reduction)
        return (f, not_nans) if self.get_not_nans else f


class SurfaceDice(IgniteMetricHandler):
    """Ignite handler for the mean surface Dice of an evaluation, the analogue of ``monai.handlers.MeanDice``.

    Args:
        tolerance: tolerance in mm.
        reduction: a ``monai.utils.MetricReduction`` mode over the per-volume values.
        output_transform: maps ``engine.state.output`` to ``(y_pred, y)``, e.g.
            ``monai.handlers.from_engine(["pred", "label"])``.
        save_details: keep the per-volume values in ``engine.state.metric_details[name]`` (shape ``(N, 1)``).
    """

    def __init__(
        self,
        tolerance: float = 1.0,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        metric_fn = BinarySurfaceDiceMetric(tolerance=tolerance, reduction=reduction)
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)
