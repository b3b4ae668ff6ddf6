"""``manifest.json``: the run's settings, seeds, versions, platform, git commit and every cell's status and timing."""

from __future__ import annotations

import os
import platform
import socket
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from custom.reproduction.executors import Outcome
from custom.reproduction.plan import Plan
from custom.reproduction.profiles import REMAINING_DIFFERENCES, profile_overrides, shortened
from custom.reproduction.records import ERROR, now, versions, write_json

__all__ = ["write_manifest"]

REPO = Path(__file__).resolve().parents[2]


def _cell_records(p: Plan) -> dict[str, dict]:
    out = {}
    for cell in p.grid:
        if p.is_done(cell.id):
            r = p.record(cell.id)
            out[cell.id] = {k: r.get(k) for k in ("seconds", "cpu_seconds", "started", "finished", "device", "host",
                                                  "resumed", "fingerprint", "overrides", "effective", "seed",
                                                  "train_slices", "epoch_losses", "shipped_weights", "sha256")}
            out[cell.id].update({k: r[k] for k in ("policy_usage", "histogram_reference_scans") if k in r})
            out[cell.id]["status"] = "done"
        else:
            out[cell.id] = {"status": "failed" if (p.cell_dir(cell.id) / ERROR).is_file() else "pending",
                            "fingerprint": p.specs[cell.id].fingerprint}
    return out


def write_manifest(p: Plan, argv: Sequence[str] | None = None, outcome: Outcome | None = None) -> Path:
    """Write (or rewrite) ``manifest.json`` in the plan's output folder; returns its path."""
    records = _cell_records(p)
    manifest = {
        "updated": now(),
        "argv": list(argv) if argv is not None else None,
        "profile": asdict(p.profile),
        "selection": p.selection.flags(),
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
    write_json(path, manifest)
    return path


def _git_commit() -> str | None:
    import subprocess

    try:
        result = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None

