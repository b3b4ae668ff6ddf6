"""A real but tiny profile (coarse voxels, 32 x 32 crops, one iteration per run) and the cells it makes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from custom.reproduction.profiles import DEMO

TINY = replace(
    DEMO,
    name="tiny",
    spacing=(4.0, 3.8, 3.8),
    roi_size=(32, 32),
    baseline={"max_epochs": 1, "lr_decay_epoch": 1, "iterations_per_epoch": 1, "batch_size": 2},
    finetune={"max_epochs": 1, "lr_decay_epoch": 1, "iterations_per_epoch": 1, "batch_size": 2},
    sources=("siemens_15",),
    targets=("ge_3",),
    strategies=("first", "last"),
    budgets=(5,),
    n_val=1,
    demo_subjects=2,
    evaluate={},
    source_models={},  # these tests train their source model; test_shipped_source_model covers the shipped one
)
CELLS = [
    "train/baseline/siemens_15", "eval/baseline/siemens_15/siemens_15", "eval/baseline/siemens_15/ge_3",
    "train/first/siemens_15_to_ge_3/5slices", "eval/first/siemens_15_to_ge_3/5slices",
    "train/last/siemens_15_to_ge_3/5slices", "eval/last/siemens_15_to_ge_3/5slices",
]
# Fine-tuning long enough (4 epochs of 40 iterations) to be killed between two of its epoch checkpoints.
KILLABLE = replace(TINY, finetune={"max_epochs": 4, "lr_decay_epoch": 3, "iterations_per_epoch": 40, "batch_size": 2})


def markers(out: Path) -> dict[str, int]:
    """Finished cell id -> the modification time of its done.json."""
    return {str(p.parent.relative_to(out / "cells")): p.stat().st_mtime_ns for p in out.glob("cells/**/done.json")}
