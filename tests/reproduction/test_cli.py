"""The reproduce command line (scripts/reproduce.py, brain-extraction-reproduce): bad input is one line, exit 2."""

from __future__ import annotations

import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from custom.cc359 import index_dataset
from tests.corpus import IMAGE_PROBLEMS, MASK_PROBLEMS, corrupt_image, corrupt_mask

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "reproduce.py"


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
        (["--cache_preprocessing", "maybe"], "--cache_preprocessing must be true or false"),
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


def test_console_script_is_the_cli():
    import tomllib

    from custom.reproduction.cli import main

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, name = scripts["brain-extraction-reproduce"].partition(":")
    assert getattr(__import__(module, fromlist=[name]), name) is main
    wrapper = SCRIPT.read_text()
    assert "from custom.reproduction.cli import main" in wrapper and "sys.path" not in wrapper
