"""The files a cell leaves in its folder, and how records are written: atomically, as indented JSON."""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["DONE", "ERROR", "LOG", "PLAN", "now", "versions", "write_json"]

# done.json (written last) marks a finished cell; plan.json is its spec; error.txt a failure; log.txt its output
DONE, PLAN, ERROR, LOG = "done.json", "plan.json", "error.txt", "log.txt"


def write_json(path: Path, obj) -> None:
    """``obj`` as indented JSON (non-JSON values as their str), written atomically."""
    from custom.checkpoints import atomic_write_text  # imports torch: not before a worker has chosen its GPU

    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def versions() -> dict:
    """Python's version and those of the packages a cell's result depends on (None when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for package in ("torch", "monai", "numpy", "scipy", "pytorch-ignite", "nibabel"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out
