"""``import custom`` has no side effects; the configs turn on the bundle command line's one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from custom.bundle_cli import RENAMED, check_options
from tests.bundle_utils import CHECKED_BUNDLES, FINETUNE, ROOT, SOURCE, SPOTTUNE

CONFIG = """
imports:
  - $import logging
  - $import sys
  - $import custom
bundle_root: .
plain: "$sys.excepthook is sys.__excepthook__ and logging.getLoggerClass() is logging.Logger"
probe: "$print('plain' if @plain else 'changed')"
initialize:
  - "@probe"
  - "$custom.bundle_cli.install()"
  - "$print('installed' if sys.excepthook is custom.bundle_cli._excepthook else 'not installed')"
run: []
"""


def test_import_changes_nothing_until_a_config_installs_the_error_handling(tmp_path):
    (tmp_path / "config.yaml").write_text(CONFIG)
    done = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", "config.yaml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    probes = [line for line in done.stdout.splitlines() if line in ("plain", "changed", "installed", "not installed")]
    assert probes == ["plain", "installed"], done.stdout


# ---- renamed config ids: an old option names the new one -----------------------------------------------------

def _config_args(*files) -> list[str]:
    return ["--config_file", str(files[0]) if len(files) == 1 else json.dumps([str(f) for f in files])]


@pytest.mark.parametrize("old", sorted(RENAMED))
def test_check_options_names_the_new_id_of_a_renamed_option(old):
    new, version = RENAMED[old]
    argv = [*_config_args(FINETUNE["first"] / "configs" / "train.yaml"), f"--{old}", "x"]
    assert check_options(argv) == f"--{old} was renamed --{new} in {version}: use --{new}"
    assert check_options([*argv[:2], f"--{new}", "x"]) is None


def test_a_renamed_id_the_configs_do_not_define_is_just_unknown():
    """``--checkpoint_dir`` given to inference: its new name is no inference option either."""
    argv = [*_config_args(SOURCE / "configs" / "inference.yaml"), "--checkpoint_dir", "x"]
    assert check_options(argv) == "unknown option --checkpoint_dir: no config in inference.yaml defines it"


@pytest.mark.parametrize("bundle", CHECKED_BUNDLES, ids=[b.name for b in CHECKED_BUNDLES])
def test_the_renaming_version_is_in_every_bundles_changelog(bundle):
    changelog = json.loads((bundle / "configs" / "metadata.json").read_text())["changelog"]
    assert {version for _, version in RENAMED.values()} <= set(changelog)


RENAMED_RUNS = [
    (SOURCE, ["train.yaml"], "final_model"),
    (SOURCE, ["train.yaml"], "checkpoint_dir"),
    (FINETUNE["first"], ["train.yaml"], "n_add_ids"),
    (SPOTTUNE, ["train.yaml"], "checkpoint_dir"),
    (SOURCE, ["inference.yaml", "evaluate.yaml"], "final_model"),
]


@pytest.mark.parametrize("bundle, configs, old", RENAMED_RUNS,
                         ids=[f"{b.name}-{'+'.join(c)}-{o}" for b, c, o in RENAMED_RUNS])
def test_an_old_option_stops_the_bundle_command_line_with_one_line(bundle, configs, old, tmp_path):
    """``python -m monai.bundle run`` with a renamed id: exit 2, one line naming the new id, nothing written."""
    new, version = RENAMED[old]
    files = [bundle / "configs" / c for c in configs]
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("BUNDLE_TRACEBACK", None)
    done = subprocess.run([sys.executable, "-m", "monai.bundle", "run", *_config_args(*files), "--output_dir",
                           str(out), f"--{old}", str(tmp_path / "old")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert lines[-1] == f"error: --{old} was renamed --{new} in {version}: use --{new}"
    assert not [ln for ln in (done.stdout + done.stderr).splitlines() if "Traceback" in ln or " - ERROR - " in ln]
    assert sorted(p.name for p in tmp_path.iterdir()) == []
