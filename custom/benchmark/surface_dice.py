"""Surface Dice: ``custom.metrics.surface_dice`` against DeepMind's ``surface_distance``, values checked equal."""

from __future__ import annotations

import numpy as np
import torch

from custom.benchmark.phantoms import brain_mask_pair
from custom.benchmark.settings import Settings
from custom.benchmark.timing import alternate, log, median

__all__ = ["EQUALITY_ATOL", "bench_surface_dice"]

EQUALITY_ATOL = 1e-6


def bench_surface_dice(s: Settings) -> dict:
    import surface_distance

    from custom.metrics import surface_dice

    cucim = _has_cucim()
    pairs = []
    for i, spacing in enumerate(s.spacings):
        pred, target = brain_mask_pair(s.volume_shape, spacing, seed=s.seed + 100 + i)
        values: dict[str, float] = {}

        def deepmind(pred=pred, target=target, spacing=spacing, values=values):
            distances = surface_distance.compute_surface_distances(target, pred, spacing)
            values["deepmind"] = float(surface_distance.compute_surface_dice_at_tolerance(distances, s.tolerance_mm))

        def ours(pred=pred, target=target, spacing=spacing, values=values):
            values["custom"] = surface_dice(pred, target, spacing, s.tolerance_mm)

        runs = {"deepmind_cpu": deepmind, "custom_cpu": ours}
        if s.device == "cuda":
            pred_gpu, target_gpu = (torch.from_numpy(m).to(s.torch_device) for m in (pred, target))

            def ours_gpu(pred=pred_gpu, target=target_gpu, spacing=spacing, values=values):
                values["custom_cuda"] = surface_dice(pred, target, spacing, s.tolerance_mm)

            runs["custom_cuda"] = ours_gpu
        log(f"surface Dice: {s.repeats} x {'x'.join(map(str, s.volume_shape))} pair, spacing {spacing} mm: "
            + ", ".join(runs))
        times = alternate(runs, s, 1, 1)
        diffs = {name: abs(values[name] - values["deepmind"]) for name in ("custom", "custom_cuda") if name in values}
        pair = {
            "spacing_mm": list(spacing),
            "surface_dice": values["deepmind"],
            "dice": float(2 * np.count_nonzero(pred & target) / (np.count_nonzero(pred) + np.count_nonzero(target))),
            "seconds": {name: median(t) for name, t in times.items()},
            "abs_diff": diffs,
            "equal": all(d < EQUALITY_ATOL for d in diffs.values()),
        }
        pair["speedup_over_deepmind"] = {name: pair["seconds"]["deepmind_cpu"] / sec
                                         for name, sec in pair["seconds"].items() if name != "deepmind_cpu"}
        pairs.append(pair)
    return {"shape": list(s.volume_shape), "tolerance_mm": s.tolerance_mm, "atol": EQUALITY_ATOL, "cucim": cucim,
            "pairs": pairs, "equal": all(p["equal"] for p in pairs), "cuda_goal": 100.0}


def _has_cucim() -> bool:
    """Whether surface Dice of CUDA masks runs its distance transform on the GPU (cupy and cuCIM installed)."""
    from custom.metrics import _has_cucim as has_cucim

    return has_cucim()
