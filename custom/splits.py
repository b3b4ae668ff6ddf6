"""Seeded, deterministic CC359 splits written as MONAI datalist JSON.

A datalist is ``{"training": [...], "validation": [...], "test": [...]}`` plus informative top-level keys
(``name``, ``source``, ``target``, ``seed``, ``n_add_ids``, ``slice_interval``, ...). Every entry is
``{"image": path, "label": path, "id": "CC0001", "domain": "siemens_15"}``; entries keep the id order.
Read one part with ``monai.data.load_decathlon_datalist(path, data_list_key="training")``.

Randomness: ``random.Random(seed)`` shuffles the id-sorted scans of one domain, so a split depends only on
the seed and the scans of the domains involved (stable across runs, platforms and Python versions).

Command line (``data_dir`` in either layout of `custom.cc359.index_dataset`)::

    python -m custom.splits one2all <data_dir> <out.json> --source siemens_15
    python -m custom.splits oracle  <data_dir> <out.json> --domain ge_3 --fold 0
    python -m custom.splits one2one <data_dir> <out.json> --source siemens_15 --target ge_3 --n_slices 45
    python -m custom.splits budgets
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from custom.cc359 import Scan, check_domain, index_dataset

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
    """A fine-tuning data budget: `n_scans` annotated target scans, every `k`-th slice, ~`n_slices` slices."""

    name: str
    n_scans: int
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
    """``(n_scans, k)`` of the budget with this nominal slice count (5, 8, 12, 24, 45, 90, 270, 540, 800)."""
    for b in BUDGETS:
        if b.n_slices == n_slices:
            return b.n_scans, b.k
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


def _domain_scans(scans: Sequence[Scan], domain: str) -> list[Scan]:
    check_domain(domain)
    found = sorted((s for s in scans if s.domain == domain), key=lambda s: s.id)
    if not found:
        raise ValueError(f"no scans of domain {domain} in the dataset")
    return found


def _shuffled(scans: list[Scan], seed: int) -> list[Scan]:
    scans = list(scans)
    random.Random(seed).shuffle(scans)
    return scans


def _by_id(scans: Sequence[Scan]) -> list[dict]:
    return [_entry(s) for s in sorted(scans, key=lambda s: s.id)]


def one2all(scans: Sequence[Scan], source: str, n_val: int = 4, seed: int = DEFAULT_SEED) -> dict:
    """Baseline: train on `source` minus `n_val` validation scans, test on every scan of the other domains."""
    domain = _domain_scans(scans, source)
    if not 0 <= n_val < len(domain):
        raise ValueError(f"n_val={n_val} must be in [0, {len(domain) - 1}] for {len(domain)} {source} scans")
    order = _shuffled(domain, seed)
    return {
        "name": f"one2all_{source}",
        "source": source,
        "seed": seed,
        "training": _by_id(order[n_val:]),
        "validation": _by_id(order[:n_val]),
        "test": _by_id([s for s in scans if s.domain != source]),
    }


def oracle(
    scans: Sequence[Scan], domain: str, fold: int, n_folds: int = 3, seed: int = DEFAULT_SEED, n_val: int = 4
) -> dict:
    """In-domain cross-validation: fold `fold` of `n_folds` is the test set.

    The domain is shuffled once (same order for every fold) and cut into `n_folds` near-equal parts, so the
    test sets of the folds partition the domain. Validation = `n_val` of the remaining scans, capped at
    ``len(remaining) - 1`` so that at least one training scan is left in a tiny domain.
    """
    members = _domain_scans(scans, domain)
    if not 2 <= n_folds <= len(members):
        raise ValueError(
            f"n_folds={n_folds} must be in [2, {len(members)}] for {len(members)} {domain} scans"
        )
    if not 0 <= fold < n_folds:
        raise ValueError(f"fold={fold} must be in [0, {n_folds - 1}]")
    order = _shuffled(members, seed)
    bounds = [len(order) * i // n_folds for i in range(n_folds + 1)]
    test = order[bounds[fold] : bounds[fold + 1]]
    rest = order[: bounds[fold]] + order[bounds[fold + 1] :]
    n_val = max(0, min(n_val, len(rest) - 1))
    return {
        "name": f"oracle_{domain}_fold{fold}",
        "source": domain,
        "target": domain,
        "fold": fold,
        "n_folds": n_folds,
        "seed": seed,
        "training": _by_id(rest[n_val:]),
        "validation": _by_id(rest[:n_val]),
        "test": _by_id(test),
    }


def one2one(
    scans: Sequence[Scan],
    source: str,
    target: str,
    n_add_ids: int,
    slice_interval: int = 1,
    seed: int = DEFAULT_SEED,
) -> dict:
    """Fine-tuning pair: train on `n_add_ids` target scans, test on the rest of the target domain.

    The annotated scans depend on the target and the seed only (the same for every source), and are nested:
    the first scan of a 2-scan budget is the scan of the 1-scan budget. No validation: the last epoch is kept.
    `source` is recorded for the model to start from; `slice_interval` (k) for the slice sampler.
    """
    check_domain(source)
    members = _domain_scans(scans, target)
    if source == target:
        raise ValueError(f"source and target are both {source}; one2one needs two different domains")
    if not 1 <= n_add_ids <= len(members) - 1:
        raise ValueError(
            f"n_add_ids={n_add_ids} must be in [1, {len(members) - 1}] for {len(members)} {target} scans"
            " (at least one scan must stay for testing)"
        )
    if slice_interval < 1:
        raise ValueError(f"slice_interval must be >= 1, got {slice_interval}")
    order = _shuffled(members, seed)
    return {
        "name": f"one2one_{source}_to_{target}_{n_add_ids}scan_k{slice_interval}",
        "source": source,
        "target": target,
        "seed": seed,
        "n_add_ids": n_add_ids,
        "slice_interval": slice_interval,
        "training": _by_id(order[:n_add_ids]),
        "validation": [],
        "test": _by_id(order[n_add_ids:]),
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
    """Write `datalist` as JSON atomically (temp file + os.replace); parent folders are created.

    ``relative=True`` stores image/label paths relative to the datalist's folder (MONAI's loader resolves
    them against that folder); otherwise they are written as given (absolute from `index_dataset`).
    """
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    if relative:
        datalist = _relative(datalist, path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(datalist, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
    n_val: int = 4,
    seed=DEFAULT_SEED,
    relative=False,
):
    """Oracle split: fold FOLD of N_FOLDS-fold cross-validation inside DOMAIN."""
    check_domain(domain)
    datalist = oracle(index_dataset(data_dir), domain, fold, n_folds=n_folds, seed=_seed(seed), n_val=n_val)
    print(_summary(datalist, write_datalist(datalist, out, relative=relative)))


def _one2one_command(
    data_dir: str,
    out: str,
    source: str,
    target: str,
    n_slices: int | None = None,
    n_add_ids: int | None = None,
    slice_interval: int | None = None,
    seed=DEFAULT_SEED,
    relative=False,
):
    """Fine-tuning split SOURCE -> TARGET: N_SLICES (a budget) or N_ADD_IDS [+ SLICE_INTERVAL, default 1]."""
    check_domain(source)
    check_domain(target)
    if n_slices is not None:
        if n_add_ids is not None or slice_interval is not None:
            raise ValueError("give either --n_slices or --n_add_ids/--slice_interval, not both")
        n_add_ids, slice_interval = budget(n_slices)
    if n_add_ids is None:
        raise ValueError("give --n_slices (one of the budgets) or --n_add_ids")
    datalist = one2one(
        index_dataset(data_dir), source, target, n_add_ids, slice_interval or 1, seed=_seed(seed)
    )
    print(_summary(datalist, write_datalist(datalist, out, relative=relative)))


def _budgets_command():
    """Print the slice budgets: name, scans, k, nominal slices."""
    print(f"{'setup':<6} {'scans':>5} {'k':>3} {'slices':>6}")
    for b in BUDGETS:
        print(f"{b.name:<6} {b.n_scans:>5} {b.k:>3} {b.n_slices:>6}")


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
