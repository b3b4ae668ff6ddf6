"""scripts/benchmark.py as a real subprocess: quick sizes, every section present, equal surface Dice, bad options.

No timing assertions: the numbers depend on the machine and its load.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scripts import benchmark

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "benchmark.py"
RATIO_ROWS = (
    "ratio: bundle loop / bare step",
    "ratio: cpu contiguous / channels_last time",
    "ratio: cpu fp32 channels_last / --precision auto time",
    "ratio: DeepMind / custom cpu time",
    "ratio: first / full step time",
    "ratio: last / full step time",
)


def _run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    # a shared CPU: passive OpenMP waiting keeps busy neighbours from slowing the run down by an order of magnitude
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=env)


def _positive(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _check_results(results: dict, device: str) -> None:
    meta = results["meta"]
    assert meta["device"] == device and meta["device_name"]
    assert {"torch", "monai", "numpy"} <= set(meta["versions"]) and meta["date"]
    settings = meta["settings"]
    assert settings["quick"] is True and settings["roi"] == 64 and settings["volume_shape"] == [48, 64, 64]

    t = results["training"]
    for key in ("bare_step", "bundle_loop"):
        assert _positive(t[key]["slices_per_s"])
        assert len(t[key]["repeats_slices_per_s"]) == settings["repeats"]
        assert all(_positive(v) for v in t[key]["repeats_slices_per_s"])
    assert _positive(t["ratio_bundle_to_bare"]) and t["cached_slices"] > 0

    inf = results["inference"]
    assert inf["volume_shape"] == [48, 64, 64]
    for name in ("fp32_contiguous", "fp32_channels_last"):
        assert _positive(inf["cpu"][name]["seconds"])
    assert _positive(inf["cpu"]["speedup_channels_last"])
    # the bundle's own inference path at --precision auto, timed in the same run as fp32 channels_last
    from custom.precision import cpu_has_native_bf16

    auto = inf["cpu"]["bundle_auto"]
    assert _positive(auto["seconds"]) and auto["precision"] == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert inf["cpu"]["speedup_auto_over_fp32_channels_last"] == pytest.approx(
        inf["cpu"]["fp32_channels_last"]["seconds"] / auto["seconds"])

    sd = results["surface_dice"]
    assert sd["equal"] is True
    assert len(sd["pairs"]) == 2
    assert any(p["spacing_mm"] == [1.0, 1.0, 1.0] for p in sd["pairs"])
    assert any(len(set(p["spacing_mm"])) > 1 for p in sd["pairs"])  # an anisotropic pair
    for pair in sd["pairs"]:
        assert pair["equal"] is True and all(d < 1e-6 for d in pair["abs_diff"].values())
        assert 0.0 < pair["surface_dice"] < 1.0  # a realistic, imperfect pair
        assert all(_positive(v) for v in pair["seconds"].values())
        assert all(_positive(v) for v in pair["speedup_over_deepmind"].values())

    ft = results["fine_tuning"]["strategies"]
    assert set(ft) == {"full", "first", "last"}
    assert all(_positive(ft[s]["slices_per_s"]) and _positive(ft[s]["relative_cost"]) for s in ft)
    assert ft["full"]["relative_cost"] == 1.0
    assert ft["first"]["trainable_parameters"] < ft["full"]["trainable_parameters"]

    assert results["table"] and all(len(row) == 3 for row in results["table"])


@pytest.fixture(scope="module")
def quick_cpu(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "tmp" / "bench.json"
    proc = _run("--quick", "--device", "cpu", "--output", str(out))
    return proc, out


def test_quick_cpu_run_writes_every_section(quick_cpu):
    proc, out = quick_cpu
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    _check_results(results, "cpu")
    assert "cuda" not in results["inference"]


def test_quick_cpu_prints_one_table_with_the_ratio_rows(quick_cpu):
    proc, out = quick_cpu
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("benchmark on ")
    assert lines[1].split()[:3] == ["Section", "Measurement", "Result"]
    assert set(lines[2].replace(" ", "")) == {"-"}
    for row in RATIO_ROWS:
        assert sum(row in line for line in lines) >= 1, row
    assert "equal to DeepMind" in proc.stdout and " NO " not in proc.stdout
    # the table and nothing else: every body line is one of the JSON's rows
    assert len(lines) == 3 + len(json.loads(out.read_text())["table"])


def test_markdown_rendering_of_a_saved_run(quick_cpu):
    proc, out = quick_cpu
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = _run("--from_json", str(out), "--markdown", "true", timeout=300)
    assert md.returncode == 0, md.stderr
    lines = md.stdout.strip().splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert table[0] == "| Section | Measurement | Result |" and table[1] == "|---|---|---:|"
    assert len(table) == 2 + len(json.loads(out.read_text())["table"])
    assert all(line.count(" | ") == 2 for line in table[2:])
    assert any("ratio: bundle loop / bare step" in line for line in table)
    plain = _run("--from_json", str(out), timeout=300)
    assert plain.returncode == 0 and plain.stdout == proc.stdout


@pytest.mark.gpu
def test_quick_cuda_run(tmp_path):
    out = tmp_path / "bench.json"
    proc = _run("--quick", "--device", "cuda", "--compile", "true", "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    _check_results(results, "cuda")
    assert results["training"]["precision"] == "bf16 autocast + channels_last"
    assert _positive(results["training"]["compile"]["slices_per_s"])
    assert all(_positive(r["slices_per_s"]) for r in results["training"]["references"].values())
    cuda = results["inference"]["cuda"]
    assert _positive(cuda["fp32_contiguous"]["seconds"]) and _positive(cuda["bf16_channels_last"]["seconds"])
    for pair in results["surface_dice"]["pairs"]:
        assert _positive(pair["seconds"]["custom_cuda"]) and pair["abs_diff"]["custom_cuda"] < 1e-6
    for row in ("ratio: cuda fp32 / bf16 + channels_last time", "ratio: DeepMind cpu / custom cuda time",
                "ratio: compiled / bare step"):
        assert row in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--device", "tpu"], "--device must be auto, cpu or cuda"),
        (["--batch_size", "0"], "--batch_size must be an integer >= 1"),
        (["--roi", "60"], "--roi must be a multiple of 8"),
        (["--steps", "-1"], "--steps must be an integer >= 1"),
        (["--repeats", "two"], "--repeats must be an integer >= 1"),
        (["--warmup", "1.5"], "--warmup must be an integer >= 1"),
        (["--quick", "maybe"], "--quick must be true or false"),
        (["--markdown", "maybe"], "--markdown must be true or false"),
        (["--bogus", "1"], "unknown option(s): --bogus"),
        (["extra"], "unexpected argument(s): extra"),
        (["--from_json", "missing.json"], "no such file"),
    ],
)
def test_bad_options_give_one_line_and_exit_2(tmp_path, capsys, args, message):
    out = tmp_path / "bench.json"
    with pytest.raises(SystemExit) as exc:
        benchmark.main([*args, "--output", str(out)])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("benchmark: error: ") and message in lines[0], captured.err
    assert not out.exists()


def test_bad_option_in_a_real_process(tmp_path):
    proc = _run("--roi", "60", "--output", str(tmp_path / "bench.json"), timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    message = "benchmark: error: --roi must be a multiple of 8 (three stride-2 downsamplings), got 60"
    assert proc.stderr.strip() == message


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_a_gpu_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        benchmark.main(["--device", "cuda", "--quick"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "benchmark: error: --device cuda but no CUDA device is available (torch.cuda.is_available() is False)"
    )


def test_help_lists_the_options(capsys):
    benchmark.main(["--help"])
    out = capsys.readouterr().out
    for option in ("device:", "batch_size:", "roi:", "steps:", "quick:", "compile:", "markdown:", "output:"):
        assert option in out
