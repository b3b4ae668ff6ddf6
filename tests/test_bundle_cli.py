"""``import custom`` has no side effects; the configs turn on the bundle command line's one-line errors."""

from __future__ import annotations

import subprocess
import sys

from tests.bundle_utils import ROOT

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
