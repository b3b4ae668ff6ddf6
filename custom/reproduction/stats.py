"""Statistics of the paper's comparison, computed from per-scan result rows (one row per run x test scan).

A row is a mapping with at least ``source, target, strategy, n_slices, id, surface_dice`` (``dice`` too):

* ``strategy == "baseline"``: the source model on a scan of another domain (``n_slices`` empty);
* ``strategy == "oracle"``: in-domain 3-fold cross-validation (``source == target``, ``n_slices`` empty);
* ``strategy`` in ``first | last | full``: a model fine-tuned with ``n_slices`` (a slice budget) on the target.

Definitions (docs/PROTOCOL.md):

* a pair's score for a run is the mean surface Dice over that run's test scans;
* a strategy *wins* a (pair, budget) if its mean is the highest; if the two highest means are equal (within
  ``TIE_TOLERANCE``) the (pair, budget) is a *tie* and nobody wins it;
* significance: an exact two-sided sign test of the winner against the runner-up over the pair's test scans
  (paired by scan id; scans where both are equal are dropped), on two quantities: the per-scan surface Dice, and,
  as the authors' code, the per-scan gap closed ``(ft_i - base_i) / (oracle_i - base_i)`` (`gap_sign_tests`;
  undefined, and dropped, on a scan without a baseline or oracle value or where ``oracle_i == base_i``). The two
  differ on the scans where the oracle is below the baseline: a negative denominator flips the sign;
* gap closed = ``(sDice_ft - sDice_base) / (sDice_oracle - sDice_base)``, all three means over the SAME test
  scans (the fine-tuned model's), undefined when the oracle does not beat the baseline there.

Plain Python + numpy; every function takes an iterable of row dicts and returns plain containers.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

__all__ = [
    "FIXED_STRATEGIES",
    "PairResult",
    "SignTest",
    "baseline_matrix",
    "gap_closed",
    "gap_closed_summary",
    "gap_sign_tests",
    "gap_win_counts",
    "per_scan_gap_closed",
    "pair_results",
    "sign_test",
    "strategy_means",
    "win_counts",
]

FIXED_STRATEGIES = ("first", "last", "full")
REFERENCE = ("baseline", "oracle")
TIE_TOLERANCE = 1e-9  # top means closer than this are equal (summation noise of 6-decimal per-scan values)


class SignTest(NamedTuple):
    """Exact two-sided sign test: ``p``; ``n_plus`` pairs with x > y, ``n_minus`` with x < y, ``n_ties`` equal."""

    p: float
    n_plus: int
    n_minus: int
    n_ties: int


def _binom_cdf_half(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), exactly (integer arithmetic, one division)."""
    if k < 0:
        return 0.0
    return sum(math.comb(n, i) for i in range(min(k, n) + 1)) / 2**n


def sign_test(x: Sequence[float], y: Sequence[float]) -> SignTest:
    """Two-sided exact sign test of paired samples ``x`` and ``y`` (equal length).

    Ties (x == y) and pairs with a NaN are dropped. ``p = min(1, 2 * P(X <= min(n+, n-)))`` with
    ``X ~ Binomial(n+ + n-, 1/2)``, which equals ``scipy.stats.binomtest(n+, n+ + n-, 0.5).pvalue``.
    With no informative pair ``p = 1``.
    """
    if len(x) != len(y):
        raise ValueError(f"sign_test needs paired samples of equal length, got {len(x)} and {len(y)}")
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    valid = ~(np.isnan(a) | np.isnan(b))
    diff = a[valid] - b[valid]
    n_plus, n_minus = int((diff > 0).sum()), int((diff < 0).sum())
    n_ties = int((diff == 0).sum())
    n = n_plus + n_minus
    p = 1.0 if n == 0 else min(1.0, 2.0 * _binom_cdf_half(min(n_plus, n_minus), n))
    return SignTest(p, n_plus, n_minus, n_ties)


def _float(value) -> float:
    if value is None or value == "":
        return math.nan
    return float(value)


def _budget(value) -> int | None:
    return None if value is None or value == "" else int(value)


def _defined(values: Iterable[float]) -> np.ndarray:
    """``values`` without NaNs, as a float array."""
    arr = np.asarray(list(values), dtype=float)
    return arr[~np.isnan(arr)]


def _mean(values: Iterable[float]) -> float:
    arr = _defined(values)
    return float(arr.mean()) if arr.size else math.nan


def _describe(values: Iterable[float], **statistics) -> dict[str, float | int]:
    """Each named statistic of the defined (non-NaN) ``values`` (NaN when there are none) and their count."""
    arr = _defined(values)
    return {**{name: float(f(arr)) if arr.size else math.nan for name, f in statistics.items()}, "pairs": int(arr.size)}


def _scores(rows: Iterable[Mapping], metric: str = "surface_dice") -> dict[tuple, dict[str, float]]:
    """``{(strategy, source, target, n_slices): {scan id: value}}``."""
    out: dict[tuple, dict[str, float]] = defaultdict(dict)
    for row in rows:
        key = (row["strategy"], row["source"], row["target"], _budget(row.get("n_slices")))
        scan = str(row["id"])
        if scan in out[key]:
            raise ValueError(f"scan {scan} appears twice for {key}")
        out[key][scan] = _float(row[metric])
    return dict(out)


def baseline_matrix(rows: Iterable[Mapping], metric: str = "surface_dice") -> dict[tuple[str, str], float]:
    """Mean ``metric`` per (source, target): the baseline off the diagonal; on it the oracle when present, else
    the baseline's own in-domain rows (a source model on held-out scans of its own domain), if any."""
    matrix = {}
    scores = _scores(rows, metric)
    for strategy in REFERENCE:  # the oracle last: it takes the diagonal
        for (kind, source, target, _), per_scan in scores.items():
            if kind == strategy:
                matrix[(source, target)] = _mean(per_scan.values())
    return matrix


class PairResult(NamedTuple):
    """One (source, target, budget): each strategy's mean, the winner (None on a tie) and its sign test."""

    source: str
    target: str
    n_slices: int
    means: dict[str, float]
    n_scans: int
    winner: str | None
    runner_up: str | None
    test: SignTest | None


def pair_results(
    rows: Iterable[Mapping], strategies: Sequence[str] = FIXED_STRATEGIES, metric: str = "surface_dice"
) -> list[PairResult]:
    """Winner and runner-up of every (pair, budget) that has results for at least two ``strategies``.

    The sign test pairs the winner's and the runner-up's values by scan id over the scans both were tested on.
    Sorted by (n_slices, source, target).
    """
    scores = _scores(rows, metric)
    groups: dict[tuple, dict[str, dict[str, float]]] = defaultdict(dict)
    for (strategy, source, target, n_slices), per_scan in scores.items():
        if strategy in strategies:
            groups[(source, target, n_slices)][strategy] = per_scan
    out = []
    for (source, target, n_slices), by_strategy in sorted(groups.items(), key=lambda kv: (kv[0][2], kv[0][:2])):
        means = {s: _mean(by_strategy[s].values()) for s in strategies if s in by_strategy}
        ranked = sorted((m, s) for s, m in means.items() if not math.isnan(m))
        n_scans = max(len(v) for v in by_strategy.values())
        if len(ranked) < 2:
            out.append(PairResult(source, target, n_slices, means, n_scans, None, None, None))
            continue
        (best, winner), (second, runner_up) = ranked[-1], ranked[-2]
        common = sorted(set(by_strategy[winner]) & set(by_strategy[runner_up]))
        test = sign_test([by_strategy[winner][i] for i in common], [by_strategy[runner_up][i] for i in common])
        if best - second <= TIE_TOLERANCE:  # a tie at the top: no winner; the order of the two is arbitrary
            out.append(PairResult(source, target, n_slices, means, n_scans, None, runner_up, test))
        else:
            out.append(PairResult(source, target, n_slices, means, n_scans, winner, runner_up, test))
    return out


def win_counts(
    results: Iterable[PairResult], strategies: Sequence[str] = FIXED_STRATEGIES, alphas: Sequence[float] = (0.1, 0.05)
) -> dict[int, dict[str, int]]:
    """Per budget: wins per strategy, ``ties``, ``pairs``, and ``<strategy>@p<alpha`` significant wins."""
    counts: dict[int, dict[str, int]] = {}
    for r in results:
        c = counts.setdefault(
            r.n_slices,
            {**{s: 0 for s in strategies}, **{f"{s}@p<{a:g}": 0 for s in strategies for a in alphas}, "ties": 0,
             "pairs": 0},
        )
        c["pairs"] += 1
        if r.winner is None:
            c["ties"] += r.runner_up is not None
            continue
        c[r.winner] += 1
        for a in alphas:
            c[f"{r.winner}@p<{a:g}"] += r.test.p < a
    return dict(sorted(counts.items()))


def strategy_means(
    rows: Iterable[Mapping], metric: str = "surface_dice"
) -> dict[tuple[str, int], dict[str, float | int | list]]:
    """Per (strategy, n_slices): ``mean``, ``std``, ``min``, ``max`` over pairs of the per-pair means, ``pairs``.

    Also ``baseline`` and ``oracle`` per budget, restricted to the scans the fine-tuned models of that budget and
    pair were tested on (so each budget compares like with like).
    """
    scores = _scores(rows, metric)
    per_pair: dict[tuple[str, int], list[float]] = defaultdict(list)
    tested: dict[tuple[str, str, int], set[str]] = defaultdict(set)
    for (strategy, source, target, n_slices), per_scan in scores.items():
        if strategy not in REFERENCE:
            per_pair[(strategy, n_slices)].append(_mean(per_scan.values()))
            tested[(source, target, n_slices)] |= set(per_scan)
    for (source, target, n_slices), ids in tested.items():
        base = scores.get(("baseline", source, target, None), {})
        oracle = scores.get(("oracle", target, target, None), {})
        for name, ref in (("baseline", base), ("oracle", oracle)):
            if ids and ids <= set(ref):
                per_pair[(name, n_slices)].append(_mean(ref[i] for i in ids))
    out = {}
    for key, values in per_pair.items():
        out[key] = _describe(values, mean=np.mean, std=np.std, min=np.min, max=np.max)
    return out


def gap_closed(rows: Iterable[Mapping], metric: str = "surface_dice") -> list[dict]:
    """Per fine-tuned (strategy, pair, budget): ``base``, ``oracle``, ``ft`` means over the fine-tuned model's test
    scans and ``gap = (ft - base) / (oracle - base)`` (NaN when the oracle or baseline does not cover those scans,
    or ``oracle <= base``)."""
    scores = _scores(rows, metric)
    out = []
    order = sorted(scores.items(), key=lambda kv: (kv[0][3] or 0, kv[0][1], kv[0][2], kv[0][0]))
    for (strategy, source, target, n_slices), per_scan in order:
        if strategy in REFERENCE:
            continue
        ids = set(per_scan)
        base = scores.get(("baseline", source, target, None), {})
        oracle = scores.get(("oracle", target, target, None), {})
        b = _mean(base[i] for i in ids) if ids <= set(base) else math.nan
        o = _mean(oracle[i] for i in ids) if ids <= set(oracle) else math.nan
        f = _mean(per_scan.values())
        gap = (f - b) / (o - b) if not (math.isnan(b) or math.isnan(o)) and o > b else math.nan
        out.append({"strategy": strategy, "source": source, "target": target, "n_slices": n_slices,
                    "base": b, "oracle": o, "ft": f, "gap": gap})
    return out


def gap_closed_summary(gaps: Iterable[Mapping]) -> dict[tuple[str, int], dict[str, float | int]]:
    """Per (strategy, n_slices): ``mean`` and ``median`` gap closed over the pairs where it is defined, ``pairs``."""
    groups: dict[tuple[str, int], list[float]] = defaultdict(list)
    for g in gaps:
        groups[(g["strategy"], g["n_slices"])].append(g["gap"])
    out = {}
    for key, values in groups.items():
        out[key] = {**_describe(values, mean=np.mean, median=np.median),
                    "undefined": int(np.isnan(np.asarray(values, dtype=float)).sum())}
    return out


def per_scan_gap_closed(rows: Iterable[Mapping], metric: str = "surface_dice") -> dict[tuple, dict[str, float]]:
    """``{(strategy, source, target, n_slices): {scan id: (ft_i - base_i) / (oracle_i - base_i)}}`` per fine-tuned
    run: the authors' per-scan quantity. NaN on a scan without a baseline or oracle value or with
    ``oracle_i == base_i``."""
    scores = _scores(rows, metric)
    out = {}
    for (strategy, source, target, n_slices), per_scan in scores.items():
        if strategy in REFERENCE:
            continue
        base = scores.get(("baseline", source, target, None), {})
        oracle = scores.get(("oracle", target, target, None), {})
        gaps = {}
        for scan, ft in per_scan.items():
            b, o = base.get(scan, math.nan), oracle.get(scan, math.nan)
            defined = not (math.isnan(b) or math.isnan(o) or math.isnan(ft)) and o != b
            gaps[scan] = (ft - b) / (o - b) if defined else math.nan
        out[(strategy, source, target, n_slices)] = gaps
    return out


def gap_sign_tests(rows: Iterable[Mapping], results: Iterable[PairResult],
                   metric: str = "surface_dice") -> list[SignTest | None]:
    """For each of `results` (in order), the sign test of its winner against its runner-up (of the two strategies
    of a tie) on the per-scan gap closed, as the authors' code; None when there is no runner-up or no scan where
    both gaps are defined."""
    rows = list(rows)
    gaps = per_scan_gap_closed(rows, metric)
    out: list[SignTest | None] = []
    for r in results:
        if r.runner_up is None:
            out.append(None)
            continue
        ranked = sorted((m, s) for s, m in r.means.items() if not math.isnan(m))
        first = r.winner or ranked[-1][1]
        a = gaps.get((first, r.source, r.target, r.n_slices), {})
        b = gaps.get((r.runner_up, r.source, r.target, r.n_slices), {})
        common = [i for i in sorted(set(a) & set(b)) if not (math.isnan(a[i]) or math.isnan(b[i]))]
        out.append(sign_test([a[i] for i in common], [b[i] for i in common]) if common else None)
    return out


def gap_win_counts(results: Sequence[PairResult], tests: Sequence[SignTest | None],
                   strategies: Sequence[str] = FIXED_STRATEGIES,
                   alphas: Sequence[float] = (0.1, 0.05)) -> dict[int, dict[str, int]]:
    """Per budget: ``<strategy>@p<alpha`` wins significant by the sign test on the per-scan gap closed."""
    counts: dict[int, dict[str, int]] = {}
    for r, test in zip(results, tests, strict=True):
        c = counts.setdefault(r.n_slices, {f"{s}@p<{a:g}": 0 for s in strategies for a in alphas})
        if r.winner is None or test is None:
            continue
        for a in alphas:
            c[f"{r.winner}@p<{a:g}"] += test.p < a
    return dict(sorted(counts.items()))
