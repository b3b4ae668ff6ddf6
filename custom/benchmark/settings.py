"""The benchmark's settings: the options checked and their defaults filled in (full sizes, or tiny ones)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = [
    "ANISOTROPIC_SPACING", "DEFAULTS", "HEAD_SHAPE", "QUICK_HEAD_SHAPE", "STRATEGY_NAMES", "TOLERANCE_MM", "Settings",
    "UsageError", "flag_option", "resolve_settings",
]

HEAD_SHAPE = (176, 256, 256)  # a 1 mm T1 head volume
QUICK_HEAD_SHAPE = (48, 64, 64)
ANISOTROPIC_SPACING = (1.2, 0.9375, 0.9375)
TOLERANCE_MM = 1.0
STRATEGY_NAMES = ("full", "first", "last")
# (steps, repeats, warmup) per timed measurement when not given
DEFAULTS = {"cuda": (20, 5, 10), "cpu": (1, 3, 1), "quick": (1, 2, 1)}


class UsageError(ValueError):
    """A bad command-line option; reported as one line, exit 2."""


@dataclass
class Settings:
    device: str
    batch_size: int
    roi: int
    steps: int
    repeats: int
    warmup: int
    quick: bool
    compile: bool
    volume_shape: tuple[int, int, int]
    spacings: tuple[tuple[float, float, float], ...] = ((1.0, 1.0, 1.0), ANISOTROPIC_SPACING)
    tolerance_mm: float = TOLERANCE_MM
    seed: int = 0
    train_volumes: int = 2
    train_slices: int = field(default=24)

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)


def flag_option(value, name: str) -> bool:
    """A true/false option, or a ``UsageError`` naming ``--name``."""
    from custom.options import flag

    try:
        return flag(value)
    except ValueError:
        raise UsageError(f"--{name} must be true or false, got {value!r}") from None


def _optional_int(value, name: str, minimum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"--{name} must be an integer >= {minimum}, got {value!r}")
    return value


def resolve_settings(
    device="auto", batch_size=None, roi=None, steps=None, repeats=None, warmup=None, quick=False, compile=False
) -> Settings:
    """Check the options and fill in the defaults (full sizes, or tiny ones with ``quick``)."""
    quick, compile_ = flag_option(quick, "quick"), flag_option(compile, "compile")
    if not isinstance(device, str) or device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but no CUDA device is available (torch.cuda.is_available() is False)")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    batch_size = _optional_int(batch_size, "batch_size", 1)
    roi = _optional_int(roi, "roi", 8)
    if roi is not None and roi % 8:
        raise UsageError(f"--roi must be a multiple of 8 (three stride-2 downsamplings), got {roi}")
    steps, repeats = _optional_int(steps, "steps", 1), _optional_int(repeats, "repeats", 1)
    warmup = _optional_int(warmup, "warmup", 1)
    d_steps, d_repeats, d_warmup = DEFAULTS["quick" if quick else device]
    return Settings(
        device=device,
        batch_size=batch_size or (4 if quick else 32),
        roi=roi or (64 if quick else 256),
        steps=steps or d_steps,
        repeats=repeats or d_repeats,
        warmup=warmup or d_warmup,
        quick=quick,
        compile=compile_,
        volume_shape=QUICK_HEAD_SHAPE if quick else HEAD_SHAPE,
        train_slices=8 if quick else 24,
    )
