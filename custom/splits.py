"""Seeded, deterministic CC359 splits written as MONAI datalist JSON.

A datalist is ``{"training": [...], "validation": [...], "test": [...]}`` plus informative top-level keys
(``name``, ``source``, ``target``, ``seed``, ``n_target_scans``, ``slice_interval``, ...). Every entry is
``{"image": path, "label": path, "id": "CC0001", "domain": "siemens_15"}``; entries keep the id order.
Read one part with ``monai.data.load_decathlon_datalist(path, data_list_key="training")``.

Which scans: the authors' algorithm (DART20 code). A domain's ids are put in the order of the authors' ``meta.csv``
(``custom/resources/cc359_authors_order.csv``) when every one of them is a CC359 scan of that domain there, else in id
order (other datasets, the demo data); the order the files are found in never matters. Then scikit-learn with
``random_state=0xBadCafe``: one2all holds out ``train_test_split(ids, test_size=n_val)[1]`` for validation; one2one
annotates ``train_test_split(ids, test_size=n_target_scans)[1]`` (the authors' ``n_add_ids``) and tests on the rest;
the oracle folds are dpipe's
``train_val_test_split(ids, val_size, n_splits)``: ``KFold(n_splits, shuffle=True)`` test folds, then a
``ShuffleSplit(test_size=val_size)`` of the rest for validation.

Command line (``data_dir`` in either layout of `custom.cc359.index_dataset`)::

    python -m custom.splits one2all <data_dir> <out.json> --source siemens_15
    python -m custom.splits oracle  <data_dir> <out.json> --domain ge_3 --fold 0
    python -m custom.splits one2one <data_dir> <out.json> --source siemens_15 --target ge_3 --n_slices 45
    python -m custom.splits budgets
"""

from __future__ import annotations

import csv
import functools
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from custom.cc359 import Scan, check_domain, index_dataset
from custom.options import renamed_keyword

__all__ = [
    "BUDGETS",
    "DEFAULT_SEED",
    "Budget",
    "budget",
    "candidate_slices",
    "main",
    "one2all",
    "one2one",
    "oracle",
    "write_datalist",
]

DEFAULT_SEED = 0xBADCAFE


class Budget(NamedTuple):
    """A fine-tuning data budget: `n_target_scans` annotated target scans, every `k`-th slice, ~`n_slices` slices."""

    name: str
    n_target_scans: int
    k: int
    n_slices: int


# Nominal slice counts assume n_z ~ 270 slices per scan after resampling.
BUDGETS: tuple[Budget, ...] = (
    Budget("1/48", 1, 48, 5),
    Budget("1/36", 1, 36, 8),
    Budget("1/24", 1, 24, 12),
    Budget("1/12", 1, 12, 24),
    Budget("1/6", 1, 6, 45),
    Budget("1/3", 1, 3, 90),
    Budget("1", 1, 1, 270),
    Budget("2", 2, 1, 540),
    Budget("3", 3, 1, 800),
)


def budget(n_slices: int) -> tuple[int, int]:
    """``(n_target_scans, k)`` of the budget with this nominal slice count (5, 8, 12, 24, 45, 90, 270, 540, 800)."""
    for b in BUDGETS:
        if b.n_slices == n_slices:
            return b.n_target_scans, b.k
    valid = ", ".join(str(b.n_slices) for b in BUDGETS)
    raise ValueError(f"no slice budget of {n_slices!r} slices; valid: {valid}")


def candidate_slices(n_z: int, k: int) -> list[int]:
    """The slice indices (last axis) a scan of `n_z` slices offers at interval `k`: ``[0, k, 2k, ...]``.

    Exactly ``n_z // k`` of them, as the paper draws ``randint(n_z // k) * k``; empty when ``n_z < k``.
    """
    if k < 1 or n_z < 0:
        raise ValueError(f"need k >= 1 and n_z >= 0, got n_z={n_z}, k={k}")
    return list(range(0, (n_z // k) * k, k))


def _entry(scan: Scan) -> dict:
    return {"image": scan.image, "label": scan.mask, "id": scan.id, "domain": scan.domain}


AUTHORS_ORDER = Path(__file__).resolve().parent / "resources" / "cc359_authors_order.csv"


@functools.cache
def _authors_rank() -> dict[tuple[str, str], int]:
    """(id, domain) -> row of the authors' meta.csv."""
    with open(AUTHORS_ORDER, newline="") as f:
        return {(row["id"], row["domain"]): i for i, row in enumerate(csv.DictReader(f))}


def _domain_scans(scans: Sequence[Scan], domain: str) -> list[Scan]:
    """The domain's scans in the authors' order (all of them CC359 scans of that domain), else in id order."""
    check_domain(domain)
    found = sorted((s for s in scans if s.domain == domain), key=lambda s: s.id)
    if not found:
        raise ValueError(f"no scans of domain {domain} in the dataset")
    rank = _authors_rank()
    if all((s.id, s.domain) in rank for s in found):
        found.sort(key=lambda s: rank[(s.id, s.domain)])
    return found


def _hold_out(scans: list[Scan], n: int, seed: int) -> tuple[list[Scan], list[Scan]]:
    """``train_test_split(scans, test_size=n, random_state=seed)``: (the rest, the ``n`` held out)."""
    if n == 0:
        return list(scans), []
    from sklearn.model_selection import train_test_split

    rest, held = train_test_split(list(scans), test_size=n, random_state=seed)
    return list(rest), list(held)


def _by_id(scans: Sequence[Scan]) -> list[dict]:
    return [_entry(s) for s in sorted(scans, key=lambda s: s.id)]


def one2all(scans: Sequence[Scan], source: str, n_val: int = 4, seed: int = DEFAULT_SEED) -> dict:
    """Baseline: train on `source` minus `n_val` validation scans, test on every scan of the other domains."""
    domain = _domain_scans(scans, source)
    if not 0 <= n_val < len(domain):
        raise ValueError(f"n_val={n_val} must be in [0, {len(domain) - 1}] for {len(domain)} {source} scans")
    training, validation = _hold_out(domain, n_val, seed)
    return {
        "name": f"one2all_{source}",
        "source": source,
        "seed": seed,
        "training": _by_id(training),
        "validation": _by_id(validation),
        "test": _by_id([s for s in scans if s.domain != source]),
    }


def oracle(
    scans: Sequence[Scan], domain: str, fold: int, n_folds: int = 3, seed: int = DEFAULT_SEED, n_val: int = 2
) -> dict:
    """In-domain cross-validation: fold `fold` of `n_folds` is the test set (dpipe's ``train_val_test_split``).

    The test sets of the folds partition the domain (``KFold(n_folds, shuffle=True, random_state=seed)``);
    validation = ``n_val`` of the remaining scans (``ShuffleSplit``, the same seed), capped at
    ``len(remaining) - 1`` so that at least one training scan is left in a tiny domain.
    """
    members = _domain_scans(scans, domain)
    if not 2 <= n_folds <= len(members):
        raise ValueError(
            f"n_folds={n_folds} must be in [2, {len(members)}] for {len(members)} {domain} scans"
        )
    if not 0 <= fold < n_folds:
        raise ValueError(f"fold={fold} must be in [0, {n_folds - 1}]")
    from sklearn.model_selection import KFold, ShuffleSplit

    rest_index, test_index = list(KFold(n_folds, shuffle=True, random_state=seed).split(members))[fold]
    test = [members[i] for i in test_index]
    rest = [members[i] for i in rest_index]
    n_val = max(0, min(n_val, len(rest) - 1))
    val_index = set(next(ShuffleSplit(test_size=n_val, random_state=seed).split(rest))[1]) if n_val else set()
    validation = [s for i, s in enumerate(rest) if i in val_index]
    return {
        "name": f"oracle_{domain}_fold{fold}",
        "source": domain,
        "target": domain,
        "fold": fold,
        "n_folds": n_folds,
        "seed": seed,
        "training": _by_id([s for i, s in enumerate(rest) if i not in val_index]),
        "validation": _by_id(validation),
        "test": _by_id(test),
    }


@renamed_keyword("n_add_ids")
def one2one(
    scans: Sequence[Scan],
    source: str,
    target: str,
    n_target_scans: int,
    slice_interval: int = 1,
    seed: int = DEFAULT_SEED,
) -> dict:
    """Fine-tuning pair: train on `n_target_scans` annotated target scans, test on the rest of the target domain.

    The annotated scans depend on the target and the seed only (the same for every source): the authors'
    ``train_test_split(ids, test_size=n_add_ids)`` with their ``n_add_ids`` = `n_target_scans`. No validation: the
    last epoch is kept. `source` is recorded for the model to start from; `slice_interval` (k) for the slice sampler.
    """
    check_domain(source)
    members = _domain_scans(scans, target)
    if source == target:
        raise ValueError(f"source and target are both {source}; one2one needs two different domains")
    if not 1 <= n_target_scans <= len(members) - 1:
        raise ValueError(
            f"n_target_scans={n_target_scans} must be in [1, {len(members) - 1}] for {len(members)} {target} scans"
            " (at least one scan must stay for testing)"
        )
    if slice_interval < 1:
        raise ValueError(f"slice_interval must be >= 1, got {slice_interval}")
    test, annotated = _hold_out(members, n_target_scans, seed)
    return {
        "name": f"one2one_{source}_to_{target}_{n_target_scans}scan_k{slice_interval}",
        "source": source,
        "target": target,
        "seed": seed,
        "n_target_scans": n_target_scans,
        "slice_interval": slice_interval,
        "training": _by_id(annotated),
        "validation": [],
        "test": _by_id(test),
    }


def _relative(datalist: dict, folder: Path) -> dict:
    def rel(path: str) -> str:
        return Path(os.path.relpath(path, folder)).as_posix()

    out = dict(datalist)
    for part in ("training", "validation", "test"):
        out[part] = [
            {**e, "image": rel(e["image"]), "label": rel(e["label"])} for e in datalist.get(part, [])
        ]
    return out


def write_datalist(datalist: dict, path: str | os.PathLike, relative: bool = False) -> Path:
    """Write `datalist` as JSON atomically (``custom.checkpoints.atomic_write``); parent folders are created.

    ``relative=True`` stores image/label paths relative to the datalist's folder (MONAI's loader resolves
    them against that folder); otherwise they are written as given (absolute from `index_dataset`).
    """
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    if relative:
        datalist = _relative(datalist, path.parent)
    from custom.checkpoints import atomic_write_text

    return atomic_write_text(path, json.dumps(datalist, indent=2) + "\n")


def _seed(seed: int | str) -> int:
    return int(seed, 0) if isinstance(seed, str) else int(seed)


def _summary(datalist: dict, path: Path) -> str:
    sizes = ", ".join(f"{len(datalist[p])} {p}" for p in ("training", "validation", "test"))
    return f"{path}: {datalist['name']} ({sizes})"


def _one2all_command(data_dir: str, out: str, source: str, n_val: int = 4, seed=DEFAULT_SEED, relative=False):
    """Baseline split: train on SOURCE (minus N_VAL validation scans), test on the other five domains."""
    check_domain(source)
    datalist = one2all(index_dataset(data_dir), source, n_val=n_val, seed=_seed(seed))
    print(_summary(datalist, write_datalist(datalist, out, relative=relative)))


def _oracle_command(
    data_dir: str,
    out: str,
    domain: str,
    fold: int,
    n_folds: int = 3,
    n_val: int = 2,
    seed=DEFAULT_SEED,
    relative=False,
):
    """Oracle split: fold FOLD of N_FOLDS-fold cross-validation inside DOMAIN."""
    check_domain(domain)
    datalist = oracle(index_dataset(data_dir), domain, fold, n_folds=n_folds, seed=_seed(seed), n_val=n_val)
    print(_summary(datalist, write_datalist(datalist, out, relative=relative)))


@renamed_keyword("n_add_ids")
def _one2one_command(
    data_dir: str,
    out: str,
    source: str,
    target: str,
    n_slices: int | None = None,
    n_target_scans: int | None = None,
    slice_interval: int | None = None,
    seed=DEFAULT_SEED,
    relative=False,
):
    """Fine-tuning split SOURCE -> TARGET: N_SLICES (a budget) or N_TARGET_SCANS [+ SLICE_INTERVAL, default 1]."""
    check_domain(source)
    check_domain(target)
    if n_slices is not None:
        if n_target_scans is not None or slice_interval is not None:
            raise ValueError("give either --n_slices or --n_target_scans/--slice_interval, not both")
        n_target_scans, slice_interval = budget(n_slices)
    if n_target_scans is None:
        raise ValueError("give --n_slices (one of the budgets) or --n_target_scans")
    datalist = one2one(
        index_dataset(data_dir), source, target, n_target_scans, slice_interval or 1, seed=_seed(seed)
    )
    print(_summary(datalist, write_datalist(datalist, out, relative=relative)))


def _budgets_command():
    """Print the slice budgets: name, scans, k, nominal slices."""
    print(f"{'setup':<6} {'scans':>5} {'k':>3} {'slices':>6}")
    for b in BUDGETS:
        print(f"{b.name:<6} {b.n_target_scans:>5} {b.k:>3} {b.n_slices:>6}")


COMMANDS = {
    "one2all": _one2all_command,
    "oracle": _oracle_command,
    "one2one": _one2one_command,
    "budgets": _budgets_command,
}


def main(argv: Sequence[str] | None = None) -> None:
    import fire

    from custom.options import refuse_unknown_options

    try:
        fire.Fire(COMMANDS, command=refuse_unknown_options(COMMANDS, argv, "error: "))
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
