"""The zip of a staged bundle, its large weight files kept out of it, and putting both in place."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from custom.packaging.layout import HASH_KEY, LARGE_FILES, META, ExportError

__all__ = ["check_large", "move_large", "publish", "zip_bundle"]

_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def check_large(sizes: dict[str, int], large_file_mb: float, url_base: str | None) -> list[str]:
    """The weight files over the size limit; refused without ``url_base``."""
    large = sorted(rel for rel, size in sizes.items() if size > large_file_mb * 1e6)
    if large and not url_base:
        raise ExportError(f"{', '.join(large)} over {large_file_mb:g} MB: give --url_base to list them in "
                          f"{LARGE_FILES} instead of the zip")
    return large


def move_large(stage: Path, large: list[str], url_base: str, target: Path) -> None:
    """List the ``large`` files in the stage's ``large_files.yml`` and move them from the stage to ``target``."""
    import yaml

    hashes = json.loads((stage / META).read_text())[HASH_KEY]
    entries = [{"path": rel, "url": f"{url_base.rstrip('/')}/{rel}", "hash_val": hashes[rel], "hash_type": "sha256"}
               for rel in large]
    (stage / LARGE_FILES).write_text(
        "# weight files too large for the zip: `python -m monai.bundle download_large_files --bundle_path "
        "<this folder>` fetches them\n" + yaml.safe_dump({"large_files": entries}, sort_keys=False))
    for rel in large:
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(stage / rel), target / rel)


def zip_bundle(stage: Path, name: str, target: Path) -> None:
    """``stage`` as the folder ``name`` of the zip ``target``: sorted, fixed times and modes, so equal inputs give
    equal zips."""
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for path in sorted(p for p in stage.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(f"{name}/{path.relative_to(stage).as_posix()}", date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(path, "rb") as src, zf.open(info, "w") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)


def publish(zipped: Path, output: Path, large: Path | None, large_dir: Path) -> None:
    """Copy to temporary names beside the outputs, then rename: the large files first, the zip last."""
    output.parent.mkdir(parents=True, exist_ok=True)
    from custom.checkpoints import atomic_write, current_umask

    tmp_large = None
    try:
        if large is not None:
            # a folder: atomic_write writes files, so the large files get their own temporary folder and rename
            tmp_large = Path(tempfile.mkdtemp(prefix=f".{large_dir.name}.", dir=output.parent))
            shutil.copytree(large, tmp_large, dirs_exist_ok=True)
            os.chmod(tmp_large, 0o777 & ~current_umask())
        if large_dir.exists():  # an earlier export's large files (--overwrite)
            shutil.rmtree(large_dir)
        if tmp_large is not None:
            os.replace(tmp_large, large_dir)
        # the zip last, readable as the umask allows (it is meant to be shared), checked to read back
        atomic_write(output, lambda tmp: shutil.copyfile(zipped, tmp),
                     verify=lambda tmp: zipfile.ZipFile(tmp).testzip() is None)
    finally:
        if tmp_large is not None and tmp_large.exists():
            shutil.rmtree(tmp_large, ignore_errors=True)
