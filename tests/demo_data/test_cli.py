"""The demo-data command line (scripts/make_demo_data.py): one-line errors, the dataset and its progress lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from custom.demo_data import DOMAIN_NAMES

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_demo_data.py"), *args],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )


@pytest.mark.parametrize("bad", [["--n_subjects", "0"], ["--resolution", "huge"], ["--n_subject", "2"]])
def test_cli_bad_option_one_line_error(tmp_path, bad):
    result = _cli("--output_dir", str(tmp_path / "data"), *bad)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("make_demo_data: error: "), result.stderr
    assert not (tmp_path / "data").exists()


def test_cli_writes_dataset_and_progress(tmp_path):
    result = _cli("--output_dir", str(tmp_path / "data"), "--n_subjects", "1", "--seed", "1")
    assert result.returncode == 0, result.stderr
    progress = [line for line in result.stdout.splitlines() if line.startswith("make_demo_data: ")]
    assert [line.split()[1] for line in progress[:6]] == list(DOMAIN_NAMES)
    assert len(list((tmp_path / "data" / "Silver-standard").glob("CC000[1-6]_*_ss.nii.gz"))) == 6
    again = _cli("--output_dir", str(tmp_path / "data"), "--n_subjects", "1")
    assert again.returncode == 2 and "not empty" in again.stderr


def test_console_script_is_the_cli():
    import tomllib

    from custom.demo_data.cli import main

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, name = scripts["brain-extraction-demo-data"].partition(":")
    assert getattr(__import__(module, fromlist=[name]), name) is main
    wrapper = (ROOT / "scripts" / "make_demo_data.py").read_text()
    assert "from custom.demo_data.cli import main" in wrapper and "sys.path" not in wrapper
