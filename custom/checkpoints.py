"""Weight files: atomic saving, tensor-only loading, hashes, and finding the checkpoint to resume from.

A bundle's ``configs/metadata.json`` records the sha256 of its weight files (``weights_sha256``): every load of one
of them checks it (``check_recorded_hash``), and every ``atomic_save`` of one records the new hash.
``record_weights(<bundle>)`` rewrites the record (``python scripts/sync_bundles.py`` for the repository's bundles).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path

import torch

__all__ = [
    "WeightsError", "atomic_save", "atomic_write", "atomic_write_text", "check_recorded_hash", "latest", "load_into",
    "load_state_dict", "record_weights", "sha256",
]

logger = logging.getLogger(__name__)


class WeightsError(ValueError):
    """A weights file that cannot be used; the message names the file and the problem in one line."""


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path: str | Path, write, verify=None, suffix: str = ".tmp") -> Path:
    """``write(tmp)`` into a temporary file beside ``path``, flush it to disk, check it reads back, then rename it into
    place, readable as the umask allows (``mkstemp`` alone leaves 0600): readers never see half a file, and a failed
    or short write (a full disk, a quota) raises ``OSError`` naming ``path`` and changes nothing.

    ``verify(tmp)`` raises (or returns False) when the written file is not what was meant; ``suffix`` ends the
    temporary name (writers that pick a format by extension). Every file the bundles and the experiment driver write
    goes through here.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        _sync(tmp)
        try:
            good = verify is None or verify(tmp) is not False
        except Exception as e:  # noqa: BLE001 - any failure to read it back means a bad write
            raise OSError(errno.EIO, f"written file does not read back ({type(e).__name__}: {e})", str(path)) from e
        if not good:
            raise OSError(errno.EIO, "written file does not read back as written", str(path))
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except OSError as e:
        if e.filename in (None, tmp):  # name the file the caller meant, not the temporary one
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _sync(path: str | Path) -> None:
    """fsync a written file: a file system that allocates late (a full disk, a quota) reports the failure here."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _zip_intact(path: str | Path) -> bool:
    """A torch file reads back: every member of its zip has the right CRC (legacy single-stream files: not empty)."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return os.path.getsize(path) > 0
    with zipfile.ZipFile(path) as z:
        return z.testzip() is None


HASH_KEY = "weights_sha256"  # a bundle's configs/metadata.json: {"models/model.pt": "<sha256>", ...}


def _bundle_entry(path: str | Path) -> tuple[Path, str] | None:
    """``(<bundle>/configs/metadata.json, "models/<name>")`` for a file NAMED in a bundle's ``models/`` folder (a link
    there counts as the bundle's file, whatever it points to); ``None`` elsewhere."""
    named = Path(os.path.realpath(Path(path).absolute().parent)) / Path(path).name
    meta = named.parent.parent / "configs" / "metadata.json"
    if named.parent.name != "models" or not meta.is_file():
        return None
    return meta, f"models/{named.name}"


def _recorded(meta: Path) -> dict:
    try:
        return dict(json.loads(meta.read_text()).get(HASH_KEY) or {})
    except (OSError, ValueError, AttributeError):
        return {}


def check_recorded_hash(path: str | Path) -> None:
    """Refuse a bundle's weight file whose sha256 is not the one its ``configs/metadata.json`` records
    (``weights_sha256``): a flipped byte, a truncated copy, or a link to other weights. Files outside a bundle, or
    that it does not list, pass (the run logs their sha256)."""
    entry = _bundle_entry(path)
    expected = _recorded(entry[0]).get(entry[1]) if entry else None
    if expected is None:
        return
    actual = sha256(path)
    if actual != expected:
        raise WeightsError(
            f"{path}: sha256 is {actual} but {entry[0]} ({HASH_KEY}) records {expected}: the file was changed or "
            "corrupted (if you replaced it on purpose, record its hash: custom.checkpoints.record_weights(<bundle>), "
            "or python scripts/sync_bundles.py in the repository)")


def record_weights(bundle_root: str | Path, files: list[str] | None = None) -> dict[str, str]:
    """Rewrite ``weights_sha256`` in ``<bundle_root>/configs/metadata.json`` from the weight files themselves:
    ``files`` (paths relative to the bundle), by default those it lists already, else every ``models/*.pt``."""
    root = Path(bundle_root)
    meta_file = root / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    rels = files or sorted(meta.get(HASH_KEY) or {}) or sorted(p.relative_to(root).as_posix()
                                                              for p in (root / "models").glob("*.pt"))
    hashes = {**(meta.get(HASH_KEY) or {}), **{rel: sha256(root / rel) for rel in rels if (root / rel).is_file()}}
    meta[HASH_KEY] = hashes
    atomic_write_text(meta_file, json.dumps(meta, indent=4, ensure_ascii=False) + "\n")
    return hashes


def _update_record(path: Path) -> None:
    """After this process wrote a bundle's listed weight file (training's final model, an adapter): record its new
    sha256, so the bundle's own check accepts what its own training wrote."""
    entry = _bundle_entry(path)
    if entry and entry[1] in _recorded(entry[0]):
        record_weights(entry[0].parent.parent, [entry[1]])
        logger.info("%s: recorded its sha256 in %s", path, entry[0])


def atomic_save(obj, path: str | Path, compact: bool = False) -> Path:
    """``torch.save`` atomically (see ``atomic_write``).

    ``compact`` uses torch's legacy single-stream format: far less overhead per tensor for files of many tiny
    tensors (adapters); still loadable with ``weights_only=True``.
    """
    path = atomic_write(path, lambda tmp: torch.save(obj, tmp, _use_new_zipfile_serialization=not compact),
                        verify=_zip_intact)
    _update_record(path)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8, line ends as given) atomically (see ``atomic_write``); it must read back byte for byte."""
    data = text.encode()
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data),
                        verify=lambda tmp: Path(tmp).read_bytes() == data)


def load_state_dict(path: str | Path, map_location="cpu") -> dict[str, torch.Tensor]:
    """A model state dict from a weights file, loaded as tensors only (never unpickling code).

    Accepts a bare state dict or a checkpoint holding one under ``"model"`` (the MONAI Label format).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path}: empty weights file")
    check_recorded_hash(path)
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
