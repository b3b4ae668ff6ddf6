"""Plain errors for ``python -m monai.bundle run`` on these bundles.

The bundle configs call ``install()`` first in ``initialize`` (importing ``custom`` changes nothing); it acts only
when the process IS the MONAI bundle command line, so MONAI Label, tests and library users are untouched. It does two
things there:

* an option that no config file defines (``--max_epoch 5`` for ``--max_epochs``) stops the run with a one-line
  error, instead of becoming a silently ignored new config id; an id a bundle version renamed (``RENAMED``) is
  named with its new name;
* a bad input (a corrupt or missing file, NaN voxels, an empty mask, a wrong adapter, an unknown strategy, ...)
  ends the run with one line naming the file and the problem (exit code 2) instead of a page of traceback; the
  engines' own error logs of that exception are silenced too. Set ``BUNDLE_TRACEBACK=1`` to see the traceback.
"""

from __future__ import annotations

import logging
import os
import sys
import zipfile
from gzip import BadGzipFile
from pathlib import Path

__all__ = ["RENAMED", "check_options", "default_bundle_root", "install", "renamed_option", "user_error"]

# Options of `monai.bundle run` itself, not config ids.
RUN_OPTIONS = {
    "config_file", "meta_file", "logging_file", "run_id", "init_id", "final_id", "tracking", "args_file",
    "workflow_type", "workflow_name", "properties_path",
}

# Config ids the bundles renamed: old id -> (new id, the bundle version that renamed it). An old option would only
# add an id nothing reads, so it stops the run with one line naming the new id.
RENAMED = {
    "checkpoint_dir": ("epoch_checkpoint_dir", "0.3.0"),
    "final_model": ("model_path", "0.3.0"),
    "n_add_ids": ("n_target_scans", "0.3.0"),
}


def renamed_option(old: str) -> str:
    """What an option of a renamed id (``RENAMED``) is told: its new name, and since which version."""
    new, version = RENAMED[old]
    return f"--{old} was renamed --{new} in {version}: use --{new}"


def _own_error_types() -> tuple[type[BaseException], ...]:
    from custom.adapters import AdapterError
    from custom.cc359 import DatasetError
    from custom.checkpoints import WeightsError
    from custom.freeze import StrategyError
    from custom.storage import OutputError
    from custom.transforms import InputError
    from custom.weights import WeightsHashError

    return InputError, DatasetError, AdapterError, WeightsHashError, WeightsError, OutputError, StrategyError


def _storage_error(exc: BaseException) -> bool:
    """An OSError about where files go (a full disk, a read-only or unwritable folder) that names its file."""
    from custom.storage import STORAGE_ERRNOS

    return isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS and bool(exc.filename)


GENERIC_INPUT_ERRORS = (FileNotFoundError, BadGzipFile, EOFError, zipfile.BadZipFile)


def user_error(exc: BaseException) -> BaseException | None:
    """The error in ``exc``'s chain that describes the user's input (ours name the file), or ``None`` for a bug."""
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    own = [e for e in chain if isinstance(e, _own_error_types())]
    if own:
        return own[0]
    generic = [e for e in chain if isinstance(e, GENERIC_INPUT_ERRORS) or _storage_error(e)]
    return generic[-1] if generic else None


def _message(exc: BaseException) -> str:
    if _storage_error(exc):
        return f"{exc.filename}: {exc.strerror or exc}"
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, BadGzipFile | EOFError | zipfile.BadZipFile):
        text = f"corrupt or truncated file ({text})"
    return text


def _excepthook(exc_type, exc, tb):
    error = user_error(exc)
    if error is None or os.environ.get("BUNDLE_TRACEBACK"):
        sys.__excepthook__(exc_type, exc, tb)
    if error is not None:
        sys.stderr.write(f"error: {_message(error)}\n")
        sys.stderr.flush()
        os._exit(2)


class _QuietUserErrors(logging.Filter):
    """Drop ERROR records logged while a user error unwinds (ignite's "terminating due to exception", MONAI's
    traceback): the excepthook reports it once, in one line. Bugs keep every log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or os.environ.get("BUNDLE_TRACEBACK"):
            return True
        exc = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
        return exc is None or user_error(exc) is None


def _quiet_user_error_logs() -> None:
    """Put the filter on every logger: those that exist now, and (through the logger class) those made later,
    such as the ones MONAI's handlers create with their own stdout handlers."""
    quiet = _QuietUserErrors()

    class QuietLogger(logging.getLoggerClass()):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.addFilter(quiet)

    logging.setLoggerClass(QuietLogger)
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        if isinstance(logger, logging.Logger):
            logger.addFilter(quiet)


def _config_ids(config_files: list[str]) -> set[str]:
    import yaml

    ids: set[str] = set()
    for path in config_files:
        with open(path) as f:
            content = yaml.safe_load(f) if str(path).endswith((".yaml", ".yml")) else __import__("json").load(f)
        for key in content or {}:
            ids.add(str(key).lstrip("+").replace("::", "#").split("#")[0])
    return ids


def _config_files(argv: list[str]) -> list[str]:
    import ast

    raw = argv[argv.index("--config_file") + 1] if "--config_file" in argv[:-1] else None
    if raw is None:
        return []
    try:
        files = ast.literal_eval(raw) if raw.strip().startswith("[") else [raw]
    except (ValueError, SyntaxError):
        files = [raw]
    return [str(f) for f in files]


def default_bundle_root() -> str:
    """The bundle a command-line run's first config file belongs to (``<bundle>/configs/x.yaml``), else ``.``.

    Lets ``python -m monai.bundle run --config_file bundles/<name>/configs/inference.yaml`` work from any folder
    without ``--bundle_root``. The path is not resolved, so a bundle reached through a link stays the linked one.
    """
    files = _config_files(sys.argv[1:]) if _is_bundle_cli() else []
    if files and Path(files[0]).parent.name == "configs":
        return str(Path(files[0]).absolute().parent.parent)
    return "."


def check_options(argv: list[str]) -> str | None:
    """The first ``--option`` of a ``monai.bundle run`` command line that no given config file defines: what is
    wrong with it (a renamed id: its new name and since which version)."""
    options = [a[2:].split("=")[0] for a in argv if a.startswith("--")]
    files = _config_files(argv)
    if not files or not all(Path(f).is_file() for f in files):
        return None
    known = _config_ids(files) | RUN_OPTIONS
    for option in options:
        name = option.replace("::", "#").split("#")[0]
        if name in known:
            continue
        if name in RENAMED and RENAMED[name][0] in known:
            return renamed_option(name)
        names = ", ".join(Path(f).name for f in files)
        return f"unknown option --{option}: no config in {names} defines it"
    return None


def _is_bundle_cli() -> bool:
    argv = getattr(sys, "orig_argv", sys.argv)
    return "monai.bundle" in argv and "run" in argv


def install() -> None:
    """Activate both checks when this process runs ``python -m monai.bundle run``."""
    if not _is_bundle_cli() or sys.excepthook is _excepthook:
        return
    sys.excepthook = _excepthook
    _quiet_user_error_logs()
    problem = check_options(sys.argv[1:])
    if problem:
        sys.stderr.write(f"error: {problem}\n")
        sys.stderr.flush()
        os._exit(2)
