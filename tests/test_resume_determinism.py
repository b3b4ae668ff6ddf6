"""A training run killed mid-epoch resumes to the same weights as an uninterrupted one; same seed, same numbers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from custom.checkpoints import latest
from tests.bundle_utils import FAST, SOURCE, copy_bundle, datalist, run_workflow, tiny_dataset

EPOCHS = 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    work = tmp_path_factory.mktemp("resume")
    data = tiny_dataset(work / "data")
    dl = datalist(data, work / "train.json")
    # no validation scans: the run is training only (and faster)
    import json

    content = json.loads(dl.read_text())
    content["validation"] = []
    dl.write_text(json.dumps(content))
    return {"bundle": copy_bundle(SOURCE, work), "data": data, "datalist": dl, "work": work}


def _command(setup, out, *extra):
    return [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", str(setup["bundle"] / "configs" / "train.yaml"),
        "--dataset_dir", str(setup["data"]), "--datalist_file", str(setup["datalist"]),
        "--output_dir", str(out), "--model_path", str(out / "model.pt"), "--epoch_checkpoint_dir", str(out / "epochs"),
        "--max_epochs", str(EPOCHS), "--lr_decay_epoch", "3", "--iterations_per_epoch", "6", "--batch_size", "4",
        "--spacing", str(FAST["spacing"]).replace(" ", ""), "--roi_size", "[32,32]", *extra,
    ]


def _state(path):
    return torch.load(path, weights_only=True)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(setup):
    work = setup["work"]
    reference = work / "reference"
    subprocess.run(_command(setup, reference), check=True, capture_output=True, timeout=600)

    interrupted = work / "interrupted"
    proc = subprocess.Popen(_command(setup, interrupted), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 600
    while latest(interrupted / "epochs") is None or "epoch=2" not in latest(interrupted / "epochs"):
        assert proc.poll() is None, "training ended before it could be interrupted"
        assert time.time() < deadline
        time.sleep(0.05)
    time.sleep(0.3)  # into epoch 3
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (interrupted / "model.pt").exists()  # no final model from a killed run

    resumed = subprocess.run(_command(setup, interrupted, "--resume", "True"), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    a, b = _state(reference / "model.pt"), _state(interrupted / "model.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_same_metrics_on_cpu(setup, tmp_path):
    results = []
    for run in ("a", "b"):
        bundle = copy_bundle(SOURCE, tmp_path / run)
        dl = datalist(setup["data"], tmp_path / run / "dl.json")
        workflow = run_workflow([bundle / "configs/train.yaml"], bundle, "train", dataset_dir=str(setup["data"]),
                                datalist_file=str(dl), output_dir=str(tmp_path / run / "out"), max_epochs=1,
                                val_interval=1, seed=7, **FAST)
        metrics = workflow.parser.get_parsed_content("validate#evaluator").state.metrics
        results.append((metrics, _state(bundle / "models/model.pt")))
    (m1, s1), (m2, s2) = results
    assert m1 == m2
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
