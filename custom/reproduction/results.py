"""The results of finished cells: per-scan rows, the statistics over them, and the CSV files.

``results.csv`` has one row per evaluation cell x test scan; ``wins.csv`` one per (pair, budget); ``gap_closed.csv``
one per (strategy, pair, budget). ``tables`` computes everything ``summary.md`` and the figures show.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from custom.cc359 import DOMAINS
from custom.reproduction import stats
from custom.reproduction.cell import read_metrics
from custom.reproduction.grid import LABEL_FREE, UPTO, Cell, is_finetuning
from custom.reproduction.plan import Plan
from custom.reproduction.records import DONE
from custom.reproduction.spec import cell_datalist

__all__ = [
    "RESULT_COLUMNS",
    "SHORT",
    "STRATEGY_NAMES",
    "Tables",
    "label_free_at_budgets",
    "strategy_name",
    "budget_label",
    "collect_rows",
    "diagonal",
    "matrix_columns",
    "offered_slices",
    "policy_usage_by_budget",
    "sweep_rows",
    "tables",
    "write_csvs",
    "write_sweep_csv",
]

RESULT_COLUMNS = ("source", "target", "strategy", "n_slices", "train_slices", "last_epoch_loss", "fold", "id",
                  "domain", "surface_dice", "dice")
SHORT = {"siemens_15": "S1.5", "siemens_3": "S3", "ge_15": "GE1.5", "ge_3": "GE3", "philips_15": "P1.5",
         "philips_3": "P3"}
STRATEGY_NAMES = {"first": "first layers", "last": "last layers", "full": "whole network",
                  "spottune": "SpotTUnet (learned blocks)", "adabn": "AdaBN (no annotations)",
                  "histmatch": "histogram matching (no annotations)"}


def strategy_name(strategy: str) -> str:
    """How tables and legends name a strategy (a sweep role: ``block down1``, ``blocks init_path..down1``)."""
    if strategy in STRATEGY_NAMES:
        return STRATEGY_NAMES[strategy]
    if strategy.startswith(UPTO):
        from custom.reproduction.grid import freeze_strategy

        names = freeze_strategy(strategy).split(",")
        return f"blocks {names[0]}..{names[-1]}"
    return f"block {strategy}"


@dataclass(frozen=True)
class Tables:
    """The statistics of a run's rows (``custom.reproduction.stats``), as the report and the figures use them."""

    gap_tests: list  # per pair result: the sign test on the per-scan gap closed (None without an oracle)
    gap_wins: dict
    matrix: dict  # (source, target) -> mean surface Dice
    dice_matrix: dict
    means: dict  # (strategy, n_slices) -> mean and std over pairs
    pairs: list  # stats.PairResult per (pair, budget)
    wins: dict  # n_slices -> win counts
    gaps: list  # gap closed per (strategy, pair, budget)
    gap_summary: dict


def collect_rows(p: Plan) -> list[dict]:
    """One row per finished evaluation cell x test scan, in grid order."""
    rows = []
    for cell in p.grid:
        if cell.kind != "eval" or not p.is_done(cell.id):
            continue
        train_slices, last_loss = "", ""
        if (p.cell_dir(cell.train_id) / DONE).is_file():
            record = p.record(cell.train_id)
            train_slices = record.get("train_slices", "") if is_finetuning(cell.role) else ""
            last_loss = (record.get("epoch_losses") or [""])[-1]
        for r in read_metrics(p.cell_dir(cell.id) / "metrics.csv"):
            rows.append({
                "source": cell.source,
                "target": cell.target,
                "strategy": cell.role,
                "n_slices": cell.n_slices if cell.n_slices is not None else "",
                "train_slices": train_slices,
                "last_epoch_loss": last_loss,
                "fold": cell.fold if cell.fold is not None else "",
                "id": r["id"],
                "domain": r.get("domain", ""),
                "surface_dice": r["surface_dice"],
                "dice": r["dice"],
            })
    return rows


def csv_text(rows: Iterable[dict], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()



def _num(value, digits: int = 6) -> str:
    """A number for a CSV cell: empty when missing or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.{digits}f}"


def offered_slices(p: Plan) -> dict[int, list[int]]:
    """Per budget: the slices the finished fine-tunings actually offered (sum over their training scans)."""
    out: dict[int, list[int]] = {}
    for cell in p.grid:
        if cell.kind == "train" and is_finetuning(cell.role) and p.is_done(cell.id):
            n = p.record(cell.id).get("train_slices")
            if isinstance(n, int) and n >= 0:
                out.setdefault(cell.n_slices, []).append(n)
    return out


def budget_label(n: int, offered: dict[int, list[int]]) -> str:
    """A budget as the tables head it: nominal, and the slices actually offered when they differ."""
    got = sorted(set(offered.get(n, [])))
    if not got:
        return str(n)
    actual = str(got[0]) if len(got) == 1 else f"{got[0]}–{got[-1]}"
    return f"{n}" if actual == str(n) else f"{n} ({actual} offered)"


def label_free_at_budgets(p: Plan, rows: list[dict]) -> list[dict]:
    """``rows`` with each label-free row (one evaluation per pair, ``n_slices`` empty) repeated at every budget of
    the selection, on the test scans of that budget's fine-tuned models: the label-free strategies then sit beside
    the fine-tuning ones in every table, compared on the same scans."""
    tests: dict[tuple, set[str]] = {}
    out = []
    for row in rows:
        if row["strategy"] not in LABEL_FREE:
            out.append(row)
            continue
        for n in p.selection.budgets:
            key = (row["source"], row["target"], n)
            if key not in tests:
                try:
                    dl = cell_datalist(Cell("eval", "first", *key), p.scans, p.profile)
                    tests[key] = {str(e["id"]) for e in dl["test"]}
                except ValueError:  # a budget the data cannot offer
                    tests[key] = set()
            if str(row["id"]) in tests[key]:
                out.append({**row, "n_slices": n})
    return out


def tables(p: Plan, rows: list[dict]) -> Tables:
    """Every statistic of ``rows`` over the plan's strategies (label-free rows at every budget)."""
    rows = label_free_at_budgets(p, rows)
    strategies = p.selection.strategies
    pairs = stats.pair_results(rows, strategies)
    gap_tests = stats.gap_sign_tests(rows, pairs)
    return Tables(
        gap_tests=gap_tests,
        gap_wins=stats.gap_win_counts(pairs, gap_tests, strategies),
        matrix=stats.baseline_matrix(rows),
        dice_matrix=stats.baseline_matrix(rows, metric="dice"),
        means=stats.strategy_means(rows),
        pairs=pairs,
        wins=stats.win_counts(pairs, strategies),
        gaps=stats.gap_closed(rows),
        gap_summary=stats.gap_closed_summary(stats.gap_closed(rows)),
    )


def diagonal(p: Plan) -> str | None:
    """What the matrix shows on its diagonal: ``oracle``, ``in-domain`` (held-out validation scans) or None."""
    return "oracle" if p.with_oracle else "in-domain" if p.profile.n_val > 0 else None


def matrix_columns(p: Plan) -> list[str]:
    """The target domains of the baseline matrix (with the sources when the diagonal shows something)."""
    sources = set(p.selection.sources) if diagonal(p) else set()
    return [d for d in DOMAINS if d in set(p.selection.targets) | sources]


def write_csvs(p: Plan, rows: list[dict], t: Tables) -> None:
    """``wins.csv`` and ``gap_closed.csv`` in the plan's output folder."""
    from custom.checkpoints import atomic_write_text

    out = p.output_dir
    strategies = p.selection.strategies
    win_rows = [{"source": r.source, "target": r.target, "n_slices": r.n_slices, "n_scans": r.n_scans,
                 **{f"mean_{s}": _num(r.means.get(s)) for s in strategies}, "winner": r.winner or "tie",
                 "runner_up": r.runner_up or "", "n_plus": r.test.n_plus if r.test else "",
                 "n_minus": r.test.n_minus if r.test else "", "n_ties": r.test.n_ties if r.test else "",
                 "p": f"{r.test.p:.6g}" if r.test else "", "p_gap_closed": f"{g.p:.6g}" if g else ""}
                for r, g in zip(t.pairs, t.gap_tests, strict=True)]
    win_cols = ["source", "target", "n_slices", "n_scans", *(f"mean_{s}" for s in strategies), "winner",
                "runner_up", "n_plus", "n_minus", "n_ties", "p", "p_gap_closed"]
    atomic_write_text(out / "wins.csv", csv_text(win_rows, win_cols))
    gap_rows = [{**g, **{k: _num(g[k]) for k in ("base", "oracle", "ft", "gap")}} for g in t.gaps]
    atomic_write_text(out / "gap_closed.csv", csv_text(gap_rows, ["strategy", "source", "target", "n_slices", "base",
                                                                  "oracle", "ft", "gap"]))


def sweep_rows(p: Plan, t: Tables) -> list[dict]:
    """The layer-wise sweep: per sweep strategy of the selection its depth (forward index of its last block),
    trainable parameters and mean surface Dice over pairs at each budget (``sdice_<n>``; empty: not run)."""
    from custom.freeze import block_depths, trainable_parameter_count
    from custom.reproduction.grid import freeze_strategy, sweep_strategies

    depths = block_depths()
    rows = []
    for s in p.selection.strategies:
        if s not in sweep_strategies():
            continue
        blocks = freeze_strategy(s).split(",")
        row = {"strategy": s, "kind": "prefix" if s.startswith(UPTO) else "block", "blocks": "+".join(blocks),
               "depth": depths[blocks[-1]], "trainable_parameters": trainable_parameter_count(None, ",".join(blocks))}
        for n in p.selection.budgets:
            m = t.means.get((s, n))
            row[f"sdice_{n}"] = _num(m["mean"]) if m else ""
            row[f"pairs_{n}"] = m["pairs"] if m else 0
        rows.append(row)
    return rows


def write_sweep_csv(p: Plan, rows: list[dict]) -> None:
    from custom.checkpoints import atomic_write_text

    columns = ["strategy", "kind", "blocks", "depth", "trainable_parameters",
               *(f"{c}_{n}" for n in p.selection.budgets for c in ("sdice", "pairs"))]
    atomic_write_text(p.output_dir / "sweep.csv", csv_text(rows, columns))


def policy_usage_by_budget(p: Plan) -> dict:
    """Per budget, the SpotTUnet policy's share of slices running each block's fine-tuned copy, averaged over the
    finished ``eval/spottune`` cells' pairs (``custom.spottune.PolicyUsage``; recorded over their test slices)."""
    from custom.spottune import PolicyUsage

    shares: dict[int, list[dict]] = {}
    for cell in p.grid:
        if cell.kind == "eval" and cell.role == "spottune" and p.is_done(cell.id):
            usage = p.record(cell.id).get("policy_usage")
            if usage and usage.get("n_slices"):
                shares.setdefault(cell.n_slices, []).append(usage)
    out = {}
    for n, usages in sorted(shares.items()):
        blocks = tuple(usages[0]["tuned_share"])
        mean = tuple(sum(u["tuned_share"][b] for u in usages) / len(usages) for b in blocks)
        out[n] = PolicyUsage(blocks, mean, sum(u["n_slices"] for u in usages))
    return out
