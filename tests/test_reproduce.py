"""scripts/reproduce.py and custom.experiment: the grid, shards, resuming, reports, scale-out and bad input."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from custom import experiment as E
from custom.cc359 import DOMAINS, index_dataset
from custom.splits import BUDGETS
from tests.corpus import IMAGE_PROBLEMS, MASK_PROBLEMS, corrupt_image, corrupt_mask

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "reproduce.py"

# A real but tiny profile: coarse voxels, 32 x 32 crops, one iteration per run.
TINY = replace(
    E.DEMO,
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


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from custom.demo_data import make_demo_data

    return make_demo_data(str(tmp_path_factory.mktemp("data") / "demo"), n_subjects=2, seed=3, verbose=False)


def markers(out: Path) -> dict[str, int]:
    return {str(p.parent.relative_to(out / "cells")): p.stat().st_mtime_ns for p in out.glob("cells/**/done.json")}


# ---- the grid --------------------------------------------------------------------------------------------------


def test_full_grid_matches_the_protocol():
    grid = E.build_grid(with_oracle=True, in_domain=True)
    ids = [c.id for c in grid]
    assert len(ids) == len(set(ids))
    by = lambda kind, role: [c for c in grid if c.kind == kind and c.role == role]  # noqa: E731
    assert len(by("train", "baseline")) == 6 and len(by("eval", "baseline")) == 30 + 6
    assert sum(c.source == c.target for c in by("eval", "baseline")) == 6  # held-out validation scans
    assert len(by("train", "oracle")) == len(by("eval", "oracle")) == 6 * 3
    pairs = {(c.source, c.target) for c in grid if c.role in E.STRATEGIES}
    assert len(pairs) == 30 and all(s != t for s, t in pairs)
    assert {c.n_slices for c in grid if c.role in E.STRATEGIES} == {b.n_slices for b in BUDGETS}
    assert len(BUDGETS) == 9
    for strategy in E.STRATEGIES:
        assert len(by("train", strategy)) == len(by("eval", strategy)) == 30 * 9
    assert len(grid) == 6 + 36 + 36 + 2 * 810
    assert len(E.build_grid()) == 6 + 30 + 2 * 810  # without the oracle and the in-domain evaluations
    position = {c.id: k for k, c in enumerate(grid)}
    for c in grid:
        assert all(position[d] < position[c.id] for d in c.deps), c.id
        if c.kind == "eval":
            assert c.deps == (c.train_id,)
        elif c.role in E.STRATEGIES:
            assert c.deps == (f"train/baseline/{c.source}",)
        else:
            assert c.deps == ()


def test_subset_grid():
    grid = E.build_grid(["siemens_15"], ["ge_15", "philips_15", "siemens_15"], ["first", "last", "full"], [5, 24, 90])
    assert sum(c.kind == "train" and c.role == "baseline" for c in grid) == 1
    assert sum(c.kind == "eval" and c.role == "baseline" for c in grid) == 2  # no siemens_15 -> siemens_15
    assert sum(c.role in E.STRATEGIES for c in grid) == 2 * 2 * 3 * 3


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 16])
def test_shards_partition_the_grid(n):
    grid = E.build_grid(with_oracle=True, in_domain=True)
    shards = [E.shard_cells(grid, (i, n)) for i in range(n)]
    ids = [c.id for shard in shards for c in shard]
    assert sorted(ids) == sorted(c.id for c in grid)
    assert len(ids) == len(set(ids))
    for i, shard in enumerate(shards):
        assert all(grid.index(c) % n == i for c in shard)


@pytest.mark.parametrize("bad", ["1", "3/2", "-1/2", "a/b", "1/0", "0/2/3", ""])
def test_malformed_shards(bad):
    with pytest.raises(E.UsageError, match="shard"):
        E.parse_shard(bad)


def test_selection_validation():
    assert E.parse_shard("1/4") == (1, 4) and E.parse_shard(None) is None
    sel = E.resolve_selection("paper", sources="ge_3,siemens_15", budgets=(24, 5), strategies="last")
    assert sel["sources"] == ("siemens_15", "ge_3")  # protocol order
    assert sel["budgets"] == (5, 24) and sel["strategies"] == ("last",)
    assert E.resolve_selection("demo", budgets=5)["budgets"] == (5,)
    for kwargs, match in [
        ({"profile": "fast"}, "unknown profile"),
        ({"profile": "paper", "strategies": "middle"}, "unknown strateg"),
        ({"profile": "paper", "sources": "siemens_7"}, "unknown source"),
        ({"profile": "paper", "targets": ("ge_3", "toshiba")}, "unknown target"),
        ({"profile": "paper", "budgets": 6}, "unknown budget"),
        ({"profile": "paper", "budgets": "5,x"}, "unknown budget"),
        ({"profile": "paper", "sources": "ge_3", "targets": "ge_3"}, "no source -> target pair"),
    ]:
        with pytest.raises(E.UsageError, match=match):
            E.resolve_selection(**kwargs)


def test_profiles_document_what_they_shorten():
    assert E.shortened(E.PAPER) == []
    demo = "\n".join(E.shortened(E.DEMO))
    doc = " ".join(SCRIPT.read_text().split())
    for text in ("2.0 x 1.9 x 1.9", "128 x 128", "14 epochs x 100 iterations, batch 16, lr 0.01 x0.1 after epoch 11",
                 "6 epochs x 10 iterations, batch 16, lr 0.025 x0.1 after epoch 5", "8 subjects", "seed 1",
                 "demo_source_siemens_15.pt", "--train_source true", "tolerance 2 mm", "1.05 in-plane voxels",
                 "siemens_15 -> targets ge_15, philips_15", "budgets 5, 24, 90", "precision auto"):
        assert text in demo, text
    assert "held-out validation scan" not in demo  # 4, as the protocol
    for text in ("2.0 x 1.9 x 1.9", "128 x 128", "14 epochs x 100 iterations, batch 16, lr 1e-2 x0.1 after epoch 11",
                 "6 epochs x 10 iterations, batch 16, lr 2.5e-2 x0.1 after epoch 5", "8 subjects per domain, seed 1",
                 "demo_source_siemens_15.pt", "--train_source true", "surface Dice at 2 mm",
                 "siemens_15 -> ge_15, philips_15", "5, 24, 90"):
        assert text in doc, text


# ---- planning on a real (tiny) dataset ---------------------------------------------------------------------------


def test_plan_writes_nothing_and_fixes_each_cells_overrides(tiny_data, tmp_path):
    out = tmp_path / "out"
    p = E.plan(TINY, tiny_data, out)
    assert not out.exists()
    assert [c.id for c in p.grid] == CELLS
    ft = p.specs["train/first/siemens_15_to_ge_3/5slices"]
    assert ft["bundle"] == "brain_extraction_first_layers"
    assert ft["settings"]["slice_interval"] == 48 and ft["settings"]["spacing"] == [4.0, 3.8, 3.8]
    assert ft["paths"]["init_weights"] == ft["paths"]["source_weights"]
    assert ft["paths"]["init_weights"].endswith("cells/train/baseline/siemens_15/model.pt")
    ev = p.specs["eval/last/siemens_15_to_ge_3/5slices"]
    assert ev["paths"]["model_path"].endswith("cells/train/last/siemens_15_to_ge_3/5slices/model.pt")
    assert [Path(f).name for f in ev["config_files"]] == ["inference.yaml", "evaluate.yaml"]
    assert len(ev["datalist"]["test"]) == 1 and ev["datalist"]["test"][0]["domain"] == "ge_3"
    base_eval = p.specs["eval/baseline/siemens_15/ge_3"]
    assert {e["domain"] for e in base_eval["datalist"]["test"]} == {"ge_3"} and len(base_eval["datalist"]["test"]) == 2
    own = p.specs["eval/baseline/siemens_15/siemens_15"]["datalist"]
    assert own["test"] == own["validation"] and len(own["test"]) == 1 and own["test"][0]["domain"] == "siemens_15"
    assert own["test"][0]["id"] not in {e["id"] for e in own["training"]}
    # the same plan twice: the same fingerprints; other settings: others
    again = E.plan(TINY, tiny_data, out)
    assert {k: v["fingerprint"] for k, v in again.specs.items()} == {k: v["fingerprint"] for k, v in p.specs.items()}
    other = E.plan(replace(TINY, finetune={**TINY.finetune, "batch_size": 4}), tiny_data, out)
    base = "train/baseline/siemens_15"
    assert other.specs[base]["fingerprint"] == p.specs[base]["fingerprint"]
    assert other.specs[ft["cell"]["id"]]["fingerprint"] != ft["fingerprint"]


def test_plan_rejects_impossible_splits(tiny_data, tmp_path):
    with pytest.raises(E.UsageError, match="n_add_ids"):
        E.plan(TINY, tiny_data, tmp_path / "out", budgets=(540,))  # 2 annotated scans of a 2-scan domain
    with pytest.raises(E.UsageError, match="does not exist"):
        E.plan(TINY, tmp_path / "nowhere", tmp_path / "out")
    assert not (tmp_path / "out").exists()


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
    p = E.plan(profile, tiny_data, out)
    outcome, _ = E.run(p, progress=False, threads=1, echo=lambda *_: None)
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
    with pytest.raises(E.UsageError, match="made with other settings"):
        E.plan(profile, tiny_data, out)
    with pytest.raises(E.UsageError, match="shipped source weights not found"):
        E.plan(replace(profile, source_models={"siemens_15": str(tmp_path / "missing.pt")}), tiny_data, tmp_path / "o")


# ---- running for real: shards, resume, reports ----------------------------------------------------------------


def test_shards_resume_and_reports(tiny_data, tmp_path):
    out = tmp_path / "run"
    echo = []

    def shard(i):
        outcome, text = E.run(E.plan(TINY, tiny_data, out, shard=f"{i}/2"), progress=False, threads=1,
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
    p = E.plan(TINY, tiny_data, out)
    outcome, text = E.run(p, progress=False, threads=1)
    assert outcome.ran == [] and outcome.skipped_done == CELLS
    assert markers(out) == before

    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(E.RESULT_COLUMNS)
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
    outcome, _ = E.run(E.plan(TINY, tiny_data, out), progress=False, threads=1)
    assert outcome.ran == ["eval/last/siemens_15_to_ge_3/5slices"]
    after = markers(out)
    assert {k for k in after if after[k] != before.get(k)} == {"eval/last/siemens_15_to_ge_3/5slices"}
    assert not (victim / "stale.txt").exists()

    # a run of a subset still assembles the tables from every finished cell of the output dir
    outcome, text = E.run(E.plan(TINY, tiny_data, out, strategies="first"), progress=False, threads=1)
    assert outcome.ran == [] and "| last layers |" in text
    with open(out / "results.csv", newline="") as f:
        assert {r["strategy"] for r in csv.DictReader(f)} == {"baseline", "first", "last"}

    # the same folder with other settings is refused before anything is touched
    with pytest.raises(E.UsageError, match="other settings"):
        E.plan(replace(TINY, finetune={**TINY.finetune, "iterations_per_epoch": 2}), tiny_data, out)


# Fine-tuning long enough (4 epochs of 40 iterations) to be killed between two of its epoch checkpoints.
KILLABLE = replace(TINY, finetune={"max_epochs": 4, "lr_decay_epoch": 3, "iterations_per_epoch": 40, "batch_size": 2})
GRID_PROCESS = """
import sys
from custom import experiment as E
from tests.test_reproduce import KILLABLE
E.run(E.plan(KILLABLE, sys.argv[1], sys.argv[2]), progress=False, threads=1)
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

    outcome, text = E.run(E.plan(KILLABLE, tiny_data, out), progress=False, threads=1)
    assert sorted(outcome.skipped_done) == sorted(CELLS[:3]) and outcome.ran == CELLS[3:] and not outcome.failed
    after = markers(out)
    assert {k: after[k] for k in finished} == finished  # finished cells untouched, not recomputed
    assert sorted(after) == sorted(CELLS)
    assert json.loads((victim / "done.json").read_text())["resumed"] is True  # from its last epoch checkpoint
    with open(out / "results.csv", newline="") as f:
        assert {r["strategy"] for r in csv.DictReader(f)} == {"baseline", "first", "last"}


def test_unfinished_cells_restart_clean_and_trainings_keep_their_checkpoints(tmp_path):
    spec = {"fingerprint": "abc", "cell": {"kind": "train"}}
    cell = tmp_path / "cell"
    (cell / "checkpoints").mkdir(parents=True)
    (cell / "checkpoints" / "checkpoint_epoch=3.pt").write_bytes(b"x")
    (cell / "model.pt").write_bytes(b"half")
    (cell / "tb").mkdir()
    (cell / E.PLAN).write_text(json.dumps({"fingerprint": "abc"}))
    assert E._prepare(cell, spec) is True  # same plan: resume from the checkpoint
    assert sorted(p.name for p in cell.iterdir()) == ["checkpoints"]
    (cell / E.PLAN).write_text(json.dumps({"fingerprint": "other"}))
    assert E._prepare(cell, spec) is False  # another plan: start from scratch
    assert list(cell.iterdir()) == []
    (cell / "checkpoints").mkdir()
    (cell / "checkpoints" / "checkpoint_epoch=1.pt").write_bytes(b"x")
    (cell / E.PLAN).write_text(json.dumps({"fingerprint": "abc"}))
    assert E._prepare(cell, {"fingerprint": "abc", "cell": {"kind": "eval"}}) is False
    assert list(cell.iterdir()) == []


def test_failed_cell_blocks_its_dependents_and_is_reported(tiny_data, tmp_path):
    out = tmp_path / "run"
    p = E.plan(replace(TINY, baseline={**TINY.baseline, "batch_size": 0}), tiny_data, out)  # an invalid batch
    outcome, text = E.run(p, progress=False, threads=1)
    assert list(outcome.failed) == ["train/baseline/siemens_15"]
    assert outcome.blocked == CELLS[1:] and outcome.ran == []
    assert (out / "cells/train/baseline/siemens_15/error.txt").read_text().strip()
    assert not (out / "cells/train/baseline/siemens_15/done.json").exists()
    assert "## Baseline" in text  # the report is still written, from whatever finished
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["cells"]["train/baseline/siemens_15"]["status"] == "failed"


# ---- scale-out: spawned workers and Ray give the same results as one process ----------------------------------


def _results(out: Path) -> list[tuple]:
    with open(out / "results.csv", newline="") as f:
        return [(r["strategy"], r["id"], round(float(r["surface_dice"]), 4), round(float(r["dice"]), 4))
                for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def serial_run(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("serial") / "run"
    E.run(E.plan(TINY, tiny_data, out), progress=False, threads=1)
    return out


@pytest.mark.slow
def test_workers_match_a_single_process(tiny_data, serial_run, tmp_path):
    out = tmp_path / "run"
    outcome, _ = E.run(E.plan(TINY, tiny_data, out), workers=2, progress=False)
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
        outcome, _ = E.run(E.plan(TINY, tiny_data, out), ray_address=address, progress=False)
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
        E._init_worker(counter, ("0", "1"), 3)
        seen.append(os.environ["CUDA_VISIBLE_DEVICES"])
    assert seen == ["0", "1", "0", "1", "0"] and os.environ["OMP_NUM_THREADS"] == "3"


# ---- the command line --------------------------------------------------------------------------------------------


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=120)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--profile", "fast"], "unknown profile 'fast'"),
        (["--strategies", "first,middle"], "unknown strateg"),
        (["--sources", "siemens_7"], "unknown source"),
        (["--targets", "ge_3,toshiba_3"], "unknown target"),
        (["--budgets", "5,6"], "unknown budget 6"),
        (["--shard", "2/2"], "malformed --shard"),
        (["--shard", "1"], "malformed --shard"),
        (["--workers", "0"], "--workers"),
        (["--profile", "paper", "--devices", "0,1"], "--devices needs --workers"),
        (["--devices", "a"], "malformed --devices"),
        (["--profile", "paper"], "does not exist"),
        (["--profil", "paper"], "unknown option --profil"),  # refused before the demo default could run
    ],
)
def test_cli_bad_input(args, message, tmp_path):
    out = tmp_path / "out"
    result = cli("--data_dir", tmp_path / "missing", "--output_dir", out, *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reproduce: error: ") and message in lines[0], result.stderr
    assert result.stdout == ""
    assert not out.exists() and not (tmp_path / "missing").exists()


# The corpus, planted in a real dataset: where the scan index already refuses a file, its words differ.
SCAN_PROBLEMS = {**IMAGE_PROBLEMS, "not_nifti": "cannot read the NIfTI header", "missing": "mask without an image",
                 **MASK_PROBLEMS}


@pytest.mark.slow
def test_cli_bad_scan_stops_the_run_before_any_cell(tiny_data, tmp_path):
    """Each broken scan: one line naming it, exit 2, no output folder - found before hours of cells, not after."""
    scan = next(s for s in index_dataset(tiny_data) if s.domain == "siemens_15")

    def one(kind: str) -> str | None:
        data = shutil.copytree(tiny_data, tmp_path / kind / "data")
        image, mask = (data / Path(p).relative_to(tiny_data) for p in (scan.image, scan.mask))
        if kind in MASK_PROBLEMS:
            corrupt_mask(mask, kind)
        else:
            corrupt_image(image, kind)
        named = mask if kind in MASK_PROBLEMS or kind == "missing" else image
        out = tmp_path / kind / "out"
        result = cli("--profile", "demo", "--data_dir", data, "--output_dir", out, "--sources", "siemens_15",
                     "--targets", "ge_15", "--strategies", "first", "--budgets", "5", "--workers", "1",
                     "--progress", "False")
        lines = result.stderr.strip().splitlines()
        if result.returncode != 2 or len(lines) != 1 or result.stdout:
            return f"exit {result.returncode}, stderr {lines[-3:]}"
        if not lines[0].startswith("reproduce: error: ") or str(named) not in lines[0] or SCAN_PROBLEMS[kind] \
                not in lines[0]:
            return f"{lines[0]!r} should name {named} and say {SCAN_PROBLEMS[kind]!r}"
        return "wrote output" if out.exists() else None

    with ThreadPoolExecutor(max_workers=2) as pool:
        failures = {k: why for k, why in zip(SCAN_PROBLEMS, pool.map(one, SCAN_PROBLEMS), strict=True) if why}
    assert not failures, "\n".join(f"{k}: {why}" for k, why in failures.items())


def test_cli_rejects_a_folder_that_is_not_a_dataset(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("not CC359")
    result = cli("--profile", "demo", "--data_dir", tmp_path / "junk", "--output_dir", tmp_path / "out")
    assert result.returncode == 2 and result.stderr.startswith("reproduce: error: ")
    assert not (tmp_path / "out").exists()


def test_cli_help_lists_the_flags():
    result = cli("--help")
    assert result.returncode == 0
    text = result.stdout + result.stderr  # fire writes help to stderr without a terminal
    for flag in ("--profile", "--sources", "--targets", "--strategies", "--budgets", "--oracle", "--workers",
                 "--devices", "--ray_address", "--shard"):
        assert flag in text


def test_domains_constant_is_the_protocols():
    assert DOMAINS == ("siemens_15", "siemens_3", "ge_15", "ge_3", "philips_15", "philips_3")
