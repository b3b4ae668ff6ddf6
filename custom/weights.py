"""The check an exported bundle runs on its weight files: each must have the sha256 its metadata records.

An exported bundle (``custom.packaging``) ships this module with its code. Its configs read every weight file through
``@custom_weights.verified(path, bundle_root)``, and inference starts with ``verify_bundle(bundle_root)``: a file
whose sha256 differs from ``weights_sha256`` in ``configs/metadata.json`` stops the run with one line naming the file
and both hashes. (The repository's bundles record ``weights_sha256`` too; their loads check it through
``custom.checkpoints.check_recorded_hash``.)
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from custom.checkpoints import HASH_KEY, sha256

__all__ = ["HASH_KEY", "WeightsHashError", "verified", "verify_bundle"]

logger = logging.getLogger(__name__)

META = "configs/metadata.json"
LARGE_FILES = "large_files.yml"  # an exported bundle's weight files that are downloaded separately


class WeightsHashError(ValueError):
    """A weight file of an exported bundle whose sha256 is not the one its metadata records."""


def _recorded_hashes(bundle_root: str | Path) -> dict[str, str]:
    meta = Path(bundle_root) / META
    if not meta.is_file():
        raise FileNotFoundError(f"{meta}: not found; pass --bundle_root <the bundle's folder>")
    return dict(json.loads(meta.read_text()).get(HASH_KEY) or {})


def _fail(message: str) -> None:
    logger.error(message)  # the run's log shows it as one line, above the traceback
    raise WeightsHashError(message)


def _check(rel: str, path: Path, expected: str, bundle_root: Path) -> None:
    if not path.is_file():
        hint = ""
        if (bundle_root / LARGE_FILES).is_file():
            hint = f"; fetch it with: python -m monai.bundle download_large_files --bundle_path {bundle_root}"
        _fail(f"{rel}: weight file missing{hint}")
    actual = sha256(path)
    if actual != expected:
        _fail(f"{rel}: sha256 is {actual} but {META} ({HASH_KEY}) records {expected}: the file was changed or "
              "corrupted (if you replaced it on purpose, record its new sha256 there)")


def verified(path: str | Path, bundle_root: str | Path) -> str:
    """``path`` after checking its sha256 against the bundle's ``weights_sha256``; for a config's weight path.

    Bundles without recorded hashes and files outside ``bundle_root`` pass unchecked; a file inside the bundle that
    the metadata does not list is refused.

    Raises:
        WeightsHashError: the file is missing, unlisted, or its sha256 differs (the message names both hashes).
    """
    hashes = _recorded_hashes(bundle_root)
    if not hashes:
        return str(path)
    root = Path(bundle_root).resolve()
    # where the file is NAMED, not where a link points: models/source_model.pt replaced by a link to other weights
    # is still the bundle's file, and its content must have the recorded hash
    named = Path(os.path.realpath(Path(path).absolute().parent)) / Path(path).name
    try:
        rel = named.relative_to(root).as_posix()
    except ValueError:
        logger.info("%s: outside the bundle, not checked against %s", path, META)
        return str(path)
    if rel not in hashes:
        _fail(f"{rel}: no sha256 for it in {META} ({HASH_KEY}); refusing an unlisted weight file")
    _check(rel, root / rel, hashes[rel], root)
    return str(path)


def verify_bundle(bundle_root: str | Path) -> dict[str, str]:
    """Check every weight file listed in the bundle's ``weights_sha256``; returns that mapping."""
    hashes = _recorded_hashes(bundle_root)
    root = Path(bundle_root).resolve()
    for rel, expected in sorted(hashes.items()):
        _check(rel, root / rel, expected, root)
    if hashes:
        logger.info("%s: %d weight file(s) match %s", root.name, len(hashes), META)
    return hashes
