"""CC359 (Calgary-Campinas-359) dataset index: one `Scan` record per T1 volume and its silver-standard mask.

Two on-disk layouts are recognised:

* the official download: ``root/Original/<stem>.nii.gz`` with ``root/Silver-standard/<stem>_ss.nii.gz``;
* the layout of the paper's code: ``root/meta.csv`` with columns
  ``id,MRI,brain_mask,fold,tomograph_model,tesla_value,x,y,z`` and paths relative to ``root``
  (``images/...``, ``masks/...``); x, y, z are the NIfTI ``pixdim[1:4]``.

File stems read ``CC0001_<vendor>_<15|3>_<age>_<M|F>``. ``.nii`` and ``.nii.gz`` are both accepted.
Only NIfTI headers are read (never voxel data), so indexing the whole dataset stays fast.

Command line::

    python -m custom.cc359 index <root>               # per-domain table: scans, spacing range
    python -m custom.cc359 meta_csv <root> <out.csv>  # write the paper-code index for any layout
"""

from __future__ import annotations

import csv
import io
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib

__all__ = [
    "DOMAINS",
    "META_COLUMNS",
    "DatasetError",
    "Scan",
    "check_domain",
    "domain_name",
    "format_table",
    "index_dataset",
    "main",
    "parse_name",
    "write_meta_csv",
]

# Domain order = fold number (0..5), as in the paper's meta.csv.
DOMAINS = ("siemens_15", "siemens_3", "ge_15", "ge_3", "philips_15", "philips_3")
VENDORS = ("siemens", "ge", "philips")
META_COLUMNS = ("id", "MRI", "brain_mask", "fold", "tomograph_model", "tesla_value", "x", "y", "z")
IMAGE_DIR, MASK_DIR, MASK_SUFFIX, META_CSV = "Original", "Silver-standard", "_ss", "meta.csv"

_NAME = re.compile(r"^(cc\d+)_(siemens|ge|philips)_(15|3)_(\d+)_([mf])$", re.IGNORECASE)
_NIFTI_SUFFIXES = (".nii.gz", ".nii")


class DatasetError(ValueError):
    """The dataset on disk is missing, incomplete or inconsistent; the message names the file and problem."""


@dataclass(frozen=True)
class Scan:
    id: str
    image: str
    mask: str
    domain: str
    fold: int
    vendor: str
    tesla: float
    age: int
    sex: str
    spacing: tuple[float, float, float]


def domain_name(vendor: str, tesla: float) -> str:
    """``("siemens", 1.5) -> "siemens_15"``."""
    return f"{vendor}_{'15' if tesla == 1.5 else '3'}"


def check_domain(domain: str) -> str:
    """Return `domain` if it is one of `DOMAINS`, else raise a ValueError listing the valid ones."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; valid domains: {', '.join(DOMAINS)}")
    return domain


def _strip_nifti(name: str) -> str | None:
    """File name without its NIfTI extension, or None if it is not a NIfTI file."""
    for suffix in _NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def parse_name(stem: str) -> dict:
    """Parse ``CC0001_<vendor>_<15|3>_<age>_<M|F>`` (a ``.nii``/``.nii.gz`` extension is tolerated).

    Returns ``{"id", "vendor", "tesla", "age", "sex", "domain", "fold"}``; raises ValueError otherwise.
    """
    base = _strip_nifti(stem) or stem
    match = _NAME.match(base)
    if match is None:
        raise ValueError(
            f"cannot parse scan name {stem!r}: expected CC<digits>_<siemens|ge|philips>_<15|3>_<age>_<M|F>"
        )
    scan_id, vendor, tesla, age, sex = match.groups()
    vendor, tesla = vendor.lower(), 1.5 if tesla == "15" else 3.0
    domain = domain_name(vendor, tesla)
    return {
        "id": scan_id.upper(),
        "vendor": vendor,
        "tesla": tesla,
        "age": int(age),
        "sex": sex.upper(),
        "domain": domain,
        "fold": DOMAINS.index(domain),
    }


def _read_spacing(path: Path) -> tuple[float, float, float]:
    """``pixdim[1:4]`` from the header; nibabel loads voxel data lazily, so this stays fast."""
    try:
        header = nib.load(str(path)).header
        return tuple(float(v) for v in header["pixdim"][1:4])
    except Exception as exc:  # nibabel raises several types for unreadable files
        raise DatasetError(f"{path}: cannot read the NIfTI header ({exc})") from exc


def _nifti_files(folder: Path) -> dict[str, Path]:
    """Map file stem -> path for the NIfTI files of a folder; the same stem twice is an error."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        stem = _strip_nifti(path.name)
        if stem is None or not path.is_file():
            continue
        if stem in found:
            raise DatasetError(f"{path}: duplicate of {found[stem]} (same name, two extensions)")
        found[stem] = path
    return found


def _scan(image: Path, mask: Path, name: dict, spacing: Sequence[float] | None = None) -> Scan:
    return Scan(
        id=name["id"],
        image=str(image),
        mask=str(mask),
        domain=name["domain"],
        fold=name["fold"],
        vendor=name["vendor"],
        tesla=name["tesla"],
        age=name["age"],
        sex=name["sex"],
        spacing=tuple(spacing) if spacing is not None else _read_spacing(image),
    )


def _parse_or_fail(stem: str, path: Path) -> dict:
    try:
        return parse_name(stem)
    except ValueError as exc:
        raise DatasetError(f"{path}: {exc}") from None


def _index_official(root: Path) -> list[Scan]:
    image_dir, mask_dir = root / IMAGE_DIR, root / MASK_DIR
    if not mask_dir.is_dir():
        raise DatasetError(f"{mask_dir}: folder missing (the official layout keeps masks in {MASK_DIR}/)")
    images, masks = _nifti_files(image_dir), _nifti_files(mask_dir)
    for stem, path in masks.items():
        if not stem.endswith(MASK_SUFFIX):
            raise DatasetError(f"{path}: a mask name must end with {MASK_SUFFIX!r} before the extension")
        if stem[: -len(MASK_SUFFIX)] not in images:
            raise DatasetError(f"{path}: mask without an image in {image_dir}")
    scans = []
    for stem, path in images.items():
        name = _parse_or_fail(stem, path)
        mask = masks.get(stem + MASK_SUFFIX)
        if mask is None:
            raise DatasetError(f"{path}: image without a mask ({stem}{MASK_SUFFIX}.nii.gz) in {mask_dir}")
        scans.append(_scan(path, mask, name))
    return scans


def _tesla(value: str) -> float:
    """meta.csv writes 15 for 1.5 T; accept 1.5 as well."""
    tesla = float(value)
    if tesla in (15.0, 1.5):
        return 1.5
    if tesla == 3.0:
        return 3.0
    raise ValueError(f"tesla_value {value!r} is neither 15 (1.5 T) nor 3")


def _meta_row(row: dict, line: int, root: Path, meta: Path) -> Scan:
    where = f"{meta}, line {line}"
    if None in row.values() or None in row:
        raise DatasetError(f"{where}: expected {len(META_COLUMNS)} comma-separated fields like the header")
    if not row["id"].strip():
        raise DatasetError(f"{where}: empty id")
    paths = {}
    for column in ("MRI", "brain_mask"):
        if not row[column].strip():
            raise DatasetError(f"{where}: empty {column} path")
        path = Path(row[column].strip())
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise DatasetError(f"{where}: {column} file {path} does not exist")
        paths[column] = path
    name = _parse_or_fail(_strip_nifti(paths["MRI"].name) or paths["MRI"].name, paths["MRI"])
    try:
        vendor = row["tomograph_model"].strip().lower()
        if vendor not in VENDORS:
            raise ValueError(f"tomograph_model {row['tomograph_model']!r} is not one of {', '.join(VENDORS)}")
        tesla, fold = _tesla(row["tesla_value"]), int(row["fold"])
        spacing = tuple(float(row[axis]) for axis in "xyz")
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{where}: {exc}") from None
    domain = domain_name(vendor, tesla)
    if fold != DOMAINS.index(domain):
        raise DatasetError(
            f"{where}: fold {fold} does not match domain {domain} (fold {DOMAINS.index(domain)})"
        )
    name.update(id=row["id"].strip(), vendor=vendor, tesla=tesla, domain=domain, fold=fold)
    return _scan(paths["MRI"], paths["brain_mask"], name, spacing)


def _index_meta(root: Path) -> list[Scan]:
    meta = root / META_CSV
    with open(meta) as f:
        reader = csv.DictReader(f)
        missing = [c for c in META_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(
                f"{meta}: missing column(s) {', '.join(missing)}; expected {','.join(META_COLUMNS)}"
            )
        return [_meta_row(row, line, root, meta) for line, row in enumerate(reader, start=2)]


def index_dataset(root: str | os.PathLike) -> list[Scan]:
    """Index a CC359 copy in either layout (``meta.csv`` wins if both are present); scans sorted by id."""
    root = Path(root).absolute()
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder does not exist")
    if (root / META_CSV).is_file():
        scans, source = _index_meta(root), root / META_CSV
    elif (root / IMAGE_DIR).is_dir():
        scans, source = _index_official(root), root / IMAGE_DIR
    else:
        raise DatasetError(f"{root}: no scans found (neither {META_CSV} nor {IMAGE_DIR}/ with {MASK_DIR}/)")
    if not scans:
        raise DatasetError(f"{source}: no scans found")
    seen: dict[str, Scan] = {}
    for scan in scans:
        if scan.id in seen:
            raise DatasetError(f"{scan.image}: duplicate id {scan.id} (also {seen[scan.id].image})")
        seen[scan.id] = scan
    return sorted(scans, key=lambda s: s.id)


def _meta_path(path: str, folder: Path) -> str:
    try:
        return Path(os.path.relpath(path, folder)).as_posix()
    except ValueError:  # another drive on Windows
        return path


def write_meta_csv(scans: Iterable[Scan], path: str | os.PathLike) -> Path:
    """Write the paper-code ``meta.csv`` (paths relative to its folder, tesla 15/3) atomically."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    from custom.checkpoints import atomic_write_text

    with io.StringIO(newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(META_COLUMNS)
        for s in scans:
            tesla = 15 if s.tesla == 1.5 else 3
            writer.writerow(
                [
                    s.id,
                    _meta_path(s.image, path.parent),
                    _meta_path(s.mask, path.parent),
                    s.fold,
                    s.vendor,
                    tesla,
                ]
                + [repr(float(v)) for v in s.spacing]
            )
        text = f.getvalue()
    return atomic_write_text(path, text)


def format_table(scans: Sequence[Scan]) -> str:
    """Per-domain summary: fold, number of scans, spacing range per axis."""
    lines = [f"{'fold':>4}  {'domain':<11} {'scans':>5}  spacing x, y, z (min-max, mm)"]
    for fold, domain in enumerate(DOMAINS):
        group = [s for s in scans if s.domain == domain]
        if group:
            ranges = ", ".join(
                f"{min(s.spacing[a] for s in group):.3f}-{max(s.spacing[a] for s in group):.3f}"
                for a in range(3)
            )
        else:
            ranges = "-"
        lines.append(f"{fold:>4}  {domain:<11} {len(group):>5}  {ranges}")
    lines.append(f"{'':>4}  {'total':<11} {len(scans):>5}")
    return "\n".join(lines)


def _index_command(root: str) -> None:
    """Print the per-domain table of the dataset under ROOT."""
    print(format_table(index_dataset(root)))


def _meta_csv_command(root: str, out: str) -> None:
    """Index ROOT (either layout) and write the paper-code meta.csv to OUT."""
    print(write_meta_csv(index_dataset(root), out))


def main(argv: Sequence[str] | None = None) -> None:
    import fire

    from custom.options import refuse_unknown_options

    try:
        commands = {"index": _index_command, "meta_csv": _meta_csv_command}
        fire.Fire(commands, command=refuse_unknown_options(commands, argv, "error: "))
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
