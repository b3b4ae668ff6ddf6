"""custom.reproduction.cell: one cell run for real: shipped weights, resuming a killed run, a clean restart."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from custom.reproduction.cell import prepare
from custom.reproduction.plan import plan
from custom.reproduction.records import PLAN
from custom.reproduction.run import run
from custom.reproduction.selection import UsageError
from tests.reproduction.tiny import CELLS, KILLABLE, TINY, markers

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_source_model_stands_in_for_training_it(tiny_data, tmp_path):
    """A profile's shipped source weights become the baseline cell's model: no training, the same bytes, and the
    fine-tuning cells start from (and tie their adapters to) them; other weights make it another cell."""
    import torch

    from custom.checkpoints import sha256
    from custom.networks import UNet2D

    shipped = tmp_path / "shipped.pt"
    torch.save(UNet2D().state_dict(), shipped)
    profile = replace(TINY, strategies=("last",), source_models={"siemens_15": str(shipped)})
    out = tmp_path / "run"
    p = plan(profile, tiny_data, out)
    outcome, _ = run(p, progress=False, threads=1, echo=lambda *_: None)
    assert not outcome.failed and not outcome.blocked
    base = out / "cells/train/baseline/siemens_15"
    record = json.loads((base / "done.json").read_text())
    assert record["sha256"] == sha256(shipped) == sha256(base / "model.pt")
    assert record["seconds"] == 0.0 and not (base / "checkpoints").exists()
    adapter = torch.load(out / "cells/train/last/siemens_15_to_ge_3/5slices/adapter.pt", weights_only=True)
    assert adapter["source_sha256"] == sha256(shipped)
    ft = json.loads((out / "cells/train/last/siemens_15_to_ge_3/5slices/done.json").read_text())
    assert len(ft["epoch_losses"]) == TINY.finetune["max_epochs"] and ft["epoch_losses"][-1] > 0
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["last_epoch_loss"] for r in rows if r["strategy"] == "last"} == {str(ft["epoch_losses"][-1])}
    assert "- precision: " in (out / "summary.md").read_text()
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in UNet2D().state_dict().items()}, shipped)
    with pytest.raises(UsageError, match="made with other settings"):
        plan(profile, tiny_data, out)
    with pytest.raises(UsageError, match="shipped source weights not found"):
        plan(replace(profile, source_models={"siemens_15": str(tmp_path / "missing.pt")}), tiny_data, tmp_path / "o")


GRID_PROCESS = """
import sys
from custom.reproduction.plan import plan
from custom.reproduction.run import run
from tests.reproduction.tiny import KILLABLE
run(plan(KILLABLE, sys.argv[1], sys.argv[2]), progress=False, threads=1)
"""


@pytest.mark.slow
def test_killed_grid_resumes_without_recomputing_finished_cells(tiny_data, tmp_path):
    """SIGKILL the grid's process while a fine-tuning cell is mid-training, then run the grid again."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", GRID_PROCESS, str(tiny_data), str(out)], cwd=ROOT,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    victim = out / "cells" / CELLS[3]  # train/first/...: cells 0-2 are finished by the time it checkpoints
    deadline = time.monotonic() + 300
    while not list(victim.glob("checkpoints/*.pt")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the grid ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = markers(out)
    assert sorted(finished) == sorted(CELLS[:3]) and not (victim / "done.json").exists()

    outcome, text = run(plan(KILLABLE, tiny_data, out), progress=False, threads=1)
    assert sorted(outcome.skipped_done) == sorted(CELLS[:3]) and outcome.ran == CELLS[3:] and not outcome.failed
    after = markers(out)
    assert {k: after[k] for k in finished} == finished  # finished cells untouched, not recomputed
    assert sorted(after) == sorted(CELLS)
    assert json.loads((victim / "done.json").read_text())["resumed"] is True  # from its last epoch checkpoint
    with open(out / "results.csv", newline="") as f:
        assert {r["strategy"] for r in csv.DictReader(f)} == {"baseline", "first", "last"}


def test_unfinished_cells_restart_clean_and_trainings_keep_their_checkpoints(tmp_path):
    cell = tmp_path / "cell"
    (cell / "checkpoints").mkdir(parents=True)
    (cell / "checkpoints" / "checkpoint_epoch=3.pt").write_bytes(b"x")
    (cell / "model.pt").write_bytes(b"half")
    (cell / "tb").mkdir()
    (cell / PLAN).write_text(json.dumps({"fingerprint": "abc"}))
    assert prepare(cell, "abc", train=True) is True  # same plan: resume from the checkpoint
    assert sorted(p.name for p in cell.iterdir()) == ["checkpoints"]
    (cell / PLAN).write_text(json.dumps({"fingerprint": "other"}))
    assert prepare(cell, "abc", train=True) is False  # another plan: start from scratch
    assert list(cell.iterdir()) == []
    (cell / "checkpoints").mkdir()
    (cell / "checkpoints" / "checkpoint_epoch=1.pt").write_bytes(b"x")
    (cell / PLAN).write_text(json.dumps({"fingerprint": "abc"}))
    assert prepare(cell, "abc", train=False) is False
    assert list(cell.iterdir()) == []
