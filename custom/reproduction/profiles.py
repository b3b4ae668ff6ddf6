"""Profiles: how much of the protocol (docs/PROTOCOL.md) runs, and which bundle defaults each one overrides.

``PAPER`` is the authors' protocol; ``DEMO`` a CPU-sized slice of it on the simulated demo data. ``shortened``
derives, from a profile's settings alone, what it changes with respect to the protocol (the header of
``summary.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from custom.cc359 import DOMAINS
from custom.reproduction.grid import ALL_BUDGETS, STRATEGIES
from custom.splits import DEFAULT_SEED

__all__ = [
    "BUNDLE_DEFAULTS",
    "DEMO",
    "PAPER",
    "PAPER_VALUES",
    "PROFILES",
    "REMAINING_DIFFERENCES",
    "Profile",
    "effective",
    "profile_overrides",
    "shortened",
]


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
    spottune: dict = field(default_factory=dict)  # SpotTUnet cells; empty: its bundle's, the authors' 2021 recipe
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
DEMO_SOURCE_MODEL = Path(__file__).resolve().parents[1] / "resources" / "demo_source_siemens_15.pt"

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
    spottune={"max_epochs": 6, "lr_decay_epoch": 5, "iterations_per_epoch": 10, "batch_size": 16,
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
    "the learning-rate step follows the dpipe commit the authors pinned (5c08d57: its Schedule multiplies when "
    "epoch 80, 0-based, ends); "
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
    """The bundle overrides of a profile for ``baseline`` (also oracle), ``finetune``, ``spottune`` or ``evaluate``
    cells."""
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

