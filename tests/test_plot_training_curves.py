"""scripts/plot_training_curves.py on real TensorBoard event files, as a subprocess."""

import csv
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "plot_training_curves.py"


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=120)


def test_curves_from_tensorboard_events(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "run"
    with SummaryWriter(str(run)) as writer:
        for step in range(1, 7):  # 2 epochs of 3 iterations
            writer.add_scalar("train_loss", float(step), step)
        writer.add_scalar("val_surface_dice", 0.5, 1)
        writer.add_scalar("val_surface_dice", 0.75, 2)
    (run / "train.log").write_text("Epoch: 1/2, Iter: 3/3 -- train_loss: 3.0\n")
    result = _run("--run_dir", run, "--output", tmp_path / "curves.png")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    with open(tmp_path / "curves.csv") as f:
        rows = list(csv.DictReader(f))
    # per-epoch MEAN of the iteration losses (2 = mean of 1..3, 5 = mean of 4..6), not the last iteration's
    got = [(r["epoch"], r["train_loss"], r["val_surface_dice"]) for r in rows]
    assert got == [("1", "2", "0.5"), ("2", "5", "0.75")]


def test_log_fallback_and_errors(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert _run("--run_dir", run, "--output", tmp_path / "x.png").returncode == 2
    # only lines that close an epoch count
    lines = ["Epoch: 1/2, Iter: 5/5 -- train_loss: 0.25", "Epoch: 2/2, Iter: 4/5 -- train_loss: 9"]
    (run / "train.log").write_text("\n".join(lines))
    assert _run("--run_dir", run, "--output", tmp_path / "x.png").returncode == 0
    assert (tmp_path / "x.csv").read_text().splitlines() == ["epoch,train_loss", "1,0.25"]
    bad = _run("--run_dir", run, "--outptu", tmp_path / "y.png")
    assert bad.returncode == 2 and "unknown option --outptu" in bad.stderr
