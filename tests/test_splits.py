"""custom.splits: budgets, candidate slices, the three split kinds, datalist files and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist

from custom.cc359 import DOMAINS, Scan
from custom.splits import (
    BUDGETS,
    DEFAULT_SEED,
    budget,
    candidate_slices,
    one2all,
    one2one,
    oracle,
    write_datalist,
)

ROOT = Path(__file__).resolve().parents[1]
CC359_COUNTS = {"siemens_15": 60, "siemens_3": 60, "ge_15": 60, "ge_3": 60, "philips_15": 59, "philips_3": 60}
PARTS = ("training", "validation", "test")


def fake_scans(folder: Path, counts: dict[str, int] = CC359_COUNTS) -> list[Scan]:
    """In-memory index with CC359's domain sizes (no files: splits only look at ids and domains)."""
    scans, n = [], 0
    for fold, domain in enumerate(DOMAINS):
        vendor, tesla = domain.split("_")
        for _ in range(counts.get(domain, 0)):
            n += 1
            stem = f"CC{n:04d}_{domain}_50_M"
            scans.append(
                Scan(
                    id=f"CC{n:04d}",
                    image=str(folder / "Original" / f"{stem}.nii.gz"),
                    mask=str(folder / "Silver-standard" / f"{stem}_ss.nii.gz"),
                    domain=domain,
                    fold=fold,
                    vendor=vendor,
                    tesla=1.5 if tesla == "15" else 3.0,
                    age=50,
                    sex="M",
                    spacing=(1.0, 1.0, 1.0),
                )
            )
    return scans[::-1]  # splits must not depend on the input order


@pytest.fixture
def scans(tmp_path) -> list[Scan]:
    return fake_scans(tmp_path / "cc359")


def ids(entries) -> list[str]:
    return [e["id"] for e in entries]


def domain_ids(scans, domain) -> set[str]:
    return {s.id for s in scans if s.domain == domain}


# --- budgets and slices -------------------------------------------------------------------------------------

# docs/PROTOCOL.md, "Slice budgets": setup, scans, k, slices.
PROTOCOL_BUDGETS = [
    ("1/48", 1, 48, 5),
    ("1/36", 1, 36, 8),
    ("1/24", 1, 24, 12),
    ("1/12", 1, 12, 24),
    ("1/6", 1, 6, 45),
    ("1/3", 1, 3, 90),
    ("1", 1, 1, 270),
    ("2", 2, 1, 540),
    ("3", 3, 1, 800),
]


def test_budgets_match_protocol():
    assert [tuple(b) for b in BUDGETS] == PROTOCOL_BUDGETS
    assert [(b.name, b.n_target_scans, b.k, b.n_slices) for b in BUDGETS] == PROTOCOL_BUDGETS
    for _, n_target_scans, k, n_slices in PROTOCOL_BUDGETS:
        assert budget(n_slices) == (n_target_scans, k)
        # The nominal count is what ~270 resampled slices give: within 15 %.
        assert abs(n_target_scans * len(candidate_slices(270, k)) - n_slices) <= 0.15 * n_slices


@pytest.mark.parametrize("bad", [0, 7, 100, 801])
def test_budget_unknown(bad):
    with pytest.raises(ValueError, match="valid: 5, 8, 12, 24, 45, 90, 270, 540, 800"):
        budget(bad)


def test_candidate_slices():
    for n_z in range(0, 300):
        for k in (1, 2, 3, 5, 6, 12, 24, 36, 48, 299, 400):
            picks = candidate_slices(n_z, k)
            assert len(picks) == n_z // k
            assert picks == [i * k for i in range(n_z // k)]
            assert all(0 <= p < n_z for p in picks)
    assert candidate_slices(270, 48) == [0, 48, 96, 144, 192]  # randint(5) * 48: 240 is never drawn
    assert candidate_slices(10, 48) == []


@pytest.mark.parametrize("n_z, k", [(10, 0), (10, -1), (-1, 1)])
def test_candidate_slices_rejects(n_z, k):
    with pytest.raises(ValueError):
        candidate_slices(n_z, k)


# --- one2all ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", DOMAINS)
def test_one2all_composition(scans, source):
    dl = one2all(scans, source)
    train, val, test = (set(ids(dl[p])) for p in PARTS)
    assert len(val) == 4 and len(train) == CC359_COUNTS[source] - 4
    assert train | val == domain_ids(scans, source) and not train & val
    assert test == {s.id for s in scans if s.domain != source}
    assert {e["domain"] for e in dl["test"]} == set(DOMAINS) - {source}
    assert (dl["name"], dl["source"], dl["seed"]) == (f"one2all_{source}", source, DEFAULT_SEED)
    for part in PARTS:
        assert ids(dl[part]) == sorted(ids(dl[part]))
        for e in dl[part]:
            assert set(e) == {"image", "label", "id", "domain"}
            assert (
                e["image"].endswith(".nii.gz") and e["label"].endswith("_ss.nii.gz") and e["id"] in e["image"]
            )


def test_one2all_deterministic(scans, tmp_path):
    assert one2all(scans, "ge_3") == one2all(list(reversed(scans)), "ge_3")
    assert one2all(scans, "ge_3", seed=1) == one2all(fake_scans(tmp_path / "cc359"), "ge_3", seed=1)
    assert ids(one2all(scans, "ge_3")["validation"]) != ids(one2all(scans, "ge_3", seed=1)["validation"])


def test_one2all_errors(scans):
    with pytest.raises(ValueError, match="unknown domain 'canon_3'; valid domains: siemens_15, siemens_3"):
        one2all(scans, "canon_3")
    with pytest.raises(ValueError, match="n_val=60"):
        one2all(scans, "ge_3", n_val=60)
    with pytest.raises(ValueError, match="no scans of domain ge_3"):
        one2all([s for s in scans if s.domain != "ge_3"], "ge_3")


# --- oracle -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("domain", ["siemens_15", "philips_15"])
def test_oracle_folds_partition_the_domain(scans, domain):
    members = domain_ids(scans, domain)
    tests = []
    for fold in range(3):
        dl = oracle(scans, domain, fold)
        train, val, test = (set(ids(dl[p])) for p in PARTS)
        assert train | val | test == members
        assert not (train & val or train & test or val & test)
        assert len(val) == 2  # dpipe's val_size=2
        assert {e["domain"] for p in PARTS for e in dl[p]} == {domain}
        assert (dl["fold"], dl["n_folds"], dl["source"], dl["target"]) == (fold, 3, domain, domain)
        tests.append(test)
    assert set().union(*tests) == members and sum(map(len, tests)) == len(members)
    assert sorted(map(len, tests)) in ([19, 20, 20], [20, 20, 20])


def test_oracle_tiny_domain(tmp_path):
    tiny = fake_scans(tmp_path, {"ge_3": 3})
    dl = oracle(tiny, "ge_3", 0)
    assert [len(dl[p]) for p in PARTS] == [1, 1, 1]  # validation capped so that one scan still trains
    assert [len(oracle(tiny, "ge_3", 2, n_val=0)[p]) for p in PARTS] == [2, 0, 1]


def test_oracle_deterministic_and_errors(scans):
    assert oracle(scans, "ge_15", 1) == oracle(scans[::-1], "ge_15", 1)
    assert ids(oracle(scans, "ge_15", 1)["test"]) != ids(oracle(scans, "ge_15", 1, seed=2)["test"])
    with pytest.raises(ValueError, match="fold=3"):
        oracle(scans, "ge_15", 3)
    with pytest.raises(ValueError, match="n_folds=1"):
        oracle(scans, "ge_15", 0, n_folds=1)
    with pytest.raises(ValueError, match="valid domains"):
        oracle(scans, "GE_15", 0)


# --- one2one ------------------------------------------------------------------------------------------------


def test_one2one_same_target_scans_for_every_source(scans):
    for target in DOMAINS:
        chosen = {
            tuple(ids(one2one(scans, source, target, n_target_scans=1)["training"]))
            for source in DOMAINS
            if source != target
        }
        assert len(chosen) == 1


@pytest.mark.parametrize("n_slices", [b.n_slices for b in BUDGETS])
def test_one2one_composition(scans, n_slices):
    n_target_scans, k = budget(n_slices)
    dl = one2one(scans, "siemens_15", "philips_15", n_target_scans, k)
    train, test = set(ids(dl["training"])), set(ids(dl["test"]))
    assert len(train) == n_target_scans and not train & test
    assert train | test == domain_ids(scans, "philips_15")
    assert dl["validation"] == []
    assert (dl["source"], dl["target"], dl["n_target_scans"], dl["slice_interval"], dl["seed"]) == (
        "siemens_15",
        "philips_15",
        n_target_scans,
        k,
        DEFAULT_SEED,
    )


def test_one2one_deterministic(scans):
    picks = [ids(one2one(scans, "ge_3", "siemens_3", n)["training"]) for n in (1, 2, 3)]
    assert [len(p) for p in picks] == [1, 2, 3]
    assert one2one(scans, "ge_3", "siemens_3", 3) == one2one(scans[::-1], "ge_3", "siemens_3", 3)
    other_seed = [ids(one2one(scans, "ge_3", "siemens_3", 3, seed=s)["training"]) for s in range(1, 4)]
    assert any(p != picks[2] for p in other_seed)


def test_one2one_takes_the_old_keyword_with_a_deprecation_warning(scans):
    with pytest.warns(DeprecationWarning, match="one2one\\(\\): n_add_ids was renamed n_target_scans in 0.3.0"):
        old = one2one(scans, "ge_3", "siemens_3", n_add_ids=2)
    assert old == one2one(scans, "ge_3", "siemens_3", n_target_scans=2)
    with pytest.raises(TypeError, match="both n_add_ids and n_target_scans"):
        one2one(scans, "ge_3", "siemens_3", n_add_ids=2, n_target_scans=2)


def test_one2one_errors(scans):
    with pytest.raises(ValueError, match=r"n_target_scans=60 must be in \[1, 59\]"):
        one2one(scans, "ge_3", "siemens_3", 60)
    with pytest.raises(ValueError, match=r"n_target_scans=59 must be in \[1, 58\]"):
        one2one(scans, "ge_3", "philips_15", 59)
    one2one(scans, "ge_3", "philips_15", 58)
    with pytest.raises(ValueError, match="n_target_scans=0"):
        one2one(scans, "ge_3", "siemens_3", 0)
    with pytest.raises(ValueError, match="two different domains"):
        one2one(scans, "ge_3", "ge_3", 1)
    with pytest.raises(ValueError, match="slice_interval"):
        one2one(scans, "ge_3", "siemens_3", 1, slice_interval=0)
    for source, target in (("nope", "ge_3"), ("ge_3", "nope")):
        with pytest.raises(ValueError, match="unknown domain 'nope'"):
            one2one(scans, source, target, 1)


# --- datalist files -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("relative", [False, True])
def test_datalist_round_trip_through_monai(scans, tmp_path, relative):
    by_id = {s.id: s for s in scans}
    for name, dl in {
        "one2all": one2all(scans, "siemens_3"),
        "oracle": oracle(scans, "ge_15", 2),
        "one2one": one2one(scans, "siemens_3", "ge_15", 2, 24),
    }.items():
        path = write_datalist(dl, tmp_path / "datalists" / "nested" / f"{name}.json", relative=relative)
        stored = json.loads(path.read_text())
        assert {k: v for k, v in stored.items() if k not in PARTS} == {
            k: v for k, v in dl.items() if k not in PARTS
        }
        first = stored["training"][0]["image"]
        assert Path(first).is_absolute() != relative
        for part in PARTS:
            loaded = load_decathlon_datalist(path, data_list_key=part)
            assert ids(loaded) == ids(dl[part])
            for e in loaded:
                assert Path(e["image"]) == Path(by_id[e["id"]].image)
                assert Path(e["label"]) == Path(by_id[e["id"]].mask)
                assert e["domain"] == by_id[e["id"]].domain
    assert sorted(p.name for p in (tmp_path / "datalists" / "nested").iterdir()) == [
        "one2all.json",
        "one2one.json",
        "oracle.json",
    ]  # no temporary files left behind


def test_write_datalist_replaces(tmp_path, scans):
    path = tmp_path / "dl.json"
    path.write_text("old")
    write_datalist(one2all(scans, "ge_3"), path)
    assert json.loads(path.read_text())["name"] == "one2all_ge_3"


# --- CLI ----------------------------------------------------------------------------------------------------


def make_dataset(root: Path, per_domain: int = 5) -> Path:
    n = 0
    for domain in DOMAINS:
        for _ in range(per_domain):
            n += 1
            stem = f"CC{n:04d}_{domain}_50_F"
            for sub, suffix in (("Original", ""), ("Silver-standard", "_ss")):
                (root / sub).mkdir(parents=True, exist_ok=True)
                nib.save(
                    nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)),
                    str(root / sub / f"{stem}{suffix}.nii.gz"),
                )
    return root


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "custom.splits", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_writes_datalists(tmp_path):
    data = make_dataset(tmp_path / "cc359")
    out = tmp_path / "splits"

    result = run_cli("one2all", data, out / "one2all.json", "--source", "siemens_15", "--n_val", "1")
    assert result.returncode == 0, result.stderr
    assert [len(load_decathlon_datalist(out / "one2all.json", data_list_key=p)) for p in PARTS] == [4, 1, 25]

    result = run_cli("oracle", data, out / "oracle.json", "--domain", "ge_3", "--fold", "1", "--relative")
    assert result.returncode == 0, result.stderr
    stored = json.loads((out / "oracle.json").read_text())
    assert stored["seed"] == 0xBADCAFE and not Path(stored["test"][0]["image"]).is_absolute()
    assert all(
        Path(e["image"]).is_file() for e in load_decathlon_datalist(out / "oracle.json", data_list_key="test")
    )

    result = run_cli(
        "one2one", data, out / "o2o.json", "--source", "ge_3", "--target", "philips_3", "--n_slices", 540
    )
    assert result.returncode == 0, result.stderr
    stored = json.loads((out / "o2o.json").read_text())
    assert (stored["n_target_scans"], stored["slice_interval"], len(stored["training"]), len(stored["test"])) == (
        2,
        1,
        2,
        3,
    )
    assert "o2o.json" in result.stdout

    result = run_cli("one2one", data, out / "o2o_k.json", "--source", "ge_3", "--target", "philips_3",
                     "--n_target_scans", 1, "--slice_interval", 48, "--seed", 7)  # fmt: skip
    assert result.returncode == 0, result.stderr
    stored = json.loads((out / "o2o_k.json").read_text())
    assert (stored["n_target_scans"], stored["slice_interval"], stored["seed"]) == (1, 48, 7)


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ("one2all", "{data}", "{out}", "--source", "canon_3"),
            "unknown domain 'canon_3'; valid domains: siemens_15",
        ),
        (("oracle", "{data}", "{out}", "--domain", "ge", "--fold", 0), "valid domains"),
        (
            ("one2one", "{data}", "{out}", "--source", "ge_3", "--target", "x", "--n_slices", 5),
            "valid domains",
        ),
        (
            ("one2one", "{data}", "{out}", "--source", "ge_3", "--target", "ge_15", "--n_slices", 6),
            "valid: 5, 8",
        ),
        (
            ("one2one", "{data}", "{out}", "--source", "ge_3", "--target", "ge_15", "--n_target_scans", 5),
            "n_target_scans=5",
        ),
        (
            ("one2one", "{data}", "{out}", "--source", "ge_3", "--target", "ge_15", "--n_add_ids", 1),
            "error: --n_add_ids was renamed --n_target_scans in 0.3.0: use --n_target_scans\n",
        ),
        (("one2all", "{nowhere}", "{out}", "--source", "ge_3"), "does not exist"),
    ],
)
def test_cli_errors(tmp_path, args, message):
    paths = {
        "data": make_dataset(tmp_path / "cc359"),
        "out": tmp_path / "dl.json",
        "nowhere": tmp_path / "nowhere",
    }
    result = run_cli(*(str(a).format(**paths) for a in args))
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ") and message in result.stderr
    assert not (tmp_path / "dl.json").exists()


# --- the authors' scans ---------------------------------------------------------------------------------------

def _authors_scans(folder: Path) -> tuple[list[Scan], dict[str, list[str]]]:
    """Every CC359 scan (ids and domains of the authors' meta.csv), listed in a scrambled order."""
    import csv
    import dataclasses
    import random

    with open(ROOT / "custom" / "resources" / "cc359_authors_order.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    order = {d: [r["id"] for r in rows if r["domain"] == d] for d in DOMAINS}
    template = fake_scans(folder, {"siemens_15": 1})[0]
    scans = [dataclasses.replace(template, id=r["id"], domain=r["domain"]) for r in rows]
    random.Random(1).shuffle(scans)
    return scans, order


def test_splits_pick_the_authors_scans(tmp_path):
    """Expected values derived here from the authors' algorithm: sklearn over their meta.csv order, seed
    0xBadCafe; the oracle as dpipe's train_val_test_split (KFold test folds, ShuffleSplit validation)."""
    import numpy as np
    from sklearn.model_selection import KFold, ShuffleSplit, train_test_split

    scans, order = _authors_scans(tmp_path)
    assert sum(map(len, order.values())) == 359
    for domain, domain_order in order.items():
        expected_val = train_test_split(domain_order, test_size=4, random_state=0xBadCafe)[1]
        assert set(ids(one2all(scans, domain)["validation"])) == set(expected_val)
        for n in (1, 2, 3):
            target = next(d for d in DOMAINS if d != domain)
            annotated = train_test_split(order[target], test_size=n, random_state=0xBadCafe)[1]
            dl = one2one(scans, domain, target, n)
            assert set(ids(dl["training"])) == set(annotated)
            assert set(ids(dl["test"])) == set(order[target]) - set(annotated)
        index = np.arange(len(domain_order))
        for fold, (train_val, test) in enumerate(KFold(3, shuffle=True, random_state=0xBadCafe).split(index)):
            _, val = next(ShuffleSplit(test_size=2, random_state=0xBadCafe).split(train_val))
            dl = oracle(scans, domain, fold)
            assert set(ids(dl["test"])) == {domain_order[i] for i in test}
            assert set(ids(dl["validation"])) == {domain_order[i] for i in train_val[val]}


def test_crop_modes():
    """random: a random window along a long side; centre_if_small (the authors' dpipe crop): centred on both axes
    when a side is shorter than the crop, start n // 2 - size // 2, padded with the window's minimum."""
    import numpy as np

    from custom.data import crop_or_pad

    image = np.arange(1 * 217 * 300, dtype=np.float32).reshape(1, 217, 300) + 5
    label = np.ones_like(image, dtype=np.uint8)
    starts = set()
    for seed in range(5):
        img, lbl = crop_or_pad(image, label, (256, 256), np.random.default_rng(seed), "centre_if_small")
        assert img.shape == lbl.shape == (1, 256, 256)
        rows = np.flatnonzero(lbl[0].any(1))
        assert (rows[0], rows[-1]) == (20, 236)  # 217 // 2 - 128 = -20: 20 rows of padding before
        assert img[0, 20, 0] == image[0, 0, 150 - 128] and img[0, 0, 0] == image[0, 0, 22]
        img, _ = crop_or_pad(image, label, (256, 256), np.random.default_rng(seed), "random")
        starts.add(float(img[0, 19, 0]))
    assert len(starts) > 1  # the random mode moves the window along the long side
    big = np.random.default_rng(0).random((1, 300, 280)).astype(np.float32)
    a, _ = crop_or_pad(big, big > 0.5, (256, 256), np.random.default_rng(3), "centre_if_small")
    b, _ = crop_or_pad(big, big > 0.5, (256, 256), np.random.default_rng(3), "random")
    assert np.array_equal(a, b)  # both sides long enough: the same random window
    with pytest.raises(ValueError, match="crop mode"):
        crop_or_pad(image, label, (256, 256), np.random.default_rng(0), "middle")
