"""The paper's whole experiment as a grid of resumable cells, each one a run of a bundle.

Cells (one folder each under ``<output_dir>/cells/``, finished when its ``done.json`` exists):

* ``train/baseline/<source>``: the source bundle's ``train.yaml`` on the one2all split of one domain;
* ``eval/baseline/<source>/<target>``: that model on every scan of another domain (``inference.yaml`` +
  ``evaluate.yaml``);
* ``train/oracle/<domain>/fold<k>`` and ``eval/oracle/<domain>/fold<k>``: 3-fold cross-validation inside a
  domain (``--oracle``);
* ``train/<first|last|full>/<source>_to_<target>/<n>slices``: a fine-tuning bundle's ``train.yaml`` on the
  one2one split with the slice budget's annotated scans and slice interval, starting from the source model;
* ``eval/<first|last|full>/<source>_to_<target>/<n>slices``: the fine-tuned model on the target's test scans.

A cell runs its bundle in-process through ``monai.bundle.ConfigWorkflow`` with command-line-style overrides
(recorded in ``done.json``), so the bundles stay the single definition of training and evaluation. A cell is
identified by a fingerprint of its settings and its scans: a rerun skips finished cells, restarts unfinished ones
(training resumes from its last epoch checkpoint when the settings are unchanged) and refuses an output folder
whose finished cells were made with other settings.

Nothing here imports torch or MONAI at module level: worker processes set ``CUDA_VISIBLE_DEVICES`` first.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import hashlib
import io
import json
import logging
import math
import os
import platform
import shutil
import socket
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from custom.cc359 import DOMAINS, Scan, index_dataset
from custom.splits import BUDGETS, DEFAULT_SEED, budget, one2all, one2one, oracle

__all__ = [
    "PROFILES",
    "STRATEGIES",
    "Cell",
    "Plan",
    "Profile",
    "UsageError",
    "build_grid",
    "execute",
    "parse_shard",
    "plan",
    "report",
    "resolve_selection",
    "run",
    "run_cell",
    "shard_cells",
    "shortened",
]

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
SOURCE_BUNDLE = "brain_extraction_source"
STRATEGY_BUNDLES = {
    "first": "brain_extraction_first_layers",
    "last": "brain_extraction_last_layers",
    "full": "brain_extraction_full",
}
STRATEGIES = tuple(STRATEGY_BUNDLES)
ALL_BUDGETS = tuple(b.n_slices for b in BUDGETS)
N_FOLDS = 3
DONE, PLAN, ERROR, LOG = "done.json", "plan.json", "error.txt", "log.txt"
SHORT = {"siemens_15": "S1.5", "siemens_3": "S3", "ge_15": "GE1.5", "ge_3": "GE3", "philips_15": "P1.5",
         "philips_3": "P3"}
STRATEGY_NAMES = {"first": "first layers", "last": "last layers", "full": "whole network"}
SMALL_BUDGET = 45  # "scarce target data": the budgets up to 45 slices, where the paper's first layers win most
# what each kind of cell reports as its effective configuration (after the bundle resolved its defaults)
KNOBS = {
    "train": ("max_epochs", "lr_decay_epoch", "iterations_per_epoch", "batch_size", "learning_rate", "spacing",
              "roi_size", "slice_interval", "val_interval", "strategy", "freeze_bn_stats", "seed", "precision",
              "orientation", "mask_interpolation", "crop_mode"),
    "eval": ("spacing", "precision", "orientation", "mask_interpolation", "key_metric#surface_dice#tolerance"),
}


class UsageError(ValueError):
    """Bad command-line input (unknown profile, strategy, domain, budget, malformed shard, missing data...)."""


# ---------------------------------------------------------------------------------------------------------------
# profiles
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """How much of the protocol runs, and with which overrides of the bundles' (paper) defaults.

    ``baseline`` / ``finetune`` / ``evaluate`` are bundle overrides (top-level config ids); empty = the bundle
    defaults, which are the paper's. ``spacing`` / ``roi_size`` of None keep the bundle defaults as well.
    """

    name: str
    description: str
    spacing: tuple[float, float, float] | None = None
    roi_size: tuple[int, int] | None = None
    baseline: dict = field(default_factory=dict)
    finetune: dict = field(default_factory=dict)
    evaluate: dict = field(default_factory=dict)
    n_val: int = 4
    seed: int = 0
    split_seed: int = DEFAULT_SEED
    sources: tuple[str, ...] = DOMAINS
    targets: tuple[str, ...] = DOMAINS
    strategies: tuple[str, ...] = STRATEGIES
    budgets: tuple[int, ...] = ALL_BUDGETS
    demo_subjects: int | None = None  # generate the demo data (this many subjects per domain) when it is missing
    data_seed: int = 0  # seed of the generated demo data
    # source domain -> shipped weights that stand in for training that source (reproduce.py --train_source trains it)
    source_models: dict = field(default_factory=dict)
    workers: int = 1  # default --workers (capped at the number of CPU cores)
    precision: str = "fp32"  # the bundles' --precision in every cell (the paper: fp32)
    # None keeps the bundle default (RAS, linear, random); the paper's code: "none", "cubic", "centre_if_small"
    orientation: str | None = None  # the bundles' --orientation (none = slice the stored array)
    mask_interpolation: str | None = None  # --mask_interpolation: linear | cubic
    crop_mode: str | None = None  # --crop_mode: random | centre_if_small


PAPER = Profile(
    name="paper",
    description="the authors' protocol (docs/PROTOCOL.md): their scans (scikit-learn splits over their meta.csv "
    "order, seed 0xBadCafe; 4 validation scans per source, 2 per oracle fold), the stored array orientation, "
    "spacing 1 x 0.95 x 0.95 mm with the cubic spline for image and mask, 256 x 256 crops centred on a smaller "
    "slice, fp32; baseline 100 epochs x 100 iterations, batch 32, lr 1e-3 x0.1 after epoch 81; fine-tuning "
    "'dart20': 20 epochs x 100 iterations, batch 32, lr x0.1 after epoch 16; 6 sources x 5 targets x 3 strategies "
    "x 9 budgets",
    baseline={"lr_decay_epoch": 81},
    finetune={"lr_decay_epoch": 16},
    precision="fp32",
    orientation="none",
    mask_interpolation="cubic",
    crop_mode="centre_if_small",
)

# The demo's source model, trained by the source bundle's train.yaml with DEMO.baseline on other subjects
# (demo data seed 0) than the demo's own (seed 1); see custom/resources/README.md.
DEMO_SOURCE_MODEL = Path(__file__).resolve().parent / "resources" / "demo_source_siemens_15.pt"

DEMO = Profile(
    name="demo",
    description="a CPU-sized slice of the protocol on the simulated six-scanner demo data, everything at twice the "
    "paper's voxel size (a full-slice field of view and a one-voxel surface-Dice tolerance, as in the paper)",
    spacing=(2.0, 1.9, 1.9),
    roi_size=(128, 128),  # 243 mm: the whole slice, as the paper's 256 crops of 0.95 mm voxels
    baseline={"max_epochs": 14, "lr_decay_epoch": 11, "iterations_per_epoch": 100, "batch_size": 16,
              "learning_rate": 0.01},
    finetune={"max_epochs": 6, "lr_decay_epoch": 5, "iterations_per_epoch": 10, "batch_size": 16,
              "learning_rate": 0.025},
    evaluate={"key_metric#surface_dice#tolerance": 2.0},
    sources=("siemens_15",),
    targets=("ge_15", "philips_15"),
    budgets=(5, 24, 90),
    demo_subjects=8,
    data_seed=1,
    source_models={"siemens_15": str(DEMO_SOURCE_MODEL)},
    workers=2,
    precision="auto",
)

# the authors' values of the knobs a profile may override (docs/PROTOCOL.md). lr_decay_epoch counts the epochs
# run at the initial rate (the bundles' MultiStepLR milestone, stepped once per finished epoch): the authors' dpipe
# Schedule({80: 0.1}) multiplies at the end of the 0-based epoch 80, i.e. after 81 epochs (fine-tuning 15: 16).
PAPER_VALUES = {
    "spacing": (1.0, 0.95, 0.95),
    "roi_size": (256, 256),
    "baseline": {"max_epochs": 100, "lr_decay_epoch": 81, "iterations_per_epoch": 100, "batch_size": 32,
                 "learning_rate": 0.001},
    "finetune": {"max_epochs": 20, "lr_decay_epoch": 16, "iterations_per_epoch": 100, "batch_size": 32,
                 "learning_rate": 0.001},
    "n_val": 4,
    "precision": "fp32",
    "orientation": "none",
    "mask_interpolation": "cubic",
    "crop_mode": "centre_if_small",
}
# what a profile's None means: the bundles' defaults (bundles/*/configs/train.yaml, inference.yaml, evaluate.yaml)
BUNDLE_DEFAULTS = {"orientation": "RAS", "mask_interpolation": "linear", "crop_mode": "random"}

# What stays different from the authors' code even in the paper profile, and why (summary.md and manifest.json).
REMAINING_DIFFERENCES = (
    "random streams: which scan, slice and crop each batch takes and the initial weights come from this project's "
    "seeded generators (reproducible and resumable), not from the authors' global NumPy/PyTorch state, so single "
    "runs differ from theirs by training noise",
    "resampling: MONAI's Spacing (cubic spline, output grid from the spacing ratio) instead of scipy.ndimage.zoom "
    "with the same scale factors: the output grid can differ by one voxel per axis and by a sub-voxel shift "
    "(MONAI's transforms are what the bundles invert at inference)",
    "the authors cache preprocessed images as float16 (about 3 significant digits) before training; the bundles "
    "keep float32",
    "the learning-rate step follows the dpipe of 2020 (its Schedule multiplies when epoch 80, 0-based, ends); "
    "later dpipe releases (0.5.0) multiply when that epoch starts, i.e. after 80 epochs: `--profile paper` uses "
    "81 and 16 epochs at the initial rate",
)


def _schedule_text(values: dict) -> str:
    v = {**PAPER_VALUES["baseline"], **values}
    epochs, its = v["max_epochs"], v["iterations_per_epoch"]
    return (f"{epochs} epoch{'s' * (epochs != 1)} x {its} iteration{'s' * (its != 1)}, batch {v['batch_size']}, "
            f"lr {v['learning_rate']:g} x0.1 after epoch {v['lr_decay_epoch']}")


def _lr_steps(values: dict) -> float:
    """The sum of the learning rate over all steps (how far SGD can move the weights)."""
    v = {**PAPER_VALUES["baseline"], **values}
    decay = min(v["lr_decay_epoch"], v["max_epochs"])
    return v["learning_rate"] * v["iterations_per_epoch"] * (decay + 0.1 * (v["max_epochs"] - decay))


def shortened(profile: Profile) -> list[str]:
    """What ``profile`` changes with respect to docs/PROTOCOL.md, one line each, derived from its settings."""
    lines = []
    if profile.demo_subjects:
        lines.append(f"data: the simulated six-scanner demo data, {profile.demo_subjects} subjects per domain at about "
                     f"2 mm voxels, seed {profile.data_seed} (generated when the data folder is missing or empty) "
                     "instead of CC359")
    for source, weights in profile.source_models.items():
        lines.append(f"source model {source}: the shipped `{Path(weights).name}` (trained by the source bundle's "
                     f"train.yaml with the baseline settings below on other simulated subjects) instead of training "
                     "it here; `--train_source true` trains it")
    if profile.spacing is not None and tuple(profile.spacing) != PAPER_VALUES["spacing"]:
        lines.append(f"resampling to {' x '.join(map(str, profile.spacing))} mm instead of 1 x 0.95 x 0.95 mm; "
                     "the slice budgets keep the protocol's slice interval k, so a scan offers n_z / k slices with "
                     "fewer n_z (tables show the slices actually offered)")
    tolerance = profile.evaluate.get("key_metric#surface_dice#tolerance", 1.0)
    if tolerance != 1.0:
        voxels = tolerance / min(profile.spacing or PAPER_VALUES["spacing"])
        lines.append(f"surface Dice tolerance {tolerance:g} mm instead of 1 mm: {voxels:.2f} in-plane voxels, as "
                     "the paper's 1 mm is about one voxel at its 0.95-1 mm spacing (the same tolerance in mm would be "
                     "half a voxel here and reward sub-voxel precision the coarse scans cannot carry)")
    if profile.roi_size is not None and tuple(profile.roi_size) != PAPER_VALUES["roi_size"]:
        spacing = min(profile.spacing or PAPER_VALUES["spacing"])
        fov = " x ".join(f"{n * spacing:.0f}" for n in profile.roi_size)
        lines.append(f"training crops {' x '.join(map(str, profile.roi_size))} instead of 256 x 256 ({fov} mm at "
                     f"{spacing:g} mm, the paper's 243 x 243 mm field of view)")
    for kind, name in (("baseline", "baseline and oracle training"), ("finetune", "fine-tuning")):
        values = getattr(profile, kind)
        if values and {**PAPER_VALUES[kind], **values} != PAPER_VALUES[kind]:
            paper = PAPER_VALUES[kind]
            mine = {**paper, **values}
            ratio = paper["max_epochs"] * paper["iterations_per_epoch"] / max(
                1, mine["max_epochs"] * mine["iterations_per_epoch"])
            lines.append(f"{name}: {_schedule_text(mine)} (paper: {_schedule_text(paper)}); {ratio:.0f}x fewer "
                         f"steps, so a larger learning rate: summed over all steps it is {_lr_steps(mine):.2f} "
                         f"(paper {_lr_steps(paper):.2f})")
    if profile.precision != "fp32":
        lines.append(f"precision {profile.precision} (bf16 autocast where the hardware runs it natively) instead of "
                     "the paper's fp32")
    orientation, mask, crop = (effective(profile, k) for k in ("orientation", "mask_interpolation", "crop_mode"))
    if orientation != PAPER_VALUES["orientation"]:
        lines.append(f"volumes reoriented to {orientation} before slicing along the last axis instead of the stored "
                     "array order (the authors slice the stored array; reorienting can change the slicing plane)")
    if mask != PAPER_VALUES["mask_interpolation"]:
        lines.append(f"masks resampled with {mask} interpolation (then thresholded at 0.5) instead of the image's "
                     "cubic spline")
    if crop != PAPER_VALUES["crop_mode"]:
        lines.append(f"training crops placed '{crop}' (a random offset along a side longer than the crop even when "
                     "the other side is shorter) instead of centred on both axes when a side is shorter than the crop")
    if profile.n_val != PAPER_VALUES["n_val"]:
        lines.append(f"{profile.n_val} held-out validation scan(s) per source instead of 4 (they only serve as the "
                     "in-domain reference on the baseline matrix's diagonal; the last epoch is kept either way)")
    default_grid = (DOMAINS, DOMAINS, STRATEGIES, ALL_BUDGETS)
    if (profile.sources, profile.targets, profile.strategies, profile.budgets) != default_grid:
        lines.append(f"default grid: sources {', '.join(profile.sources)} -> targets {', '.join(profile.targets)}; "
                     f"strategies {', '.join(profile.strategies)}; budgets {', '.join(map(str, profile.budgets))} "
                     "(the subset flags choose others)")
    return lines


PROFILES = {p.name: p for p in (PAPER, DEMO)}


def effective(profile: Profile, key: str):
    """The value of a protocol option a profile's cells run with: its own, or the bundles' default for None."""
    value = getattr(profile, key)
    return BUNDLE_DEFAULTS[key] if value is None else value


def profile_overrides(profile: Profile, kind: str) -> dict:
    """The bundle overrides of a profile for ``baseline`` (also oracle), ``finetune`` or ``evaluate`` cells."""
    out = {}
    if profile.spacing is not None:
        out["spacing"] = list(profile.spacing)
    if kind != "evaluate" and profile.roi_size is not None:
        out["roi_size"] = list(profile.roi_size)
    out["precision"] = profile.precision
    for key in ("orientation", "mask_interpolation") + (("crop_mode",) if kind != "evaluate" else ()):
        if getattr(profile, key) is not None:
            out[key] = getattr(profile, key)
    out.update(getattr(profile, kind))
    if kind != "evaluate":
        out["seed"] = profile.seed
    return out


# ---------------------------------------------------------------------------------------------------------------
# the grid
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One bundle run. ``role``: baseline | oracle | first | last | full; ``kind``: train | eval."""

    kind: str
    role: str
    source: str
    target: str | None = None
    n_slices: int | None = None
    fold: int | None = None

    @property
    def id(self) -> str:
        if self.role == "baseline":
            return f"train/baseline/{self.source}" if self.kind == "train" else (
                f"eval/baseline/{self.source}/{self.target}")
        if self.role == "oracle":
            return f"{self.kind}/oracle/{self.source}/fold{self.fold}"
        return f"{self.kind}/{self.role}/{self.source}_to_{self.target}/{self.n_slices}slices"

    @property
    def train_id(self) -> str:
        """The training cell an evaluation cell evaluates (itself for a training cell)."""
        return Cell("train", self.role, self.source, self.target if self.role not in ("baseline",) else None,
                    self.n_slices, self.fold).id

    @property
    def deps(self) -> tuple[str, ...]:
        if self.kind == "eval":
            return (self.train_id,)
        if self.role in STRATEGIES:
            return (Cell("train", "baseline", self.source).id,)
        return ()


def build_grid(
    sources: Sequence[str] = DOMAINS,
    targets: Sequence[str] = DOMAINS,
    strategies: Sequence[str] = STRATEGIES,
    budgets: Sequence[int] = ALL_BUDGETS,
    with_oracle: bool = False,
    in_domain: bool = False,
) -> list[Cell]:
    """Every cell of the selection, in an order where each cell comes after the cells it depends on.

    Baselines first (trainings, then their evaluations: with ``in_domain`` also each source model on its own
    held-out validation scans, ``eval/baseline/<s>/<s>``), then the oracle folds of every domain involved, then
    per (source, target, budget, strategy) a fine-tuning followed by its evaluation.
    """
    pairs = [(s, t) for s in sources for t in targets if s != t]
    cells = [Cell("train", "baseline", s) for s in sources]
    cells += [Cell("eval", "baseline", s, s) for s in sources] if in_domain else []
    cells += [Cell("eval", "baseline", s, t) for s, t in pairs]
    if with_oracle:
        domains = [d for d in DOMAINS if d in set(sources) | set(targets)]
        for d in domains:
            for k in range(N_FOLDS):
                cells += [Cell("train", "oracle", d, d, fold=k), Cell("eval", "oracle", d, d, fold=k)]
    for s, t in pairs:
        for n in budgets:
            for strategy in strategies:
                cells += [Cell("train", strategy, s, t, n), Cell("eval", strategy, s, t, n)]
    return cells


# ---------------------------------------------------------------------------------------------------------------
# command-line selection
# ---------------------------------------------------------------------------------------------------------------


def _items(value, what: str) -> list:
    """fire hands over ``a,b`` as a tuple, ``a`` as a str/int, ``[a, b]`` as a list; accept all of them."""
    if value is None:
        return []
    if isinstance(value, str):
        parts = [v.strip() for v in value.replace(";", ",").split(",")]
    elif isinstance(value, list | tuple):
        parts = list(value)
    else:
        parts = [value]
    parts = [p for p in parts if p != ""]
    if not parts:
        raise UsageError(f"--{what} is empty")
    return parts


def _choose(value, valid: Sequence, what: str, convert=str) -> tuple:
    chosen = []
    for item in _items(value, what):
        try:
            converted = convert(item)
        except (TypeError, ValueError):
            converted = None
        if converted not in valid or isinstance(item, bool):
            raise UsageError(f"unknown {what[:-1] if what.endswith('s') else what} {item!r}; "
                             f"valid: {', '.join(map(str, valid))}")
        if converted not in chosen:
            chosen.append(converted)
    return tuple(sorted(chosen, key=list(valid).index))


def _budget_value(item) -> int:
    if isinstance(item, float) and not item.is_integer():
        raise ValueError(item)
    return int(item)


def resolve_selection(profile: str | Profile, sources=None, targets=None, strategies=None, budgets=None) -> dict:
    """Validate the subset flags against the protocol; defaults come from the profile."""
    if isinstance(profile, str):
        if profile not in PROFILES:
            raise UsageError(f"unknown profile {profile!r}; valid: {', '.join(PROFILES)}")
        profile = PROFILES[profile]
    sel = {
        "profile": profile,
        "sources": _choose(sources, DOMAINS, "sources") if sources is not None else profile.sources,
        "targets": _choose(targets, DOMAINS, "targets") if targets is not None else profile.targets,
        "strategies": _choose(strategies, STRATEGIES, "strategies") if strategies is not None else profile.strategies,
        "budgets": _choose(budgets, ALL_BUDGETS, "budgets", _budget_value) if budgets is not None else profile.budgets,
    }
    if not [(s, t) for s in sel["sources"] for t in sel["targets"] if s != t]:
        raise UsageError("no source -> target pair: choose at least one target that is not a source")
    return sel


def parse_shard(shard) -> tuple[int, int] | None:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``; None stays None."""
    if shard is None:
        return None
    text = str(shard).strip()
    parts = text.split("/")
    try:
        if len(parts) != 2:
            raise ValueError
        i, n = int(parts[0]), int(parts[1])
    except ValueError:
        raise UsageError(f"malformed --shard {shard!r}: expected i/n, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise UsageError(f"malformed --shard {shard!r}: need 0 <= i < n")
    return i, n


def parse_devices(devices) -> tuple[str, ...]:
    if devices is None:
        return ()
    out = []
    for item in _items(devices, "devices"):
        text = str(item).strip()
        if not text.isdigit():
            raise UsageError(f"malformed --devices {devices!r}: expected GPU indices like 0,1")
        out.append(text)
    return tuple(out)


# ---------------------------------------------------------------------------------------------------------------
# planning: datalists, overrides, fingerprints (pure Python, no file written)
# ---------------------------------------------------------------------------------------------------------------


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_sha256(path: str) -> str:
    from custom.checkpoints import sha256

    if not Path(path).is_file():
        raise UsageError(f"{path}: shipped source weights not found (use --train_source true to train the source)")
    return sha256(path)


def _ids(datalist: dict) -> dict:
    return {part: [e["id"] for e in datalist.get(part, [])] for part in ("training", "validation", "test")}


def _cell_datalist(cell: Cell, scans: Sequence[Scan], profile: Profile) -> dict:
    seed = profile.split_seed
    if cell.role == "baseline":
        n_domain = sum(s.domain == cell.source for s in scans)
        n_val = min(profile.n_val, max(n_domain - 1, 0))  # a tiny dataset keeps one training scan
        dl = one2all(scans, cell.source, n_val=n_val, seed=seed)
        if cell.kind == "eval":
            test = dl["validation"] if cell.target == cell.source else [
                e for e in dl["test"] if e["domain"] == cell.target]
            dl = {**dl, "name": f"{dl['name']}_on_{cell.target}", "target": cell.target, "test": test}
        return dl
    if cell.role == "oracle":
        return oracle(scans, cell.source, cell.fold, n_folds=N_FOLDS, seed=seed)  # 2 validation scans, as dpipe
    n_scans, k = budget(cell.n_slices)
    dl = one2one(scans, cell.source, cell.target, n_scans, k, seed=seed)
    return {**dl, "n_slices": cell.n_slices}


def _bundle(cell: Cell) -> str:
    return SOURCE_BUNDLE if cell.role in ("baseline", "oracle") else STRATEGY_BUNDLES[cell.role]


def _meta_file(bundle_dir: Path) -> Path:
    own = bundle_dir / "configs" / "metadata.json"
    return own if own.is_file() else bundle_dir.parent / SOURCE_BUNDLE / "configs" / "metadata.json"


@dataclass
class Plan:
    """Everything a run needs, decided before anything is written."""

    profile: Profile
    data_dir: Path
    output_dir: Path
    bundles_dir: Path
    grid: list[Cell]
    specs: dict[str, dict]  # cell id -> run_cell spec
    selection: dict
    with_oracle: bool
    shard: tuple[int, int] | None
    scans: list[Scan]

    def cell_dir(self, cell_id: str) -> Path:
        return self.output_dir / "cells" / cell_id

    def is_done(self, cell_id: str) -> bool:
        marker = self.cell_dir(cell_id) / DONE
        if not marker.is_file():
            return False
        try:
            return json.loads(marker.read_text()).get("fingerprint") == self.specs[cell_id]["fingerprint"]
        except (OSError, ValueError):
            return False

    def mine(self) -> list[Cell]:
        """The cells this run is responsible for (its shard of the grid)."""
        return shard_cells(self.grid, self.shard)


def shard_cells(grid: Sequence[Cell], shard: tuple[int, int] | None) -> list[Cell]:
    """The cells of ``grid`` whose index % n == i for ``shard = (i, n)``; all of them for None."""
    if shard is None:
        return list(grid)
    i, n = shard
    return [c for k, c in enumerate(grid) if k % n == i]


def _spec(cell: Cell, datalist: dict, profile: Profile, data_dir: Path, out: Path, bundles: Path) -> dict:
    cell_dir = out / "cells" / cell.id
    bundle_dir = bundles / _bundle(cell)
    paths = {"bundle_root": str(bundle_dir), "dataset_dir": str(data_dir),
             "datalist_file": str(cell_dir / "datalist.json"), "output_dir": str(cell_dir)}
    shipped = profile.source_models.get(cell.source) if (cell.kind, cell.role) == ("train", "baseline") else None
    if cell.kind == "train":
        config_files = [bundle_dir / "configs" / "train.yaml"]
        paths["final_model"] = str(cell_dir / "model.pt")
        if cell.role in STRATEGIES:
            n_scans, k = budget(cell.n_slices)
            source_model = str(out / "cells" / cell.deps[0] / "model.pt")
            paths.update(adapter_path=str(cell_dir / "adapter.pt"), source_weights=source_model,
                         init_weights=source_model)
            settings = {**profile_overrides(profile, "finetune"), "n_slices": cell.n_slices, "slice_interval": k}
        else:
            settings = profile_overrides(profile, "baseline")
    else:
        config_files = [bundle_dir / "configs" / "inference.yaml", bundle_dir / "configs" / "evaluate.yaml"]
        paths.update(model_path=str(out / "cells" / cell.train_id / "model.pt"),
                     metrics_csv=str(cell_dir / "metrics.csv"))
        settings = {**profile_overrides(profile, "evaluate"), "datalist_key": "test"}
    if shipped:  # the shipped weights stand in for this training: they, not the settings, define the cell
        settings = {"shipped_weights": shipped, "sha256": _file_sha256(shipped)}
    fingerprint = _sha({"cell": cell.id, "bundle": bundle_dir.name, "configs": [f.name for f in config_files],
                        "settings": settings, "scans": _ids(datalist), "split_seed": profile.split_seed})
    return {
        "cell": asdict(cell) | {"id": cell.id, "deps": list(cell.deps)},
        "bundle": bundle_dir.name,
        "config_files": [str(f) for f in config_files],
        "meta_file": str(_meta_file(bundle_dir)),
        "workflow_type": "train" if cell.kind == "train" else "infer",
        "cell_dir": str(cell_dir),
        "settings": settings,
        "paths": paths,
        "datalist": datalist,
        "fingerprint": fingerprint,
        "profile": profile.name,
        "seed": profile.seed,
        "split_seed": profile.split_seed,
        "threads": None,
    }


def plan(
    profile: str | Profile,
    data_dir,
    output_dir,
    sources=None,
    targets=None,
    strategies=None,
    budgets=None,
    with_oracle: bool = False,
    shard=None,
    bundles_dir=None,
) -> Plan:
    """Validate everything and decide every cell's datalist and overrides; raises UsageError, writes nothing."""
    sel = resolve_selection(profile, sources, targets, strategies, budgets)
    prof: Profile = sel["profile"]
    shard = parse_shard(shard)
    data_dir = Path(str(data_dir)).absolute()
    out = Path(str(output_dir)).absolute()
    bundles = Path(bundles_dir).absolute() if bundles_dir else BUNDLES
    if not data_dir.is_dir():
        raise UsageError(f"data dir {data_dir} does not exist")
    if out.exists() and not out.is_dir():
        raise UsageError(f"output dir {out} exists and is not a folder")
    try:
        scans = index_dataset(data_dir)
    except ValueError as e:  # DatasetError
        raise UsageError(str(e)) from None
    present = {s.domain for s in scans}
    needed = set(sel["sources"]) | set(sel["targets"])
    missing = [d for d in DOMAINS if d in needed and d not in present]
    if missing:
        raise UsageError(f"{data_dir} has no scans of {', '.join(missing)}")
    grid = build_grid(sel["sources"], sel["targets"], sel["strategies"], sel["budgets"], with_oracle,
                      in_domain=prof.n_val > 0)
    specs = {}
    for cell in grid:
        try:
            datalist = _cell_datalist(cell, scans, prof)
        except ValueError as e:
            raise UsageError(f"{cell.id}: {e}") from None
        specs[cell.id] = _spec(cell, datalist, prof, data_dir, out, bundles)
    p = Plan(prof, data_dir, out, bundles, grid, specs, sel, bool(with_oracle), shard, scans)
    conflicts = []
    for cell in grid:
        marker = p.cell_dir(cell.id) / DONE
        if marker.is_file() and not p.is_done(cell.id):
            conflicts.append(cell.id)
    if conflicts:
        raise UsageError(
            f"{out} holds {len(conflicts)} finished cell(s) made with other settings or scans (e.g. "
            f"cells/{conflicts[0]}); use another --output_dir or delete them"
        )
    return p


def check_scans(p: Plan, progress: bool = True) -> int:
    """Read and validate every scan the unfinished cells of this run will use, before any cell starts.

    A corrupt file or an empty mask found here stops the run with one line naming it (UsageError) instead of
    failing cells one by one hours later. Finished cells' scans are not read again. Returns the number checked.
    """
    from monai.transforms import Compose
    from tqdm import tqdm

    from custom.transforms import InputError, checks

    pairs: dict[str, str] = {}
    for cell in p.mine():
        if p.is_done(cell.id):
            continue
        for items in p.specs[cell.id]["datalist"].values():
            for item in items if isinstance(items, list) else []:
                pairs.setdefault(str(item["image"]), str(item["label"]))
    check = Compose(checks(["image", "label"]))
    for image, label in tqdm(sorted(pairs.items()), desc="checking scans", unit="scan", disable=not progress,
                             dynamic_ncols=True, file=sys.stderr):
        try:
            check({"image": image, "label": label})
        except Exception as e:  # Compose wraps the transform's own error
            error = e
            while error is not None and not isinstance(error, InputError):
                error = error.__cause__
            if error is None:
                raise
            raise UsageError(str(error)) from None
    return len(pairs)


def assembly(p: Plan) -> Plan:
    """The plan the tables are assembled from: this plan's cells plus every other cell of the profile's full grid
    that is finished in the same output dir with the same settings (an earlier run with other subset flags)."""
    present = {s.domain for s in p.scans}
    mine = {c.id for c in p.grid}
    full = build_grid([d for d in DOMAINS if d in present], [d for d in DOMAINS if d in present], STRATEGIES,
                      ALL_BUDGETS, with_oracle=True, in_domain=p.profile.n_val > 0)
    specs = dict(p.specs)
    for cell in full:
        if cell.id in mine or not (p.cell_dir(cell.id) / DONE).is_file():
            continue
        try:
            datalist = _cell_datalist(cell, p.scans, p.profile)
        except ValueError:
            continue
        specs[cell.id] = _spec(cell, datalist, p.profile, p.data_dir, p.output_dir, p.bundles_dir)
    extra = {c.id for c in full if c.id not in mine and c.id in specs}
    probe = Plan(p.profile, p.data_dir, p.output_dir, p.bundles_dir, [], specs, p.selection, p.with_oracle, None,
                 p.scans)
    extra = {i for i in extra if probe.is_done(i)}
    if not extra:
        return replace(p, shard=None)
    grid = [c for c in full if c.id in mine or c.id in extra]
    grid += [c for c in p.grid if c.id not in {g.id for g in grid}]
    used = [c for c in grid if c.id in mine or c.id in extra]
    pick = lambda values, order: tuple(v for v in order if v in values)  # noqa: E731
    selection = {
        "profile": p.profile,
        "sources": pick({c.source for c in used if c.role != "oracle"} | set(p.selection["sources"]), DOMAINS),
        "targets": pick({c.target for c in used if c.role in STRATEGIES or (c.role == "baseline" and c.target
                         and c.target != c.source)} | set(p.selection["targets"]), DOMAINS),
        "strategies": pick({c.role for c in used if c.role in STRATEGIES} | set(p.selection["strategies"]),
                           STRATEGIES),
        "budgets": pick({c.n_slices for c in used if c.n_slices} | set(p.selection["budgets"]), ALL_BUDGETS),
    }
    with_oracle = p.with_oracle or any(c.role == "oracle" for c in used if c.id in extra)
    return Plan(p.profile, p.data_dir, p.output_dir, p.bundles_dir, grid, specs, selection, with_oracle, None,
                p.scans)


# ---------------------------------------------------------------------------------------------------------------
# running one cell (in this process, a worker process or a Ray worker)
# ---------------------------------------------------------------------------------------------------------------


def _atomic_write(path: Path, text: str) -> None:
    from custom.checkpoints import atomic_write_text

    atomic_write_text(path, text)


def _write_json(path: Path, obj) -> None:
    _atomic_write(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for package in ("torch", "monai", "numpy", "scipy", "pytorch-ignite", "nibabel"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out


def _device_description() -> str:
    import torch

    if torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        where = f", CUDA_VISIBLE_DEVICES={visible}" if visible is not None else ""
        return f"cuda ({torch.cuda.get_device_name(0)}{where})"
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


@contextlib.contextmanager
def _captured(path: Path):
    """Send everything a bundle run prints or logs to ``path`` instead of the console."""
    with open(path, "a", buffering=1) as f:
        swapped = []

        def loggers():
            yield logging.getLogger()
            yield from (lg for lg in list(logging.root.manager.loggerDict.values()) if isinstance(lg, logging.Logger))

        seen = set()
        for lg in loggers():
            for h in lg.handlers:
                console = isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
                if console and id(h) not in seen:
                    seen.add(id(h))
                    swapped.append((h, h.stream))
                    h.setStream(f)
        root = logging.getLogger()
        handler = logging.StreamHandler(f)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
        old_level = root.level
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f), warnings.catch_warnings():
                warnings.simplefilter("default")
                yield f
        finally:
            root.removeHandler(handler)
            root.setLevel(old_level)
            for h, stream in swapped:
                h.setStream(stream)
            for lg in loggers():  # handlers created during the run captured the redirected stream
                for h in lg.handlers:
                    if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is f:
                        h.setStream(sys.stdout)


def _effective(workflow, kind: str) -> dict:
    from custom.precision import name

    out = {}
    if "compute_dtype" in workflow.parser:  # what --precision resolved to on this device
        out["compute_dtype"] = name(workflow.parser.get_parsed_content("compute_dtype"))
    for key in KNOBS[kind]:
        try:
            if key in workflow.parser:
                value = workflow.parser.get_parsed_content(key)
                out[key] = value if isinstance(value, bool | int | float | str | list | tuple) else str(value)
        except Exception as e:  # a knob some bundle version lacks must not fail the run
            out[key] = f"<unresolved: {type(e).__name__}>"
    return out


def _prepare(cell_dir: Path, spec: dict) -> bool:
    """Empty an unfinished cell's folder; keep epoch checkpoints of the same plan (returns True: can resume)."""
    plan_file = cell_dir / PLAN
    same = False
    if plan_file.is_file():
        try:
            same = json.loads(plan_file.read_text()).get("fingerprint") == spec["fingerprint"]
        except (OSError, ValueError):
            same = False
    keep = {"checkpoints"} if same and spec["cell"]["kind"] == "train" else set()
    if cell_dir.is_dir():
        for child in cell_dir.iterdir():
            if child.name in keep:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    cell_dir.mkdir(parents=True, exist_ok=True)
    checkpoints = cell_dir / "checkpoints"
    return checkpoints.is_dir() and any(checkpoints.glob("*.pt"))


def run_cell(spec: dict) -> dict:
    """Run one cell's bundle and mark it done; returns the ``done.json`` record.

    A finished cell (``done.json`` with this fingerprint) is returned as is. Anything else in the folder is removed
    first (training keeps its epoch checkpoints when the plan is unchanged, and resumes from the newest).
    """
    cell_dir = Path(spec["cell_dir"])
    marker = cell_dir / DONE
    if marker.is_file():
        record = json.loads(marker.read_text())
        if record.get("fingerprint") == spec["fingerprint"]:
            return record
    if spec.get("threads"):
        import torch

        torch.set_num_threads(int(spec["threads"]))
    resume = _prepare(cell_dir, spec)
    _write_json(cell_dir / PLAN, {k: v for k, v in spec.items() if k != "datalist"})
    from custom.splits import write_datalist

    write_datalist(spec["datalist"], cell_dir / "datalist.json")
    kind = spec["cell"]["kind"]
    overrides = {**spec["settings"], **spec["paths"]}
    if kind == "train":
        overrides["resume"] = resume
    started, t0, cpu0 = _now(), time.perf_counter(), time.process_time()
    if "shipped_weights" in spec["settings"]:
        return _use_shipped(spec, started)
    try:
        with _captured(cell_dir / LOG):
            from monai.bundle import ConfigWorkflow

            config = spec["config_files"]
            workflow = ConfigWorkflow(
                config_file=config if len(config) > 1 else config[0],
                meta_file=spec["meta_file"],
                logging_file=False,
                workflow_type=spec["workflow_type"],
                **overrides,
            )
            workflow.initialize()
            effective = _effective(workflow, kind)
            losses = _EpochLosses().attach(workflow.parser.get_parsed_content("train#trainer")) if (
                kind == "train") else None
            workflow.run()
            extra, dataset = {}, None
            if kind == "train":
                dataset = workflow.parser.get_parsed_content("train#dataset")
                extra["train_slices"] = int(getattr(dataset, "n_slices", -1))
                extra["train_scans"] = len(spec["datalist"].get("training", []))
                extra["epoch_losses"] = [round(v, 6) for v in losses.values]
            workflow.finalize()
            del workflow, dataset
            gc.collect()  # engines and handlers hold reference cycles: free the model and data before the next cell
        outputs = _check_outputs(spec)
    except BaseException:
        _atomic_write(cell_dir / ERROR, traceback.format_exc())
        raise
    shutil.rmtree(cell_dir / "checkpoints", ignore_errors=True)  # only needed to resume an unfinished run
    record = {
        "cell": spec["cell"],
        "fingerprint": spec["fingerprint"],
        "profile": spec["profile"],
        "bundle": spec["bundle"],
        "config_files": [Path(f).name for f in spec["config_files"]],
        "overrides": overrides,
        "effective": effective,
        "seed": spec["seed"],
        "split_seed": spec["split_seed"],
        **extra,
        "outputs": outputs,
        "resumed": bool(resume),
        "started": started,
        "finished": _now(),
        "seconds": round(time.perf_counter() - t0, 2),
        "cpu_seconds": round(time.process_time() - cpu0, 2),
        "device": _device_description(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "versions": versions(),
    }
    _write_json(marker, record)  # last: the cell is finished only now
    return record


class _EpochLosses:
    """Mean training loss of every epoch (was the loss still falling when training stopped?)."""

    def __init__(self):
        self.values: list[float] = []
        self._sum, self._n = 0.0, 0

    def attach(self, trainer) -> _EpochLosses:
        from ignite.engine import Events

        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._epoch)
        return self

    def _iteration(self, engine) -> None:
        output = engine.state.output
        loss = output[0]["loss"] if isinstance(output, list) else output["loss"]
        self._sum, self._n = self._sum + float(loss), self._n + 1

    def _epoch(self, engine) -> None:
        self.values.append(self._sum / max(self._n, 1))
        self._sum, self._n = 0.0, 0


def _use_shipped(spec: dict, started: str) -> dict:
    """A source-training cell the profile replaces by shipped weights: copy them in and mark the cell done."""
    cell_dir, shipped = Path(spec["cell_dir"]), spec["settings"]["shipped_weights"]
    target = Path(spec["paths"]["final_model"])
    from custom.checkpoints import atomic_write, sha256

    atomic_write(target, lambda tmp: shutil.copyfile(shipped, tmp))

    if sha256(target) != spec["settings"]["sha256"]:
        raise RuntimeError(f"{shipped}: changed while it was copied to {target}")
    record = {
        "cell": spec["cell"], "fingerprint": spec["fingerprint"], "profile": spec["profile"],
        "bundle": spec["bundle"], "shipped_weights": shipped, "sha256": spec["settings"]["sha256"],
        "effective": {}, "seed": spec["seed"], "split_seed": spec["split_seed"], "outputs": {"model": target.name},
        "resumed": False, "started": started, "finished": _now(), "seconds": 0.0, "cpu_seconds": 0.0,
        "device": "", "host": socket.gethostname(), "pid": os.getpid(), "versions": versions(),
    }
    _write_json(cell_dir / DONE, record)
    return record


def _check_outputs(spec: dict) -> dict:
    paths = spec["paths"]
    if spec["cell"]["kind"] == "train":
        model = Path(paths["final_model"])
        if not model.is_file():
            raise RuntimeError(f"{spec['cell']['id']}: training finished without writing {model}")
        out = {"model": model.name}
        if "adapter_path" in paths and Path(paths["adapter_path"]).is_file():
            out["adapter"] = Path(paths["adapter_path"]).name
        return out
    metrics = Path(paths["metrics_csv"])
    expected = {e["id"] for e in spec["datalist"]["test"]}
    rows = read_metrics(metrics)
    got = {r["id"] for r in rows}
    if got != expected:
        raise RuntimeError(f"{spec['cell']['id']}: {metrics} has scans {sorted(got)}, expected {sorted(expected)}")
    return {"metrics": metrics.name, "scans": len(rows)}


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        raise RuntimeError(f"{path}: no metrics written")
    with open(path) as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------------------------
# executing the grid: in-process, N spawned processes, or Ray tasks
# ---------------------------------------------------------------------------------------------------------------


class _SerialExecutor:
    """Runs each submitted call at once, in this process; returns a finished Future."""

    capacity = 1

    def __init__(self, threads: int | None = None):
        self.threads = threads

    def submit(self, fn, spec) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn({**spec, "threads": self.threads}))
        except Exception as e:  # noqa: BLE001 - reported by the scheduler
            future.set_exception(e)
        return future

    def shutdown(self) -> None:
        pass


def _init_worker(counter, devices: tuple[str, ...], threads: int) -> None:
    """Runs first in every spawned worker: pick its GPU (round-robin) before torch is imported."""
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    if devices:
        os.environ["CUDA_VISIBLE_DEVICES"] = devices[index % len(devices)]
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)


class _PoolExecutor:
    def __init__(self, workers: int, devices: tuple[str, ...], threads: int | None = None):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        ctx = multiprocessing.get_context("spawn")
        self.threads = threads or max(1, (os.cpu_count() or 1) // workers)
        self.capacity = workers
        self.pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                        initargs=(ctx.Value("i", 0), devices, self.threads))

    def submit(self, fn, spec) -> Future:
        return self.pool.submit(fn, {**spec, "threads": self.threads})

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class _RayExecutor:
    def __init__(self, address: str, cpus_per_cell: float = 1, gpus_per_cell: float | None = None,
                 threads: int | None = None):
        import ray

        if not ray.is_initialized():
            ray.init(address=address, log_to_driver=False)
        resources = ray.cluster_resources()
        if gpus_per_cell is None:
            gpus_per_cell = 1 if resources.get("GPU", 0) >= 1 else 0
        self.threads = threads or max(1, int(cpus_per_cell))
        self.capacity = max(1, int(resources.get("CPU", 1) // cpus_per_cell))
        if gpus_per_cell:
            self.capacity = min(self.capacity, max(1, int(resources.get("GPU", 1) // gpus_per_cell)))
        self.remote = ray.remote(run_cell).options(num_cpus=cpus_per_cell, num_gpus=gpus_per_cell, max_retries=0)

    def submit(self, fn, spec) -> Future:
        return self.remote.remote({**spec, "threads": self.threads}).future()

    def shutdown(self) -> None:
        pass


def _executor(workers: int, devices: tuple[str, ...], ray_address: str | None, threads: int | None = None):
    """Torch threads per cell: ``threads``, else the CPU cores divided among the workers (one process per cell
    and one thread each avoids thread oversubscription, which slows small convolutions down by orders of
    magnitude on a busy machine); in-process runs keep torch's default unless ``threads`` is given."""
    if ray_address:
        return _RayExecutor(ray_address, threads=threads)
    if workers > 1:
        return _PoolExecutor(workers, devices, threads)
    return _SerialExecutor(threads)


@dataclass
class Outcome:
    ran: list[str] = field(default_factory=list)
    skipped_done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    blocked: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0


def execute(
    p: Plan,
    workers: int = 1,
    devices: Sequence[str] = (),
    ray_address: str | None = None,
    wait_s: float = 0.0,
    progress: bool = True,
    executor=None,
    poll_s: float = 5.0,
    threads: int | None = None,
) -> Outcome:
    """Run this plan's unfinished cells, each after the cells it depends on; failures do not stop the others.

    A dependency outside this run (another shard's cell) is waited for up to ``wait_s`` seconds (polling its
    ``done.json``); cells still blocked then are reported, not run.
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    outcome = Outcome()
    mine = p.mine()
    todo = []
    for cell in mine:
        if p.is_done(cell.id):
            outcome.skipped_done.append(cell.id)
        else:
            todo.append(cell)
    if not todo:
        outcome.wall_seconds = time.perf_counter() - t0
        return outcome
    executor = executor or _executor(workers, tuple(devices), ray_address, threads)
    in_run = {c.id for c in todo}
    done = {c.id for c in p.grid if c.id not in in_run and p.is_done(c.id)}
    pending: list[Cell] = list(todo)
    running: dict[Future, Cell] = {}
    deadline = time.monotonic() + float(wait_s)
    bar = tqdm(total=len(todo), unit="cell", disable=not progress, dynamic_ncols=True, file=sys.stderr)
    try:
        while pending or running:
            for cell in list(pending):
                if len(running) >= executor.capacity:
                    break
                bad = [d for d in cell.deps if d in outcome.failed or d in outcome.blocked]
                if bad:
                    pending.remove(cell)
                    outcome.blocked.append(cell.id)
                    bar.update(1)
                    continue
                if all(d in done for d in cell.deps):
                    pending.remove(cell)
                    bar.set_postfix_str(cell.id, refresh=True)
                    running[executor.submit(run_cell, p.specs[cell.id])] = cell
            if not running:
                if not pending:
                    break
                foreign = {d for c in pending for d in c.deps if d not in in_run and d not in done}
                newly = {d for d in foreign if p.is_done(d)}
                if newly:
                    done |= newly
                    continue
                if time.monotonic() < deadline:
                    time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
                    continue
                outcome.blocked += [c.id for c in pending]
                bar.update(len(pending))
                pending.clear()
                break
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in finished:
                cell = running.pop(future)
                error = future.exception()
                if error is None:
                    done.add(cell.id)
                    outcome.ran.append(cell.id)
                else:
                    outcome.failed[cell.id] = f"{type(error).__name__}: {error}"
                    bar.write(f"reproduce: cell {cell.id} failed: {type(error).__name__}: {error} "
                              f"(see {p.cell_dir(cell.id) / ERROR})")
                bar.update(1)
    finally:
        bar.close()
        executor.shutdown()
    outcome.wall_seconds = time.perf_counter() - t0
    return outcome


# ---------------------------------------------------------------------------------------------------------------
# results: tables, figures, summary, manifest
# ---------------------------------------------------------------------------------------------------------------

RESULT_COLUMNS = ("source", "target", "strategy", "n_slices", "train_slices", "last_epoch_loss", "fold", "id",
                  "domain", "surface_dice", "dice")


def collect_rows(p: Plan) -> list[dict]:
    """One row per finished evaluation cell x test scan, in grid order."""
    rows = []
    for cell in p.grid:
        if cell.kind != "eval" or not p.is_done(cell.id):
            continue
        train_slices, last_loss = "", ""
        train_done = p.cell_dir(cell.train_id) / DONE
        if train_done.is_file():
            record = json.loads(train_done.read_text())
            train_slices = record.get("train_slices", "") if cell.role in STRATEGIES else ""
            last_loss = (record.get("epoch_losses") or [""])[-1]
        for r in read_metrics(p.cell_dir(cell.id) / "metrics.csv"):
            rows.append({
                "source": cell.source,
                "target": cell.target,
                "strategy": cell.role,
                "n_slices": cell.n_slices if cell.n_slices is not None else "",
                "train_slices": train_slices,
                "last_epoch_loss": last_loss,
                "fold": cell.fold if cell.fold is not None else "",
                "id": r["id"],
                "domain": r.get("domain", ""),
                "surface_dice": r["surface_dice"],
                "dice": r["dice"],
            })
    return rows


def _csv_text(rows: Iterable[dict], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _num(value, digits: int = 6) -> str:
    """A number for a CSV cell: empty when missing or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.{digits}f}"


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "–"
    return f"{p:.3g}"


def _table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _train_slices(p: Plan) -> dict[int, list[int]]:
    """Per budget: the slices the finished fine-tunings actually offered (sum over their training scans)."""
    out: dict[int, list[int]] = {}
    for cell in p.grid:
        if cell.kind == "train" and cell.role in STRATEGIES and p.is_done(cell.id):
            n = json.loads((p.cell_dir(cell.id) / DONE).read_text()).get("train_slices")
            if isinstance(n, int) and n >= 0:
                out.setdefault(cell.n_slices, []).append(n)
    return out


def _budget_label(n: int, offered: dict[int, list[int]]) -> str:
    got = sorted(set(offered.get(n, [])))
    if not got:
        return str(n)
    actual = str(got[0]) if len(got) == 1 else f"{got[0]}–{got[-1]}"
    return f"{n}" if actual == str(n) else f"{n} ({actual} offered)"


def _tables(p: Plan, rows: list[dict]) -> dict:
    from custom import stats

    strategies = p.selection["strategies"]
    pairs = stats.pair_results(rows, strategies)
    gap_tests = stats.gap_sign_tests(rows, pairs)
    return {
        "gap_tests": gap_tests,
        "gap_wins": stats.gap_win_counts(pairs, gap_tests, strategies),
        "matrix": stats.baseline_matrix(rows),
        "dice_matrix": stats.baseline_matrix(rows, metric="dice"),
        "means": stats.strategy_means(rows),
        "pairs": pairs,
        "wins": stats.win_counts(pairs, strategies),
        "gaps": stats.gap_closed(rows),
        "gap_summary": stats.gap_closed_summary(stats.gap_closed(rows)),
    }


def _diagonal(p: Plan) -> str | None:
    """What the matrix shows on its diagonal: ``oracle``, ``in-domain`` (held-out validation scans) or None."""
    return "oracle" if p.with_oracle else "in-domain" if p.profile.n_val > 0 else None


def _matrix_columns(p: Plan) -> list[str]:
    sources = set(p.selection["sources"]) if _diagonal(p) else set()
    return [d for d in DOMAINS if d in set(p.selection["targets"]) | sources]


def _matrix_section(p: Plan, t: dict) -> list[str]:
    sources = p.selection["sources"]
    columns = _matrix_columns(p)
    rows = []
    for s in sources:
        rows.append([f"**{SHORT[s]}**"] + [
            (f"**{_fmt(t['matrix'].get((s, c)))}**" if s == c else _fmt(t["matrix"].get((s, c)))) for c in columns
        ])
    diag = {
        "oracle": "oracle (3-fold cross-validation inside the domain) on the diagonal",
        "in-domain": f"on the diagonal (in-domain reference) the source model on its own {p.profile.n_val} held-out "
        "validation scan(s); --oracle puts the 3-fold cross-validation oracle there instead",
        None: "no in-domain reference (run with --oracle for the diagonal)",
    }[_diagonal(p)]
    return [
        "## Baseline: mean surface Dice of each source model on every scan of each target",
        "",
        f"Rows: source (training) domain; columns: target domain; {diag}.",
        "",
        _table(["src \\ tgt", *(SHORT[c] for c in columns)], rows),
        "",
    ]


def _means_section(p: Plan, t: dict, offered: dict) -> list[str]:
    budgets = p.selection["budgets"]
    labels = [_budget_label(n, offered) for n in budgets]
    rows = []
    names = [("baseline", "baseline (no fine-tuning)")]
    names += [(s, STRATEGY_NAMES[s]) for s in p.selection["strategies"]]
    names += [("oracle", "oracle")] if p.with_oracle else []
    n_pairs = 0
    for key, name in names:
        cells = []
        for n in budgets:
            m = t["means"].get((key, n))
            if m is None:
                cells.append("–")
                continue
            n_pairs = max(n_pairs, m["pairs"]) if key in STRATEGIES else n_pairs
            cells.append(f"{_fmt(m['mean'])} ± {_fmt(m['std'])}" if m["pairs"] > 1 else _fmt(m["mean"]))
        rows.append([name, *cells])
    return [
        "## Mean surface Dice per strategy and slice budget",
        "",
        f"Mean over source -> target pairs (± standard deviation over pairs; {n_pairs} pair(s)) of each pair's mean "
        "over its target test scans. Baseline and oracle rows: the same test scans as the fine-tuned models. Column "
        "headers: nominal budget of docs/PROTOCOL.md (and the slices the annotated scans actually offered at its slice "
        "interval, when different).",
        "",
        _table(["strategy", *labels], rows),
        "",
    ]


def _wins_section(p: Plan, t: dict, offered: dict) -> list[str]:
    strategies = p.selection["strategies"]
    if len(strategies) < 2:
        return ["## Wins", "", "Needs at least two strategies.", ""]
    gap = p.with_oracle
    rows = []
    for n, c in t["wins"].items():
        sig = [" / ".join(str(c[f"{s}@p<{a:g}"]) for s in strategies) for a in (0.1, 0.05)]
        g = t["gap_wins"].get(n, {})
        gap_sig = [" / ".join(str(g.get(f"{s}@p<{a:g}", 0)) for s in strategies) for a in (0.1, 0.05)]
        rows.append([_budget_label(n, offered), c["pairs"], *(c[s] for s in strategies), c["ties"],
                     *(gap_sig if gap else []), *sig])
    short = " / ".join(s for s in strategies)
    gap_head = [f"gap closed p<0.1 ({short})", f"gap closed p<0.05 ({short})"] if gap else []
    lines = [
        "## Wins per budget",
        "",
        "Per (pair, budget) the strategy with the highest mean surface Dice wins (equal top means: a tie). "
        "Significance: exact two-sided sign test of the winner against the runner-up over the pair's test scans "
        "(paired by scan; [D] used p < 0.1, [M] p < 0.05), on the authors' quantity, the per-scan gap closed "
        "(ft − base) / (oracle − base) (`gap closed` columns; needs `--oracle`), and on the raw per-scan surface "
        "Dice (`sDice` columns). They differ only on scans where the oracle is below the baseline.",
        "",
        _table(["slices", "pairs", *strategies, "ties", *gap_head, f"sDice p<0.1 ({short})",
                f"sDice p<0.05 ({short})"], rows),
        "",
    ]
    most = max((r.n_scans for r in t["pairs"]), default=0)
    if 0 < most < 10:
        lines += [f"With at most {most} test scans per pair the smallest p-value a sign test can reach is "
                  f"{min(1.0, 2 / 2**most):.3g}: significance needs more test scans (CC359 has about 59 per target).",
                  ""]
    if len(t["pairs"]) <= 60:
        prow = []
        for r, gt in zip(t["pairs"], t["gap_tests"], strict=True):
            means = " / ".join(_fmt(r.means.get(s)) for s in strategies)
            prow.append([_budget_label(r.n_slices, offered), f"{SHORT[r.source]} -> {SHORT[r.target]}", means,
                         r.winner or "tie", r.runner_up or "–",
                         *([_fmt_p(gt.p if gt else None)] if gap else []),
                         f"{r.test.n_plus}:{r.test.n_minus}:{r.test.n_ties}" if r.test else "–",
                         _fmt_p(r.test.p if r.test else None), r.n_scans])
        lines += [
            "Per pair (sign test counts on the surface Dice: scans where the winner is better : worse : equal):",
            "",
            _table(["slices", "pair", f"mean sDice ({short})", "winner", "runner-up",
                    *(["p (gap closed)"] if gap else []), "+:-:=", "p (sDice)", "scans"], prow),
            "",
        ]
    else:
        lines += ["Per pair: see `wins.csv`.", ""]
    return lines


def _gap_section(p: Plan, t: dict, offered: dict) -> list[str]:
    head = ["## Gap closed", ""]
    if not p.with_oracle:
        return head + ["(sDice_ft − sDice_base) / (sDice_oracle − sDice_base) needs the oracle: rerun with "
                       "`--oracle` (adds 3-fold cross-validation in every domain involved).", ""]
    budgets = p.selection["budgets"]
    rows = []
    for s in p.selection["strategies"]:
        cells = []
        for n in budgets:
            g = t["gap_summary"].get((s, n))
            defined = g is not None and g["pairs"]
            cells.append(f"{_fmt(g['mean'], 2)} (median {_fmt(g['median'], 2)})" if defined else "–")
        rows.append([STRATEGY_NAMES[s], *cells])
    undefined = sum(g["undefined"] for g in t["gap_summary"].values())
    note = f" {undefined} (pair, budget, strategy) value(s) undefined (oracle not above baseline)." if undefined else ""
    return head + [
        "Mean (median) over pairs of (sDice_ft − sDice_base) / (sDice_oracle − sDice_base), each term over the "
        f"fine-tuned model's test scans; per pair in `gap_closed.csv`.{note}",
        "",
        _table(["strategy", *(_budget_label(n, offered) for n in budgets)], rows),
        "",
    ]


def _claim_section(p: Plan, t: dict) -> list[str]:
    strategies = p.selection["strategies"]
    head = ["## First layers vs last layers at small budgets", ""]
    if not {"first", "last"} <= set(strategies):
        return head + ["Needs both the first and the last strategy.", ""]
    small = [n for n in p.selection["budgets"] if n <= SMALL_BUDGET]
    if not small:
        return head + [f"No budget of at most {SMALL_BUDGET} slices was run.", ""]
    first_better = last_better = equal = 0
    firsts, lasts = [], []
    for r in t["pairs"]:
        if r.n_slices not in small or "first" not in r.means or "last" not in r.means:
            continue
        f, la = r.means["first"], r.means["last"]
        firsts.append(f)
        lasts.append(la)
        first_better += f > la
        last_better += la > f
        equal += f == la
    total = first_better + last_better + equal
    if not total:
        return head + ["No finished (pair, budget) has both strategies yet.", ""]
    mf, ml = sum(firsts) / len(firsts), sum(lasts) / len(lasts)
    verdict = (
        "first-layer fine-tuning BEATS last-layer fine-tuning" if first_better > last_better and mf > ml
        else "last-layer fine-tuning BEATS first-layer fine-tuning" if last_better > first_better and ml > mf
        else "neither strategy consistently beats the other"
    )
    budgets = ", ".join(map(str, small))
    lines = head + [
        f"Budgets of at most {SMALL_BUDGET} slices ({budgets}), {total} (pair, budget) comparison(s): first layers "
        f"have the higher mean surface Dice in {first_better}, last layers in {last_better}, equal in {equal}; "
        f"mean over them: first {mf:.3f} vs last {ml:.3f}. On this data, {verdict} at small budgets"
        + (f" (only {total} comparisons: indicative, not conclusive)." if total < 10 else "."),
    ]
    if "full" in strategies:
        wins = {s: sum(c[s] for n, c in t["wins"].items() if n in small) for s in strategies}
        lines.append("Wins among all strategies at these budgets: "
                     + ", ".join(f"{STRATEGY_NAMES[s]} {wins[s]}" for s in strategies) + ".")
    return lines + [""]


def _header(p: Plan, outcome: Outcome | None, cell_seconds: float) -> list[str]:
    prof = p.profile
    n_done = sum(p.is_done(c.id) for c in p.grid)
    per_domain = {d: sum(s.domain == d for s in p.scans) for d in DOMAINS}
    lines = [
        f"# Reproduction of Shirokikh et al. (2020) — profile `{prof.name}`",
        "",
        f"Profile `{prof.name}`: {prof.description}.",
        "",
    ]
    changes = shortened(prof)
    if changes:
        lines += ["What this profile changes with respect to the authors' protocol (docs/PROTOCOL.md):", ""]
        lines += [f"- {s}" for s in changes] + [""]
    lines += ["What stays different from the authors' code in every profile, and why:", ""]
    lines += [f"- {s}" for s in REMAINING_DIFFERENCES] + [""]
    sel = p.selection
    lines += [
        f"- data: {sum(per_domain.values())} scans ("
        + ", ".join(f"{SHORT[d]} {n}" for d, n in per_domain.items()) + ")",
        f"- sources: {', '.join(sel['sources'])}; targets: {', '.join(sel['targets'])}; strategies: "
        f"{', '.join(sel['strategies'])}; budgets: {', '.join(map(str, sel['budgets']))}; oracle: "
        f"{'yes' if p.with_oracle else 'no'}",
        f"- split seed {prof.split_seed:#x}, training seed {prof.seed}; cells finished: {n_done} of {len(p.grid)}; "
        f"sum of cell run times {cell_seconds / 60:.1f} min"
        + (f"; this invocation {outcome.wall_seconds / 60:.1f} min" if outcome else ""),
        *_precision_and_loss_lines(p),
        "- files: `results.csv` (one row per run x test scan), `wins.csv`, `gap_closed.csv`, `manifest.json`, "
        "figures `baseline_matrix.png`, `sdice_vs_slices.png`, `wins.png`",
        "",
    ]
    return lines


def _precision_and_loss_lines(p: Plan) -> list[str]:
    """Which precision the cells ran in, and whether the fine-tuning losses had levelled off."""
    precisions, ratios = set(), []
    for cell in p.grid:
        if not p.is_done(cell.id):
            continue
        record = json.loads((p.cell_dir(cell.id) / DONE).read_text())
        if record.get("effective", {}).get("compute_dtype"):
            precisions.add(record["effective"]["compute_dtype"])
        losses = record.get("epoch_losses") or []
        if cell.role in STRATEGIES and len(losses) >= 2 and losses[-2] > 0:
            ratios.append(losses[-1] / losses[-2])
    lines = []
    if precisions:
        lines.append(f"- precision: {', '.join(sorted(precisions))} (the bundles' `--precision {p.profile.precision}`)")
    if ratios:
        ratios.sort()
        lines.append(f"- fine-tuning loss, last epoch / the one before: median {ratios[len(ratios) // 2]:.2f}, range "
                     f"{ratios[0]:.2f}-{ratios[-1]:.2f} over {len(ratios)} cells (per cell: `last_epoch_loss` in "
                     "`results.csv`, `epoch_losses` in `manifest.json`)")
    return lines


def _figures(p: Plan, t: dict, offered: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    def save(fig, path: Path) -> Path:
        from custom.checkpoints import atomic_write

        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format=path.suffix.lstrip(".") or "png"))
        plt.close(fig)
        return path

    written = []
    # 1. baseline matrix
    sources = list(p.selection["sources"])
    columns = _matrix_columns(p)
    grid = np.full((len(sources), len(columns)), np.nan)
    for i, s in enumerate(sources):
        for j, c in enumerate(columns):
            grid[i, j] = t["matrix"].get((s, c), np.nan)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(columns) + 2.4), 0.8 * len(sources) + 2.2))
    im = ax.imshow(np.ma.masked_invalid(grid), vmin=0, vmax=1, cmap="viridis")
    for i in range(len(sources)):
        for j in range(len(columns)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center",
                        color="black" if grid[i, j] > 0.6 else "white", fontweight="bold" if sources[i] == columns[j]
                        else "normal")
    ax.set_xticks(range(len(columns)), [SHORT[c] for c in columns])
    ax.set_yticks(range(len(sources)), [SHORT[s] for s in sources])
    ax.set_xlabel("target (test) domain")
    ax.set_ylabel("source (training) domain")
    diagonal = {"oracle": "\ndiagonal: oracle (3-fold CV)", "in-domain": "\ndiagonal: held-out scans of the source",
                None: ""}
    ax.set_title("Baseline surface Dice" + diagonal[_diagonal(p)], fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046)
    written.append(save(fig, out / "baseline_matrix.png"))

    # 2. surface Dice vs slices
    budgets = list(p.selection["budgets"])
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colours = {"first": "tab:blue", "last": "tab:orange", "full": "tab:green", "baseline": "grey", "oracle": "black"}
    for key in ("baseline", *p.selection["strategies"], *(("oracle",) if p.with_oracle else ())):
        xs, ys, lo, hi = [], [], [], []
        for n in budgets:
            m = t["means"].get((key, n))
            if m and not math.isnan(m["mean"]):
                xs.append(n)
                ys.append(m["mean"])
                lo.append(m["mean"] - m["std"])
                hi.append(m["mean"] + m["std"])
        if not xs:
            continue
        styles = {"baseline": dict(ls="--", marker=""), "oracle": dict(ls=":", marker="")}
        style = styles.get(key, dict(ls="-", marker="o"))
        ax.plot(xs, ys, color=colours[key], label=STRATEGY_NAMES.get(key, key), **style)
        if key in STRATEGIES and len(xs) > 0:
            ax.fill_between(xs, lo, hi, color=colours[key], alpha=0.15, lw=0)
    ax.set_xscale("log")
    ax.set_xticks(budgets, [_budget_label(n, offered).replace(" offered", "") for n in budgets], fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("slice budget (nominal; slices offered in parentheses)")
    ax.set_ylabel("surface Dice (mean over pairs ± std)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.set_title("Fine-tuning on the target: surface Dice vs annotated slices")
    written.append(save(fig, out / "sdice_vs_slices.png"))

    # 3. wins per budget
    strategies = list(p.selection["strategies"])
    fig, ax = plt.subplots(figsize=(7.4, 3.8))
    x = np.arange(len(budgets))
    width = 0.8 / (len(strategies) + 1)
    n_pairs = max([1] + [t["wins"].get(n, {}).get("pairs", 0) for n in budgets])
    for k, s in enumerate([*strategies, "ties"]):
        offset = x + (k - len(strategies) / 2) * width
        counts = [t["wins"].get(n, {}).get(s, 0) for n in budgets]
        colour = colours.get(s, "lightgrey")
        bars = ax.bar(offset, counts, width, color=colour, alpha=0.45 if s != "ties" else 1.0,
                      label=STRATEGY_NAMES.get(s, s))
        if s != "ties":
            significant = [t["wins"].get(n, {}).get(f"{s}@p<0.1", 0) for n in budgets]
            ax.bar(offset, significant, width, color=colour, alpha=1.0, label="_nolegend_")
        ax.bar_label(bars, fontsize=7)
    ax.set_xticks(x, [_budget_label(n, offered).replace(" offered", "") for n in budgets], fontsize=8)
    ax.set_xlabel("slice budget (nominal; slices offered in parentheses)")
    ax.set_ylabel(f"wins (of {n_pairs} pair(s))")
    ax.set_ylim(0, n_pairs * 1.15)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title("Best strategy per pair (dark part: significant, sign test p < 0.1)", fontsize=10)
    written.append(save(fig, out / "wins.png"))
    return written


def _cell_records(p: Plan) -> dict[str, dict]:
    out = {}
    for cell in p.grid:
        if p.is_done(cell.id):
            r = json.loads((p.cell_dir(cell.id) / DONE).read_text())
            out[cell.id] = {k: r.get(k) for k in ("seconds", "cpu_seconds", "started", "finished", "device", "host",
                                                  "resumed", "fingerprint", "overrides", "effective", "seed",
                                                  "train_slices", "epoch_losses", "shipped_weights", "sha256")}
            out[cell.id]["status"] = "done"
        else:
            out[cell.id] = {"status": "failed" if (p.cell_dir(cell.id) / ERROR).is_file() else "pending",
                            "fingerprint": p.specs[cell.id]["fingerprint"]}
    return out


def write_manifest(p: Plan, argv: Sequence[str] | None = None, outcome: Outcome | None = None) -> Path:
    records = _cell_records(p)
    manifest = {
        "updated": _now(),
        "argv": list(argv) if argv is not None else None,
        "profile": asdict(p.profile),
        "selection": {k: v for k, v in p.selection.items() if k != "profile"},
        "oracle": p.with_oracle,
        "shard": list(p.shard) if p.shard else None,
        "data_dir": str(p.data_dir),
        "scans": len(p.scans),
        "seeds": {"training": p.profile.seed, "splits": p.profile.split_seed},
        "bundle_overrides": {k: profile_overrides(p.profile, k) for k in ("baseline", "finetune", "evaluate")},
        "differences_from_protocol": shortened(p.profile),
        "differences_from_authors_code": list(REMAINING_DIFFERENCES),
        "versions": versions(),
        "platform": {"python": sys.version.split()[0], "system": platform.platform(), "machine": platform.machine(),
                     "cpus": os.cpu_count(), "host": socket.gethostname()},
        "git_commit": _git_commit(),
        "invocation": None if outcome is None else {
            "ran": len(outcome.ran), "skipped_finished": len(outcome.skipped_done), "failed": outcome.failed,
            "blocked": outcome.blocked, "wall_seconds": round(outcome.wall_seconds, 1)},
        "cells": records,
        "cell_seconds_total": round(sum(r.get("seconds") or 0 for r in records.values()), 1),
        "cell_cpu_seconds_total": round(sum(r.get("cpu_seconds") or 0 for r in records.values()), 1),
    }
    path = p.output_dir / "manifest.json"
    _write_json(path, manifest)
    return path


def _git_commit() -> str | None:
    import subprocess

    try:
        result = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def report(p: Plan, outcome: Outcome | None = None) -> str:
    """Write results.csv, wins.csv, gap_closed.csv, the figures and summary.md; returns the summary text."""
    out = p.output_dir
    rows = collect_rows(p)
    _atomic_write(out / "results.csv", _csv_text(rows, RESULT_COLUMNS))
    t = _tables(p, rows)
    strategies = p.selection["strategies"]
    win_rows = [{"source": r.source, "target": r.target, "n_slices": r.n_slices, "n_scans": r.n_scans,
                 **{f"mean_{s}": _num(r.means.get(s)) for s in strategies}, "winner": r.winner or "tie",
                 "runner_up": r.runner_up or "", "n_plus": r.test.n_plus if r.test else "",
                 "n_minus": r.test.n_minus if r.test else "", "n_ties": r.test.n_ties if r.test else "",
                 "p": f"{r.test.p:.6g}" if r.test else "", "p_gap_closed": f"{g.p:.6g}" if g else ""}
                for r, g in zip(t["pairs"], t["gap_tests"], strict=True)]
    win_cols = ["source", "target", "n_slices", "n_scans", *(f"mean_{s}" for s in strategies), "winner",
                "runner_up", "n_plus", "n_minus", "n_ties", "p", "p_gap_closed"]
    _atomic_write(out / "wins.csv", _csv_text(win_rows, win_cols))
    gap_rows = [{**g, **{k: _num(g[k]) for k in ("base", "oracle", "ft", "gap")}} for g in t["gaps"]]
    _atomic_write(out / "gap_closed.csv", _csv_text(gap_rows, ["strategy", "source", "target", "n_slices", "base",
                                                               "oracle", "ft", "gap"]))
    offered = _train_slices(p)
    cell_seconds = 0.0
    for cell in p.grid:
        if p.is_done(cell.id):
            cell_seconds += json.loads((p.cell_dir(cell.id) / DONE).read_text()).get("seconds") or 0
    body = [*_matrix_section(p, t), *_means_section(p, t, offered), *_wins_section(p, t, offered),
            *_gap_section(p, t, offered), *_claim_section(p, t)]
    text = "\n".join([*_header(p, outcome, cell_seconds), *body])
    _atomic_write(out / "summary.md", text)
    _figures(p, t, offered, out)
    return text


def summary_for_console(text: str) -> str:
    """The summary without its header (the tables and the verdict)."""
    start = text.find("## ")
    return text[start:] if start >= 0 else text


def run(
    p: Plan,
    workers: int = 1,
    devices: Sequence[str] = (),
    ray_address: str | None = None,
    wait_s: float = 0.0,
    argv: Sequence[str] | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    threads: int | None = None,
) -> tuple[Outcome, str | None]:
    """Execute the plan, then (unless sharded) write the tables, figures and summary; the manifest always."""
    p.output_dir.mkdir(parents=True, exist_ok=True)
    write_manifest(p, argv)
    outcome = execute(p, workers=workers, devices=devices, ray_address=ray_address, wait_s=wait_s,
                      progress=progress, threads=threads)
    write_manifest(p, argv, outcome)
    text = None
    if p.shard is None:
        text = report(assembly(p), outcome)
    else:
        i, n = p.shard
        echo(f"reproduce: shard {i}/{n}: ran {len(outcome.ran)} cell(s), {len(outcome.skipped_done)} already "
             f"finished, {len(outcome.failed)} failed, {len(outcome.blocked)} waiting on other shards; run without "
             "--shard on the same output dir to assemble the tables")
    return outcome, text
