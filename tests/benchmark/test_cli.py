"""The benchmark command line (scripts/benchmark.py, brain-extraction-benchmark): bad options are one line, exit 2."""

from __future__ import annotations

import pytest
import torch

from custom.benchmark import cli
from tests.benchmark.common import ROOT, run_script


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
        cli.main([*args, "--output", str(out)])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("benchmark: error: ") and message in lines[0], captured.err
    assert not out.exists()


def test_bad_option_in_a_real_process(tmp_path):
    proc = run_script("--roi", "60", "--output", str(tmp_path / "bench.json"), timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    message = "benchmark: error: --roi must be a multiple of 8 (three stride-2 downsamplings), got 60"
    assert proc.stderr.strip() == message


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_a_gpu_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--device", "cuda", "--quick"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "benchmark: error: --device cuda but no CUDA device is available (torch.cuda.is_available() is False)"
    )


def test_help_lists_the_options(capsys):
    cli.main(["--help"])
    out = capsys.readouterr().out
    for option in ("device:", "batch_size:", "roi:", "steps:", "quick:", "compile:", "markdown:", "output:"):
        assert option in out


def test_console_script_is_the_cli():
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, name = scripts["brain-extraction-benchmark"].partition(":")
    assert getattr(__import__(module, fromlist=[name]), name) is cli.main
    wrapper = (ROOT / "scripts" / "benchmark.py").read_text()
    assert "from custom.benchmark.cli import main" in wrapper and "sys.path" not in wrapper
