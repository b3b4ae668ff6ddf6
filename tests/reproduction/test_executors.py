"""custom.reproduction.executors: dependencies and failures; spawned workers and Ray tasks match one process."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from custom.reproduction.executors import _init_worker
from custom.reproduction.plan import plan
from custom.reproduction.run import run
from tests.reproduction.tiny import CELLS, TINY


def test_failed_cell_blocks_its_dependents_and_is_reported(tiny_data, tmp_path):
    out = tmp_path / "run"
    p = plan(replace(TINY, baseline={**TINY.baseline, "batch_size": 0}), tiny_data, out)  # an invalid batch
    outcome, text = run(p, progress=False, threads=1)
    assert list(outcome.failed) == ["train/baseline/siemens_15"]
    assert outcome.blocked == CELLS[1:] and outcome.ran == []
    assert (out / "cells/train/baseline/siemens_15/error.txt").read_text().strip()
    assert not (out / "cells/train/baseline/siemens_15/done.json").exists()
    assert "## Baseline" in text  # the report is still written, from whatever finished
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["cells"]["train/baseline/siemens_15"]["status"] == "failed"


def _results(out: Path) -> list[tuple]:
    with open(out / "results.csv", newline="") as f:
        return [(r["strategy"], r["id"], round(float(r["surface_dice"]), 4), round(float(r["dice"]), 4))
                for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def serial_run(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("serial") / "run"
    run(plan(TINY, tiny_data, out), progress=False, threads=1)
    return out


@pytest.mark.slow
def test_workers_match_a_single_process(tiny_data, serial_run, tmp_path):
    out = tmp_path / "run"
    outcome, _ = run(plan(TINY, tiny_data, out), workers=2, progress=False)
    assert not outcome.failed and sorted(outcome.ran) == sorted(CELLS)
    assert _results(out) == _results(serial_run)
    pids = {json.loads(p.read_text())["pid"] for p in out.glob("cells/**/done.json")}
    assert os.getpid() not in pids


@pytest.mark.slow
def test_ray_tasks_match_a_single_process(tiny_data, serial_run, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        address = ray.get_runtime_context().gcs_address
        out = tmp_path / "run"
        outcome, _ = run(plan(TINY, tiny_data, out), ray_address=address, progress=False)
        assert not outcome.failed and sorted(outcome.ran) == sorted(CELLS)
        assert _results(out) == _results(serial_run)
    finally:
        ray.shutdown()


def test_workers_get_gpus_round_robin(monkeypatch):
    import multiprocessing

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # restored after the test
        monkeypatch.setenv(var, "1")
    counter = multiprocessing.Value("i", 0)
    seen = []
    for _ in range(5):
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        _init_worker(counter, ("0", "1"), 3)
        seen.append(os.environ["CUDA_VISIBLE_DEVICES"])
    assert seen == ["0", "1", "0", "1", "0"] and os.environ["OMP_NUM_THREADS"] == "3"
