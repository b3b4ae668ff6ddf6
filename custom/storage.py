"""Output folders: checked before any work, written files checked to read back before they count.

``check_output_dir`` refuses, in one line, an output folder that is a file, lies under a file, or cannot be written
(read-only, another user's, a read-only mount), before a run computes anything. ``verify_written`` reads a written
file back (a NIfTI's header and every voxel, a gzip stream to its checksum): a full disk or a quota that cut a file
short fails the run instead of leaving a truncated result. ``inside`` tells whether one path lies in another folder.
"""

from __future__ import annotations

import errno
import gzip
import os
import tempfile
from pathlib import Path

__all__ = ["STORAGE_ERRNOS", "OutputError", "check_output_dir", "inside", "verify_written"]

# OSErrors that describe where files go, not a bug: reported as one line naming the file
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
                  errno.EXDEV, errno.ENOTDIR, errno.EISDIR}


class OutputError(ValueError):
    """An output folder or written file that cannot be used; the message names it and the problem in one line."""


def inside(path: str | Path, folder: str | Path) -> bool:
    """``path`` is ``folder`` or lies below it (absolute paths, links resolved)."""
    path, folder = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return path == folder or folder in path.parents


def check_output_dir(output_dir: str | Path) -> bool:
    """Refuse an output folder that cannot take the run's files; returns whether it exists already.

    Nothing is left behind: writability is probed by creating and removing an empty folder in ``output_dir`` (or,
    when it does not exist yet, in its nearest existing parent, where it will be created).

    Raises:
        OutputError: ``output_dir`` is a file, lies under a file, or cannot be written (the reason in words).
    """
    out = Path(output_dir).absolute()
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: output_dir is a file, not a folder")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{out}: cannot create output_dir: {existing} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-check-", dir=existing))
    except OSError as e:
        where = "" if existing == out else f" (its parent {existing})"
        raise OutputError(f"{out}: cannot write to output_dir{where}: {e.strerror or e}") from None
    return existing == out


def verify_written(path: str | Path) -> None:
    """Read a written file back; raises ``OutputError`` naming it when it is empty, cut short or corrupt.

    NIfTI files (``.nii``, ``.nii.gz``): the header and every voxel (and, gzipped, the stream to its checksum);
    other gzip files: the whole stream; any other file: not empty.
    """
    path = Path(path)
    name = path.name.lower()
    try:
        if path.stat().st_size == 0:
            raise ValueError("empty file")
        if name.endswith(".gz"):
            with gzip.open(path, "rb") as f:  # to the end: gzip checks the stream's CRC and length there
                while f.read(1 << 24):
                    pass
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib
            import numpy as np

            image = nib.load(str(path))
            data = np.asanyarray(image.dataobj)
            if data.shape != image.shape:
                raise ValueError(f"holds {data.shape} voxels, its header says {image.shape}")
    except Exception as e:  # noqa: BLE001 - any failure to read it back is a bad write
        detail = " ".join(str(e).split())[:200] or type(e).__name__
        raise OutputError(f"{path}: written file does not read back ({detail}); is the disk full?") from None
