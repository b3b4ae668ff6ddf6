"""Plot a bundle training run's curves: training loss per epoch and validation surface Dice / Dice.

Usage::

    python scripts/plot_training_curves.py --run_dir bundles/brain_extraction_source/runs/train \
        --output docs/images/source_training_curves.png

Reads the run's TensorBoard events (``val_*`` scalars; ``train_loss`` per iteration, averaged per epoch). Epochs
whose events lack the training loss fall back to the per-epoch lines of ``train*.log`` in the folder (the
StatsHandler's "Epoch: e/n, Iter: i/i -- train_loss: x", the last iteration of each epoch). Also writes the
numbers as CSV next to the PNG.
"""

from __future__ import annotations

import csv
import re
import sys
from collections import defaultdict
from pathlib import Path

EPOCH_LINE = re.compile(r"Epoch: (\d+)/\d+, Iter: (\d+)/(\d+) -- train_loss: ([0-9.eE+-]+)")


def read_curves(run_dir: Path) -> dict[str, dict[int, float]]:
    """``{"train_loss": {epoch: loss}, "val_surface_dice": {epoch: value}, ...}`` of one training run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves: dict[str, dict[int, float]] = {}
    per_iteration: list[tuple[int, float]] = []
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            points = [(e.step, e.value) for e in acc.Scalars(tag)]
            if tag == "train_loss":
                per_iteration += points
            else:
                curves.setdefault(tag, {}).update(points)
    logged = {}  # epochs without events (e.g. before a resumed run): the log's last-iteration loss
    for log in sorted(run_dir.glob("train*.log")):
        logged.update({int(m[1]): float(m[4]) for m in EPOCH_LINE.finditer(log.read_text()) if m[2] == m[3]})
    if per_iteration or logged:
        curves["train_loss"] = {**logged, **(_per_epoch(per_iteration, run_dir) if per_iteration else {})}
    if not curves:
        raise ValueError(f"{run_dir}: no TensorBoard scalars and no train.log")
    return {tag: dict(sorted(values.items())) for tag, values in curves.items()}


def _per_epoch(points: list[tuple[int, float]], run_dir: Path) -> dict[int, float]:
    found = next((m for log in run_dir.glob("train*.log") for m in EPOCH_LINE.finditer(log.read_text())), None)
    per_epoch = int(found[3]) if found else max(s for s, _ in points) // max(1, len(points) // 100)
    sums: dict[int, list[float]] = defaultdict(list)
    for step, value in points:
        sums[(step - 1) // per_epoch + 1].append(value)
    return {e: sum(v) / len(v) for e, v in sorted(sums.items())}


def plot(curves: dict[str, dict[int, float]], output: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    validation = [tag for tag in ("val_surface_dice", "val_dice") if curves.get(tag)]
    # a run without validation scans (a few annotated slices) gets the training panel alone
    fig, axes = plt.subplots(1, 2 if validation else 1, figsize=(10 if validation else 5.4, 3.8), squeeze=False)
    ax_loss = axes[0][0]
    loss = curves.get("train_loss", {})
    ax_loss.plot(list(loss), list(loss.values()), color="tab:blue")
    ax_loss.set(xlabel="epoch", ylabel="training loss", yscale="log", title="training")
    if validation:
        ax_val = axes[0][1]
        for tag in validation:
            values = curves[tag]
            colour = {"val_surface_dice": "tab:red", "val_dice": "tab:green"}[tag]
            ax_val.plot(list(values), list(values.values()), "o-", color=colour, label=tag.removeprefix("val_"))
        ax_val.set(xlabel="epoch", ylabel="held-out validation scans (mean)", title="validation")
        ax_val.legend(loc="lower right")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120)
    plt.close(fig)
    with open(output.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.writer(f)
        tags = sorted(curves)
        writer.writerow(["epoch", *tags])
        for epoch in sorted({e for values in curves.values() for e in values}):
            writer.writerow([epoch, *(f"{curves[t][epoch]:.6g}" if epoch in curves[t] else "" for t in tags)])
    return output


def main(run_dir: str, output: str, title: str = "") -> None:
    """Plot the curves of the training run in RUN_DIR to OUTPUT (PNG) and OUTPUT with .csv."""
    try:
        path = plot(read_curves(Path(run_dir)), Path(output), title)
    except ValueError as e:
        print(f"plot_training_curves: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"plot_training_curves: wrote {path} and {path.with_suffix('.csv')}")


if __name__ == "__main__":
    import fire

    from custom.options import refuse_unknown_options

    fire.Fire(main, command=refuse_unknown_options(main, None, "plot_training_curves: error: "),
              name="plot_training_curves")
