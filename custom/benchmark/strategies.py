"""Fine-tuning strategies: the bare step with only a strategy's parameters trainable, cost relative to full."""

from __future__ import annotations

from custom.benchmark.bundle import source_config
from custom.benchmark.settings import STRATEGY_NAMES, Settings
from custom.benchmark.timing import alternate, log, median
from custom.benchmark.training import BareStep, precision_label

__all__ = ["bench_strategies"]


def bench_strategies(s: Settings) -> dict:
    parser = source_config("train")
    raw = {k: parser.get(k) for k in ("network_def", "optimizer", "loss")}
    raw["learning_rate"] = parser.get("learning_rate")
    log(f"fine-tuning: {s.repeats} x {s.steps} bare steps per strategy ({', '.join(STRATEGY_NAMES)})")
    runs = {name: BareStep(raw, s, strategy=name) for name in STRATEGY_NAMES}
    trainable = {name: sum(p.numel() for p in r.network.parameters() if p.requires_grad) for name, r in runs.items()}
    times = alternate(runs, s, s.steps, s.warmup)
    full = median(times["full"])
    slices = s.batch_size * s.steps
    return {
        "precision": precision_label(s),
        "strategies": {
            name: {"slices_per_s": slices / median(times[name]), "relative_cost": median(times[name]) / full,
                   "trainable_parameters": trainable[name]}
            for name in STRATEGY_NAMES
        },
    }
