"""custom.reproduction.stats on hand-made result tables: sign test, winners, ties, win counts, gap closed, matrices."""

from __future__ import annotations

import math
import random

import pytest
from scipy.stats import binomtest

from custom.reproduction.stats import (
    baseline_matrix,
    gap_closed,
    gap_closed_summary,
    pair_results,
    sign_test,
    strategy_means,
    win_counts,
)


def row(strategy, source, target, scan, sdice, n_slices="", dice=0.9):
    return {"strategy": strategy, "source": source, "target": target, "n_slices": n_slices, "id": scan,
            "surface_dice": sdice, "dice": dice}


def ft_rows(source, target, n_slices, values: dict[str, list[float]], ids=None):
    """Rows of fine-tuned strategies: values[strategy] is one value per test scan."""
    out = []
    for strategy, vals in values.items():
        for k, v in enumerate(vals):
            scan = ids[k] if ids else f"T{k}"
            out.append(row(strategy, source, target, scan, v, n_slices))
    return out


# ---- sign test ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_sign_test_equals_scipy_binomtest(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 30)
    x = [rng.choice([0.1, 0.2, 0.3, 0.4]) for _ in range(n)]
    y = [rng.choice([0.1, 0.2, 0.3, 0.4]) for _ in range(n)]
    result = sign_test(x, y)
    plus = sum(a > b for a, b in zip(x, y, strict=True))
    minus = sum(a < b for a, b in zip(x, y, strict=True))
    assert (result.n_plus, result.n_minus, result.n_ties) == (plus, minus, n - plus - minus)
    expected = binomtest(plus, plus + minus, 0.5).pvalue if plus + minus else 1.0
    assert result.p == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_sign_test_known_values():
    # 10 of 10 better: 2 / 2^10
    assert sign_test([1.0] * 10, [0.0] * 10).p == pytest.approx(2 / 1024)
    # 3 scans all better: the smallest p three scans can give is 0.25
    assert sign_test([0.9, 0.8, 0.7], [0.1, 0.2, 0.3]).p == pytest.approx(0.25)
    # balanced: p = 1
    assert sign_test([1, 0, 1, 0], [0, 1, 0, 1]).p == 1.0


def test_sign_test_ties_and_nans_are_dropped():
    r = sign_test([0.5, 0.5, 0.9, math.nan], [0.5, 0.5, 0.1, 0.2])
    assert (r.n_plus, r.n_minus, r.n_ties) == (1, 0, 2)
    assert r.p == 1.0  # one informative pair
    assert sign_test([0.3, 0.3], [0.3, 0.3]).p == 1.0  # nothing informative
    assert sign_test([], []).p == 1.0
    with pytest.raises(ValueError, match="equal length"):
        sign_test([1, 2], [1])


# ---- winners, runner-up, win counts ---------------------------------------------------------------------------


def test_pair_results_winner_runner_up_and_sign_test_against_runner_up():
    rows = ft_rows("siemens_15", "ge_3", 5, {
        "first": [0.9, 0.8, 0.85, 0.7, 0.95, 0.9],
        "last": [0.6, 0.7, 0.86, 0.5, 0.6, 0.6],  # runner-up
        "full": [0.1, 0.2, 0.1, 0.2, 0.1, 0.2],
    })
    (r,) = pair_results(rows)
    assert (r.source, r.target, r.n_slices, r.n_scans) == ("siemens_15", "ge_3", 5, 6)
    assert r.winner == "first" and r.runner_up == "last"
    assert r.means["first"] == pytest.approx(sum([0.9, 0.8, 0.85, 0.7, 0.95, 0.9]) / 6)
    assert (r.test.n_plus, r.test.n_minus) == (5, 1)
    assert r.test.p == pytest.approx(binomtest(5, 6, 0.5).pvalue)


def test_sign_test_pairs_by_scan_id_not_by_order():
    first = [row("first", "s", "t", f"T{k}", v, 24) for k, v in enumerate([0.9, 0.9, 0.9, 0.9])]
    # last's rows come in reverse order; its scan T0 (0.95) beats first's T0
    last = [row("last", "s", "t", f"T{k}", v, 24) for k, v in reversed(list(enumerate([0.95, 0.1, 0.1, 0.1])))]
    (r,) = pair_results(first + last, strategies=("first", "last"))
    assert r.winner == "first"
    assert (r.test.n_plus, r.test.n_minus, r.test.n_ties) == (3, 1, 0)


def test_tie_at_the_top_has_no_winner():
    rows = ft_rows("s", "t", 8, {"first": [0.5, 0.7], "last": [0.7, 0.5], "full": [0.1, 0.1]})
    (r,) = pair_results(rows)
    assert r.winner is None and r.runner_up in ("first", "last")
    counts = win_counts([r])
    assert counts[8]["ties"] == 1 and counts[8]["first"] == counts[8]["last"] == counts[8]["full"] == 0


def test_win_counts_per_budget_with_significance():
    rows = []
    strong = [0.9] * 12  # first beats last on all 12 scans: p = 2 / 2^12
    weak = [0.5] * 12
    rows += ft_rows("a", "b", 5, {"first": strong, "last": weak, "full": [0.1] * 12})
    rows += ft_rows("b", "a", 5, {"first": weak, "last": [0.51] * 6 + [0.49] * 6, "full": [0.1] * 12})
    rows += ft_rows("a", "b", 90, {"first": weak, "last": [0.2] * 12, "full": strong})
    results = pair_results(rows)
    counts = win_counts(results)
    assert set(counts) == {5, 90}
    assert counts[5]["pairs"] == 2 and counts[5]["first"] == 1 and counts[5]["last"] == 0 and counts[5]["ties"] == 1
    # b -> a: last mean 0.5 equals first mean 0.5: a tie
    assert counts[5]["first@p<0.05"] == 1
    assert counts[90]["full"] == 1 and counts[90]["full@p<0.1"] == 1
    by_pair = {(r.source, r.target, r.n_slices): r for r in results}
    assert by_pair[("a", "b", 5)].test.p == pytest.approx(binomtest(12, 12, 0.5).pvalue)


def test_win_counts_not_significant_with_few_scans():
    rows = ft_rows("a", "b", 5, {"first": [0.9, 0.9, 0.9], "last": [0.1, 0.1, 0.1], "full": [0.2, 0.2, 0.2]})
    counts = win_counts(pair_results(rows))
    assert counts[5]["first"] == 1
    assert counts[5]["first@p<0.1"] == 0  # 3 of 3 scans: p = 0.25


def test_pair_results_ignore_reference_rows_and_single_strategies():
    rows = [row("baseline", "a", "b", "T0", 0.3), row("oracle", "b", "b", "T0", 0.9)]
    rows += ft_rows("a", "b", 12, {"first": [0.5]})
    (r,) = pair_results(rows)
    assert r.winner is None and r.runner_up is None and r.test is None
    assert win_counts([r])[12]["ties"] == 0


def test_duplicate_scan_rows_are_an_error():
    rows = ft_rows("a", "b", 5, {"first": [0.5, 0.6]}, ids=["T0", "T0"])
    with pytest.raises(ValueError, match="twice"):
        pair_results(rows)


# ---- gap closed, matrices, means -------------------------------------------------------------------------------


def reference_rows():
    rows = [row("baseline", "a", "b", f"T{k}", v) for k, v in enumerate([0.2, 0.4, 0.6, 0.1])]
    rows += [row("oracle", "b", "b", f"T{k}", v, dice=0.95) for k, v in enumerate([0.9, 0.8, 0.9, 0.5])]
    rows += [row("oracle", "a", "a", f"A{k}", v) for k, v in enumerate([0.85, 0.87])]
    return rows


def test_gap_closed_uses_the_fine_tuned_models_test_scans():
    rows = reference_rows()
    # fine-tuned on T3 (annotated), tested on T0..T2
    rows += ft_rows("a", "b", 5, {"first": [0.6, 0.7, 0.8], "last": [0.3, 0.4, 0.5]}, ids=["T0", "T1", "T2"])
    gaps = {g["strategy"]: g for g in gap_closed(rows)}
    base, orac = (0.2 + 0.4 + 0.6) / 3, (0.9 + 0.8 + 0.9) / 3
    assert gaps["first"]["base"] == pytest.approx(base) and gaps["first"]["oracle"] == pytest.approx(orac)
    assert gaps["first"]["gap"] == pytest.approx((0.7 - base) / (orac - base))
    assert gaps["last"]["gap"] == pytest.approx((0.4 - base) / (orac - base))
    summary = gap_closed_summary(gap_closed(rows))
    assert summary[("first", 5)]["mean"] == pytest.approx((0.7 - base) / (orac - base))
    assert summary[("first", 5)]["pairs"] == 1 and summary[("first", 5)]["undefined"] == 0


def test_gap_closed_undefined_without_oracle_or_when_oracle_not_better():
    rows = [row("baseline", "a", "b", f"T{k}", 0.5) for k in range(3)]
    rows += ft_rows("a", "b", 5, {"first": [0.6, 0.6, 0.6]})
    (g,) = gap_closed(rows)
    assert math.isnan(g["gap"]) and math.isnan(g["oracle"]) and g["base"] == pytest.approx(0.5)
    rows += [row("oracle", "b", "b", f"T{k}", 0.4) for k in range(3)]  # oracle below the baseline
    (g,) = gap_closed(rows)
    assert math.isnan(g["gap"]) and g["oracle"] == pytest.approx(0.4)
    summary = gap_closed_summary(gap_closed(rows))
    assert summary[("first", 5)]["pairs"] == 0 and summary[("first", 5)]["undefined"] == 1


def test_baseline_matrix_has_oracle_on_the_diagonal():
    matrix = baseline_matrix(reference_rows())
    assert matrix[("a", "b")] == pytest.approx((0.2 + 0.4 + 0.6 + 0.1) / 4)
    assert matrix[("b", "b")] == pytest.approx((0.9 + 0.8 + 0.9 + 0.5) / 4)
    assert matrix[("a", "a")] == pytest.approx(0.86)
    assert baseline_matrix(reference_rows(), metric="dice")[("b", "b")] == pytest.approx(0.95)


def test_strategy_means_over_pairs_with_reference_rows_on_the_same_scans():
    rows = reference_rows()
    rows += ft_rows("a", "b", 5, {"first": [0.6, 0.7, 0.8]}, ids=["T0", "T1", "T2"])
    rows += [row("baseline", "c", "b", f"T{k}", 0.0) for k in range(4)]
    rows += ft_rows("c", "b", 5, {"first": [0.2, 0.2, 0.2]}, ids=["T0", "T1", "T2"])
    means = strategy_means(rows)
    assert means[("first", 5)]["pairs"] == 2
    assert means[("first", 5)]["mean"] == pytest.approx((0.7 + 0.2) / 2)
    assert means[("first", 5)]["std"] == pytest.approx(0.25)
    assert (means[("first", 5)]["min"], means[("first", 5)]["max"]) == pytest.approx((0.2, 0.7))
    assert means[("baseline", 5)]["mean"] == pytest.approx(((0.2 + 0.4 + 0.6) / 3 + 0.0) / 2)
    assert means[("oracle", 5)]["mean"] == pytest.approx((0.9 + 0.8 + 0.9) / 3)


def test_empty_metric_values_are_nan_and_skipped():
    rows = ft_rows("a", "b", 5, {"first": [0.6, ""], "last": [0.5, 0.5]})
    (r,) = pair_results(rows)
    assert r.means["first"] == pytest.approx(0.6)
    assert (r.test.n_plus, r.test.n_minus) == (1, 0)


def test_sign_test_on_the_per_scan_gap_closed():
    """The authors' quantity: (ft_i - base_i) / (oracle_i - base_i); a scan with the oracle below the baseline
    flips the sign of the comparison, one with oracle == baseline is dropped."""
    from custom.reproduction import stats

    base = {"a": 0.2, "b": 0.2, "c": 0.6, "d": 0.5}
    oracle = {"a": 0.8, "b": 0.9, "c": 0.4, "d": 0.5}
    first = {"a": 0.7, "b": 0.8, "c": 0.50, "d": 0.6}
    last = {"a": 0.6, "b": 0.7, "c": 0.45, "d": 0.7}
    rows = [{"strategy": s, "source": "siemens_15", "target": "ge_3", "n_slices": n, "id": i, "surface_dice": v}
            for s, n, values in (("baseline", "", base), ("first", 5, first), ("last", 5, last))
            for i, v in values.items()]
    rows += [{"strategy": "oracle", "source": "ge_3", "target": "ge_3", "n_slices": "", "id": i, "surface_dice": v}
             for i, v in oracle.items()]
    gaps = stats.per_scan_gap_closed(rows)[("first", "siemens_15", "ge_3", 5)]
    assert gaps["a"] == pytest.approx(0.5 / 0.6) and gaps["c"] == pytest.approx(-0.1 / -0.2)
    assert math.isnan(gaps["d"])
    results = stats.pair_results(rows, ("first", "last"))
    (r,) = results
    assert (r.winner, r.runner_up) == ("first", "last")
    assert (r.test.n_plus, r.test.n_minus) == (3, 1)  # raw sDice: a, b, c better; d worse
    (g,) = stats.gap_sign_tests(rows, results)
    assert (g.n_plus, g.n_minus, g.n_ties) == (2, 1, 0)  # c flips (oracle below baseline), d dropped
    counts = stats.gap_win_counts(results, [g], ("first", "last"))
    assert counts[5]["first@p<0.1"] == 0
