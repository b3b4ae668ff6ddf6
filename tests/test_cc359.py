"""custom.cc359: name parsing, both on-disk layouts, meta.csv round trip, every dataset error, the CLI."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from custom.cc359 import DOMAINS, META_COLUMNS, DatasetError, Scan, index_dataset, parse_name, write_meta_csv

ROOT = Path(__file__).resolve().parents[1]

# (domain, spacing) per fold, as docs/PROTOCOL.md (Philips 1.5 T has in-plane spacing down to 0.889).
SPACINGS = {
    "siemens_15": (1.0, 1.0, 1.0),
    "siemens_3": (1.33, 1.0, 1.0),
    "ge_15": (1.0, 1.0, 1.0),
    "ge_3": (1.0, 1.0, 1.0),
    "philips_15": (1.0, 0.889, 0.889),
    "philips_3": (1.0, 0.982, 0.982),
}


def save_nifti(path: Path, spacing=(1.0, 1.0, 1.0), shape=(4, 4, 4), dtype=np.float32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.zeros(shape, dtype=dtype), np.diag([*spacing, 1.0]))
    img.header.set_zooms(spacing)
    nib.save(img, str(path))
    return path


def stems(per_domain: int = 2) -> list[str]:
    """``CC0001_siemens_15_50_M`` ... : `per_domain` scans for each domain, ids in fold order."""
    out, n = [], 0
    for domain in DOMAINS:
        for j in range(per_domain):
            n += 1
            out.append(f"CC{n:04d}_{domain}_{40 + n}_{'MF'[j % 2]}")
    return out


def make_official(root: Path, per_domain: int = 2, ext: str = ".nii.gz") -> Path:
    for stem in stems(per_domain):
        spacing = SPACINGS[parse_name(stem)["domain"]]
        save_nifti(root / "Original" / f"{stem}{ext}", spacing)
        save_nifti(root / "Silver-standard" / f"{stem}_ss{ext}", spacing, dtype=np.uint8)
    return root


def make_paper(root: Path, per_domain: int = 2) -> Path:
    """The paper-code layout, meta.csv written by hand (tesla_value 15 / 3, like the original file)."""
    rows = []
    for stem in stems(per_domain):
        name = parse_name(stem)
        spacing = SPACINGS[name["domain"]]
        save_nifti(root / "images" / f"{stem}.nii.gz", spacing)
        save_nifti(root / "masks" / f"{stem}_ss.nii.gz", spacing, dtype=np.uint8)
        tesla = "15" if name["tesla"] == 1.5 else "3"
        rows.append(
            [
                name["id"],
                f"images/{stem}.nii.gz",
                f"masks/{stem}_ss.nii.gz",
                name["fold"],
                name["vendor"],
                tesla,
            ]
            + [str(v) for v in spacing]
        )
    write_rows(root / "meta.csv", META_COLUMNS, rows[::-1])  # unsorted on purpose
    return root


def write_rows(path: Path, header, rows) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def error_of(root) -> str:
    with pytest.raises(DatasetError) as info:
        index_dataset(root)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- names -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stem, expected",
    [
        ("CC0001_philips_15_55_M", ("CC0001", "philips", 1.5, 55, "M", "philips_15", 4)),
        ("CC0187_siemens_3_63_F", ("CC0187", "siemens", 3.0, 63, "F", "siemens_3", 1)),
        ("CC0246_GE_15_60_f", ("CC0246", "ge", 1.5, 60, "F", "ge_15", 2)),
        ("cc0326_Ge_3_55_M.nii.gz", ("CC0326", "ge", 3.0, 55, "M", "ge_3", 3)),
        ("CC0158_SIEMENS_15_53_M.nii", ("CC0158", "siemens", 1.5, 53, "M", "siemens_15", 0)),
        ("CC0114_philips_3_60_M", ("CC0114", "philips", 3.0, 60, "M", "philips_3", 5)),
    ],
)
def test_parse_name(stem, expected):
    name = parse_name(stem)
    assert tuple(name[k] for k in ("id", "vendor", "tesla", "age", "sex", "domain", "fold")) == expected


@pytest.mark.parametrize(
    "stem",
    ["CC0001_canon_15_55_M", "CC0001_siemens_7_55_M", "CC0001_siemens_15_55_X", "CC0001_siemens_15_M",
     "CC0001_siemens_15_55_M_ss", "scan_siemens_15_55_M", ""],
)  # fmt: skip
def test_parse_name_rejects(stem):
    with pytest.raises(ValueError, match="cannot parse scan name") as info:
        parse_name(stem)
    assert repr(stem) in str(info.value)


# --- both layouts -------------------------------------------------------------------------------------------


def check_index(scans: list[Scan], per_domain: int = 2) -> None:
    assert [s.id for s in scans] == sorted(s.id for s in scans)
    assert len(scans) == 6 * per_domain
    for fold, domain in enumerate(DOMAINS):
        group = [s for s in scans if s.domain == domain]
        assert len(group) == per_domain
        assert {s.fold for s in group} == {fold}
        for s in group:
            assert s.spacing == pytest.approx(SPACINGS[domain], abs=1e-6)
            assert len(s.spacing) == 3 and all(isinstance(v, float) for v in s.spacing)
            assert Path(s.image).is_absolute() and Path(s.image).is_file()
            assert Path(s.mask).is_file() and Path(s.mask).name.startswith(
                Path(s.image).name.split(".")[0] + "_ss"
            )
    first = scans[0]
    assert (first.id, first.vendor, first.tesla, first.age, first.sex) == ("CC0001", "siemens", 1.5, 41, "M")
    s3 = scans[per_domain]
    assert (s3.domain, s3.vendor, s3.tesla, s3.fold) == ("siemens_3", "siemens", 3.0, 1)
    assert s3.spacing == pytest.approx((1.33, 1.0, 1.0))


def test_official_layout(tmp_path):
    scans = index_dataset(make_official(tmp_path / "cc359"))
    check_index(scans)
    assert all("/Original/" in Path(s.image).as_posix() for s in scans)


def test_official_layout_plain_nii_and_junk_ignored(tmp_path):
    root = make_official(tmp_path / "cc359", ext=".nii")
    (root / "Original" / "README.txt").write_text("not a scan")
    (root / "Silver-standard" / ".DS_Store").write_bytes(b"\0")
    check_index(index_dataset(root))


def test_paper_layout(tmp_path):
    scans = index_dataset(make_paper(tmp_path / "cc359"))
    check_index(scans)
    assert all("/images/" in Path(s.image).as_posix() and "/masks/" in Path(s.mask).as_posix() for s in scans)


def test_index_accepts_str_and_relative_root(tmp_path, monkeypatch):
    make_official(tmp_path / "cc359")
    monkeypatch.chdir(tmp_path)
    scans = index_dataset("cc359")
    assert all(Path(s.image).is_absolute() for s in scans)


def test_meta_csv_round_trip(tmp_path):
    official = index_dataset(make_official(tmp_path / "cc359"))
    meta = write_meta_csv(official, tmp_path / "cc359" / "meta.csv")
    text = meta.read_text().splitlines()
    assert text[0] == ",".join(META_COLUMNS)
    assert text[1].startswith("CC0001,Original/CC0001_siemens_15_41_M.nii.gz,Silver-standard/")
    assert ",0,siemens,15," in text[1]
    again = index_dataset(tmp_path / "cc359")  # meta.csv now takes precedence
    assert again == official
    assert not list(meta.parent.glob(".*tmp"))


def test_header_only(tmp_path):
    """Spacing comes from the header: a file whose voxel data is cut off still indexes."""
    root = make_official(tmp_path / "cc359", ext=".nii")
    image = root / "Original" / f"{stems()[0]}.nii"
    image.write_bytes(image.read_bytes()[:352])  # header + extension flag, no voxels
    assert index_dataset(root)[0].spacing == (1.0, 1.0, 1.0)


# --- errors -------------------------------------------------------------------------------------------------


def test_missing_root(tmp_path):
    assert "does not exist" in error_of(tmp_path / "nowhere")


def test_root_without_scans(tmp_path):
    message = error_of(tmp_path)
    assert "no scans found" in message and "meta.csv" in message


def test_empty_original(tmp_path):
    (tmp_path / "Original").mkdir()
    (tmp_path / "Silver-standard").mkdir()
    message = error_of(tmp_path)
    assert "no scans found" in message and "Original" in message


def test_missing_mask_folder(tmp_path):
    make_official(tmp_path)
    for p in (tmp_path / "Silver-standard").iterdir():
        p.unlink()
    (tmp_path / "Silver-standard").rmdir()
    assert "Silver-standard" in error_of(tmp_path)


def test_image_without_mask(tmp_path):
    make_official(tmp_path)
    stem = stems()[3]
    (tmp_path / "Silver-standard" / f"{stem}_ss.nii.gz").unlink()
    message = error_of(tmp_path)
    assert f"{stem}.nii.gz" in message and "image without a mask" in message


def test_mask_without_image(tmp_path):
    make_official(tmp_path)
    stem = stems()[5]
    (tmp_path / "Original" / f"{stem}.nii.gz").unlink()
    message = error_of(tmp_path)
    assert f"{stem}_ss.nii.gz" in message and "mask without an image" in message


def test_unparseable_name(tmp_path):
    make_official(tmp_path)
    save_nifti(tmp_path / "Original" / "brain.nii.gz")
    save_nifti(tmp_path / "Silver-standard" / "brain_ss.nii.gz")
    message = error_of(tmp_path)
    assert "brain.nii.gz" in message and "cannot parse" in message


def test_duplicate_ids(tmp_path):
    make_official(tmp_path)
    save_nifti(tmp_path / "Original" / "CC0001_ge_3_70_F.nii.gz")
    save_nifti(tmp_path / "Silver-standard" / "CC0001_ge_3_70_F_ss.nii.gz")
    message = error_of(tmp_path)
    assert "duplicate id CC0001" in message


def test_same_stem_two_extensions(tmp_path):
    make_official(tmp_path)
    save_nifti(tmp_path / "Original" / f"{stems()[0]}.nii")
    assert "duplicate" in error_of(tmp_path)


def test_unreadable_header(tmp_path):
    make_official(tmp_path)
    (tmp_path / "Original" / f"{stems()[0]}.nii.gz").write_bytes(b"not a nifti")
    message = error_of(tmp_path)
    assert "cannot read the NIfTI header" in message and stems()[0] in message


def test_meta_missing_columns(tmp_path):
    make_paper(tmp_path)
    rows = list(csv.reader((tmp_path / "meta.csv").read_text().splitlines()))
    write_rows(tmp_path / "meta.csv", rows[0][:-3], [r[:-3] for r in rows[1:]])
    message = error_of(tmp_path)
    assert "meta.csv" in message and "missing column(s) x, y, z" in message


def test_meta_missing_file(tmp_path):
    make_paper(tmp_path)
    stem = stems()[2]
    (tmp_path / "masks" / f"{stem}_ss.nii.gz").unlink()
    message = error_of(tmp_path)
    assert "meta.csv, line" in message and f"{stem}_ss.nii.gz" in message and "does not exist" in message


def test_meta_missing_image(tmp_path):
    make_paper(tmp_path)
    (tmp_path / "images" / f"{stems()[4]}.nii.gz").unlink()
    assert "MRI file" in error_of(tmp_path)


def test_meta_empty(tmp_path):
    write_rows(tmp_path / "meta.csv", META_COLUMNS, [])
    message = error_of(tmp_path)
    assert "meta.csv" in message and "no scans found" in message


def test_meta_duplicate_ids(tmp_path):
    make_paper(tmp_path)
    rows = list(csv.reader((tmp_path / "meta.csv").read_text().splitlines()))
    write_rows(tmp_path / "meta.csv", rows[0], rows[1:] + [rows[1]])
    assert "duplicate id" in error_of(tmp_path)


def test_meta_bad_values(tmp_path):
    make_paper(tmp_path)
    rows = list(csv.reader((tmp_path / "meta.csv").read_text().splitlines()))
    header, good = rows[0], rows[1:]

    def broken(column, value):
        row = list(good[0])
        row[header.index(column)] = value
        write_rows(tmp_path / "meta.csv", header, [row] + good[1:])
        return error_of(tmp_path)

    assert good[0][header.index("fold")] == "5"  # rows are written last-first: a philips_3 scan
    assert "fold 0 does not match domain philips_3" in broken("fold", "0")
    assert "tomograph_model" in broken("tomograph_model", "canon")
    assert "tesla_value" in broken("tesla_value", "7")
    assert "line 2" in broken("x", "")
    assert "empty brain_mask path" in broken("brain_mask", "")
    write_rows(tmp_path / "meta.csv", header, [good[0][:4]] + good[1:])
    assert "fields" in error_of(tmp_path)


# --- CLI ----------------------------------------------------------------------------------------------------


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "custom.cc359", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_index_and_meta_csv(tmp_path):
    root = make_official(tmp_path / "cc359", per_domain=3)
    result = run_cli("index", root)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for domain in DOMAINS:
        assert any(domain in line and " 3 " in line for line in lines)
    assert "1.330-1.330" in result.stdout and "0.889-0.889" in result.stdout
    assert "total" in lines[-1] and lines[-1].split()[-1] == "18"

    out = tmp_path / "converted" / "meta.csv"
    assert run_cli("meta_csv", root, out).returncode == 0
    assert len(out.read_text().splitlines()) == 19


def test_cli_error_is_one_line(tmp_path):
    result = run_cli("index", tmp_path / "nowhere")
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: ")
    assert "nowhere" in result.stderr
