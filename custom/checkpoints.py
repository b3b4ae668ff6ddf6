"""Weight files: atomic saving, tensor-only loading, hashes, and finding the checkpoint to resume from."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path

import torch

__all__ = ["WeightsError", "atomic_save", "atomic_write_text", "latest", "load_into", "load_state_dict", "sha256"]

logger = logging.getLogger(__name__)


class WeightsError(ValueError):
    """A weights file that cannot be used; the message names the file and the problem in one line."""


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _atomic_write(path: str | Path, write) -> Path:
    """``write(tmp)`` into a temporary file beside ``path``, then rename it into place, readable as the umask allows
    (``mkstemp`` alone leaves 0600): readers never see half a file, a failed write changes nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_save(obj, path: str | Path, compact: bool = False) -> Path:
    """``torch.save`` atomically (see ``_atomic_write``).

    ``compact`` uses torch's legacy single-stream format: far less overhead per tensor for files of many tiny
    tensors (adapters); still loadable with ``weights_only=True``.
    """
    return _atomic_write(path, lambda tmp: torch.save(obj, tmp, _use_new_zipfile_serialization=not compact))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` atomically (see ``_atomic_write``)."""
    return _atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def load_state_dict(path: str | Path, map_location="cpu") -> dict[str, torch.Tensor]:
    """A model state dict from a weights file, loaded as tensors only (never unpickling code).

    Accepts a bare state dict or a checkpoint holding one under ``"model"`` (the MONAI Label format).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path}: empty weights file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, not a torch file, or a pickle with code in it
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise WeightsError(f"{path}: not a readable tensor-only weights file ({type(e).__name__}: {first})") from None
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: does not hold a model state dict")
    return state


_EPOCH = re.compile(r"epoch=(\d+)")


def latest(folder: str | Path) -> str | None:
    """The newest epoch checkpoint (``checkpoint_epoch=N.pt``) in ``folder``, or ``None``."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.glob("*.pt") if (m := _EPOCH.search(p.name))]
    return str(max(found)[1]) if found else None


def load_into(network: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Load the weights file ``path`` into ``network`` strictly and return it (for a config's ``network`` item).

    Logs which file (and its sha256) a run uses; a file that does not fit the network is one ``WeightsError``
    naming the file.
    """
    state = load_state_dict(path)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).strip().splitlines()[:2])[:300]
        raise WeightsError(f"{path}: weights do not fit {type(network).__name__} ({detail})") from None
    logger.info("weights: %s (sha256 %s)", path, sha256(path))
    return network
