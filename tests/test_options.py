"""Option values and strict option checking of the fire command lines."""

from __future__ import annotations

import subprocess
import sys

import pytest

from custom.options import flag, refuse_unknown_options, renamed_keyword, unknown_option
from tests.bundle_utils import ROOT


def command(data_dir: str, ray_address: str | None = None, oracle: bool = False) -> None:
    """A stand-in fire command."""


@pytest.mark.parametrize("args", [
    ["--data_dir", "x"], ["--data_dir=x"], ["x", "--ray-address", "auto"], ["--nooracle"], ["--oracle"],
    ["--help"], ["x", "--", "--trace"],
])
def test_known_options_pass(args):
    assert unknown_option(command, args) is None


@pytest.mark.parametrize("args, option", [
    (["--data_dri", "x"], "--data_dri"), (["x", "--oracel"], "--oracel"), (["--noprofile"], "--noprofile"),
])
def test_unknown_options_are_named(args, option):
    assert unknown_option(command, args) == f"unknown option {option}"


def test_sub_commands_check_their_own_parameters(capsys):
    commands = {"run": command}
    assert refuse_unknown_options(commands, ["run", "--oracle"], "p: error: ") == ["run", "--oracle"]
    with pytest.raises(SystemExit) as info:
        refuse_unknown_options(commands, ["run", "--bogus", "1"], "p: error: ")
    assert info.value.code == 2 and capsys.readouterr().err == "p: error: unknown option --bogus\n"


@pytest.mark.parametrize("module, args", [
    ("custom.cc359", ["index", ".", "--bogus", "1"]), ("custom.splits", ["budgets", "--bogus", "1"]),
])
def test_module_command_lines_refuse_unknown_options(module, args):
    result = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=ROOT,
                            timeout=120)
    assert result.returncode == 2 and result.stderr == "error: unknown option --bogus\n" and result.stdout == ""


@pytest.mark.parametrize("script, args", [
    ("prepare_colin27", ["--head", "ch2.nii.gz", "--brain", "ch2bet.nii.gz", "--output_dir", "{out}"]),
    ("histogram_reference", ["--scans", ".", "--output", "{out}/reference.json"]),
])
def test_script_command_lines_refuse_unknown_options(script, args, tmp_path):
    """Refused before anything runs: one line naming the option, exit 2, nothing written."""
    out = tmp_path / "out"
    command = [sys.executable, str(ROOT / "scripts" / f"{script}.py"), *(a.format(out=out) for a in args)]
    result = subprocess.run([*command, "--bogus", "1"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"{script}: error: unknown option --bogus\n"
    assert not out.exists()


@renamed_keyword("n_add_ids")
def renamed(data_dir: str, n_target_scans: int = 1) -> int:
    """A stand-in function whose keyword was renamed."""
    return n_target_scans


def test_a_renamed_keyword_still_works_with_a_warning_and_its_option_names_the_new_one():
    assert renamed("x", n_target_scans=2) == 2
    with pytest.warns(DeprecationWarning, match="renamed\\(\\): n_add_ids was renamed n_target_scans in 0.3.0"):
        assert renamed("x", n_add_ids=3) == 3
    assert unknown_option(renamed, ["--n_target_scans", "2"]) is None
    assert unknown_option(renamed, ["--n_add_ids", "2"]) == (
        "--n_add_ids was renamed --n_target_scans in 0.3.0: use --n_target_scans")
    assert unknown_option(renamed, ["--n_add_id", "2"]) == "unknown option --n_add_id"


@pytest.mark.parametrize("value, expected", [(True, True), ("false", False), ("YES", True), ("0", False)])
def test_flag(value, expected):
    assert flag(value) is expected


def test_flag_rejects_other_text():
    with pytest.raises(ValueError, match="true/false"):
        flag("maybe")
