"""custom.handlers: outputs committed only on success, atomic epoch checkpoints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine

from custom.checkpoints import latest
from custom.handlers import CommitOnCompletion, EpochCheckpoint


def _engine_writing(stage: CommitOnCompletion, fail_at: int | None = None) -> Engine:
    """An engine that writes one staged file per iteration (as SaveImaged would), optionally failing."""

    def step(engine, batch):
        if engine.state.iteration == fail_at:
            raise ValueError("bad volume")
        folder = Path(stage.staging) / "sub"
        folder.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.full((2, 2, 2), len(batch), np.uint8), np.eye(4)),
                 folder / f"{batch}_brainmask.nii.gz")  # committed files must read back

    engine = Engine(step)
    stage.attach(engine)
    return engine


def test_outputs_appear_only_when_the_run_completes(tmp_path):
    out = tmp_path / "masks"
    out.mkdir()
    (out / "old_brainmask.nii.gz").write_text("earlier result")
    stage = CommitOnCompletion(str(out))
    assert not Path(stage.staging).exists()  # nothing is created before the run writes
    _engine_writing(stage).run(["a", "b"], max_epochs=1)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "old_brainmask.nii.gz", "sub/a_brainmask.nii.gz", "sub/b_brainmask.nii.gz"]
    assert [p.name for p in tmp_path.iterdir()] == ["masks"]  # the staging folder is gone


def test_a_failed_run_leaves_the_output_folder_as_it_was(tmp_path):
    out = tmp_path / "masks"
    out.mkdir()
    (out / "a_brainmask.nii.gz").write_text("earlier result")
    stage = CommitOnCompletion(str(out))
    with pytest.raises(ValueError, match="bad volume"):
        _engine_writing(stage, fail_at=2).run(["a", "b", "c"], max_epochs=1)
    assert [p.name for p in tmp_path.iterdir()] == ["masks"]
    assert [p.name for p in out.iterdir()] == ["a_brainmask.nii.gz"]
    assert (out / "a_brainmask.nii.gz").read_text() == "earlier result"


def test_staging_folders_of_killed_runs_are_swept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".masks.partial-{int(dead.stdout)}"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "x_brainmask.nii.gz").write_text("half of a killed run")
    other = tmp_path / ".other.partial-1"  # another output folder's: not ours to touch
    other.mkdir()
    stage = CommitOnCompletion(str(tmp_path / "masks"))
    _engine_writing(stage).run(["a"], max_epochs=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.partial-1", "masks"]


def test_epoch_checkpoint_keeps_the_newest_only_and_no_temporary_files(tmp_path):
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    engine = Engine(lambda e, b: None)
    EpochCheckpoint(str(tmp_path), {"model": net, "optimizer": opt}).attach(engine)
    (tmp_path / ".checkpoint_epoch=9.pt.abc").write_bytes(b"left by a save that was killed")
    engine.run([0, 1], max_epochs=3)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_epoch=3.pt"]
    state = torch.load(latest(tmp_path), weights_only=True)
    assert state["trainer"]["iteration"] == 6 and torch.equal(state["model"]["weight"], net.weight.detach())


@pytest.mark.parametrize("terminal", [True, False])
def test_volume_progress_lines_and_a_bar_on_a_terminal(monkeypatch, caplog, terminal):
    """One log line per volume (its file name, seconds); a tqdm bar on stderr only when stderr is a terminal."""
    import io
    import logging

    from monai.data import MetaTensor

    from custom.handlers import VolumeProgress

    class Stderr(io.StringIO):
        def isatty(self):
            return terminal

    stderr = Stderr()
    monkeypatch.setattr(sys, "stderr", stderr)
    volumes = [[{"image": MetaTensor(torch.zeros(1, 2, 2, 2), meta={"filename_or_obj": f"/scans/{n}.nii.gz"})}]
               for n in ("a", "b")]
    engine = Engine(lambda e, batch: None)
    VolumeProgress().attach(engine)
    with caplog.at_level(logging.INFO, logger="custom.handlers"):
        engine.run(volumes)
    lines = [r.getMessage() for r in caplog.records if r.name == "custom.handlers"]
    assert [ln.split(" (")[0] for ln in lines] == ["volume 1/2: /scans/a.nii.gz", "volume 2/2: /scans/b.nii.gz"]
    assert all(ln.endswith(" s)") for ln in lines)
    assert ("/2 [" in stderr.getvalue() and "volume/s" in stderr.getvalue()) is terminal  # tqdm, total 2
