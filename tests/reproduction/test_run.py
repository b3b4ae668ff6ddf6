"""custom.reproduction.run: shards, resuming and the assembled reports (results.csv, summary.md, figures, manifest)."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import pytest

from custom.reproduction.plan import plan
from custom.reproduction.results import RESULT_COLUMNS
from custom.reproduction.run import run
from custom.reproduction.selection import UsageError
from tests.reproduction.tiny import CELLS, TINY, markers


def test_shards_resume_and_reports(tiny_data, tmp_path):
    out = tmp_path / "run"
    echo = []

    def shard(i):
        outcome, text = run(plan(TINY, tiny_data, out, shard=f"{i}/2"), progress=False, threads=1,
                              echo=echo.append)
        assert text is None and not outcome.failed and f"shard {i}/2" in echo[-1]
        return outcome

    # shard 1/2 first: its cells (indices 1, 3, 5) all wait on shard 0's baseline, so nothing runs
    outcome = shard(1)
    assert outcome.ran == [] and outcome.blocked == [CELLS[1], CELLS[3], CELLS[5]]
    outcome = shard(0)  # the baseline and its evaluation; the fine-tuned evaluations wait on shard 1
    assert outcome.ran == [CELLS[0], CELLS[2]] and outcome.blocked == [CELLS[4], CELLS[6]]
    assert not (out / "results.csv").exists()  # a shard never assembles
    assert shard(1).ran == [CELLS[1], CELLS[3], CELLS[5]]
    assert shard(0).ran == [CELLS[4], CELLS[6]]

    # un-sharded: nothing to do, tables assembled from every finished cell
    before = markers(out)
    assert sorted(before) == sorted(CELLS)
    p = plan(TINY, tiny_data, out)
    outcome, text = run(p, progress=False, threads=1)
    assert outcome.ran == [] and outcome.skipped_done == CELLS
    assert markers(out) == before

    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(RESULT_COLUMNS)
    assert [(r["strategy"], r["target"]) for r in rows][:3] == [("baseline", "siemens_15"), ("baseline", "ge_3"),
                                                                ("baseline", "ge_3")]
    assert [r["id"] for r in rows][1:3] == ["CC0007", "CC0008"]
    assert {r["strategy"] for r in rows} == {"baseline", "first", "last"}
    ft = [r for r in rows if r["strategy"] == "first"]
    assert len(ft) == 1 and ft[0]["n_slices"] == "5" and ft[0]["train_slices"] == "1" and ft[0]["target"] == "ge_3"
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)
    for name in ("baseline_matrix.png", "sdice_vs_slices.png", "wins.png"):
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 2000
    summary = (out / "summary.md").read_text()
    for heading in ("## Baseline", "## Mean surface Dice per strategy", "## Wins per budget", "## Gap closed",
                    "## First layers vs last layers at small budgets"):
        assert heading in summary
    assert "needs the oracle" in summary and "| **S1.5** |" in summary and "held-out validation scan" in summary
    assert "What this profile changes" in summary and "4.0 x 3.8 x 3.8" in summary
    assert summary.endswith(text[text.find("## "):]) or text.startswith("# ")
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["versions"]) >= {"torch", "monai", "numpy"}
    assert manifest["seeds"] == {"training": 0, "splits": 0xBADCAFE}
    assert all(c["status"] == "done" and c["seconds"] > 0 and c["device"] for c in manifest["cells"].values())
    record = json.loads((out / "cells/train/first/siemens_15_to_ge_3/5slices/done.json").read_text())
    assert record["overrides"]["slice_interval"] == 48 and record["effective"]["strategy"] == "first"
    assert record["effective"]["max_epochs"] == 1 and record["train_slices"] == 1
    assert not (out / "cells/train/baseline/siemens_15/checkpoints").exists()

    # deleting one marker recomputes exactly that cell
    victim = out / "cells/eval/last/siemens_15_to_ge_3/5slices"
    (victim / "done.json").unlink()
    (victim / "stale.txt").write_text("left over from an interrupted run")
    outcome, _ = run(plan(TINY, tiny_data, out), progress=False, threads=1)
    assert outcome.ran == ["eval/last/siemens_15_to_ge_3/5slices"]
    after = markers(out)
    assert {k for k in after if after[k] != before.get(k)} == {"eval/last/siemens_15_to_ge_3/5slices"}
    assert not (victim / "stale.txt").exists()

    # a run of a subset still assembles the tables from every finished cell of the output dir
    outcome, text = run(plan(TINY, tiny_data, out, strategies="first"), progress=False, threads=1)
    assert outcome.ran == [] and "| last layers |" in text
    with open(out / "results.csv", newline="") as f:
        assert {r["strategy"] for r in csv.DictReader(f)} == {"baseline", "first", "last"}

    # the same folder with other settings is refused before anything is touched
    with pytest.raises(UsageError, match="other settings"):
        plan(replace(TINY, finetune={**TINY.finetune, "iterations_per_epoch": 2}), tiny_data, out)
