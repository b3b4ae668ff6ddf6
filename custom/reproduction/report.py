"""``summary.md``: the run's header (profile, what it changes, data, timings) and one section per table."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from custom.cc359 import DOMAINS
from custom.reproduction.executors import Outcome
from custom.reproduction.grid import LABEL_FREE, REFERENCE_ROLES, is_finetuning
from custom.reproduction.plan import Plan
from custom.reproduction.profiles import REMAINING_DIFFERENCES, shortened
from custom.reproduction.results import SHORT, Tables, budget_label, diagonal, matrix_columns, strategy_name

__all__ = ["SMALL_BUDGET", "summary", "summary_for_console"]

SMALL_BUDGET = 45  # "scarce target data": the budgets up to 45 slices, where the paper's first layers win most


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "–"
    return f"{p:.3g}"


def _table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _matrix_section(p: Plan, t: Tables) -> list[str]:
    sources = p.selection.sources
    columns = matrix_columns(p)
    rows = []
    for s in sources:
        rows.append([f"**{SHORT[s]}**"] + [
            (f"**{_fmt(t.matrix.get((s, c)))}**" if s == c else _fmt(t.matrix.get((s, c)))) for c in columns
        ])
    diag = {
        "oracle": "oracle (3-fold cross-validation inside the domain) on the diagonal",
        "in-domain": f"on the diagonal (in-domain reference) the source model on its own {p.profile.n_val} held-out "
        "validation scan(s); --oracle puts the 3-fold cross-validation oracle there instead",
        None: "no in-domain reference (run with --oracle for the diagonal)",
    }[diagonal(p)]
    return [
        "## Baseline: mean surface Dice of each source model on every scan of each target",
        "",
        f"Rows: source (training) domain; columns: target domain; {diag}.",
        "",
        _table(["src \\ tgt", *(SHORT[c] for c in columns)], rows),
        "",
    ]


def _means_section(p: Plan, t: Tables, offered: dict) -> list[str]:
    budgets = p.selection.budgets
    labels = [budget_label(n, offered) for n in budgets]
    rows = []
    names = [("baseline", "baseline (no fine-tuning)")]
    names += [(s, strategy_name(s)) for s in p.selection.strategies]
    names += [("oracle", "oracle")] if p.with_oracle else []
    n_pairs = 0
    label_free = (", the label-free rows (one evaluation per pair, no annotated slice)"
                  if set(p.selection.strategies) & set(LABEL_FREE) else "")
    for key, name in names:
        cells = []
        for n in budgets:
            m = t.means.get((key, n))
            if m is None:
                cells.append("–")
                continue
            n_pairs = max(n_pairs, m["pairs"]) if key not in REFERENCE_ROLES else n_pairs
            cells.append(f"{_fmt(m['mean'])} ± {_fmt(m['std'])}" if m["pairs"] > 1 else _fmt(m["mean"]))
        rows.append([name, *cells])
    return [
        "## Mean surface Dice per strategy and slice budget",
        "",
        f"Mean over source -> target pairs (± standard deviation over pairs; {n_pairs} pair(s)) of each pair's mean "
        f"over its target test scans. Baseline{label_free} and oracle rows: the same test scans as the fine-tuned "
        "models. Column "
        "headers: nominal budget of docs/PROTOCOL.md (and the slices the annotated scans actually offered at its slice "
        "interval, when different).",
        "",
        _table(["strategy", *labels], rows),
        "",
    ]


def _wins_section(p: Plan, t: Tables, offered: dict) -> list[str]:
    strategies = p.selection.strategies
    if len(strategies) < 2:
        return ["## Wins", "", "Needs at least two strategies.", ""]
    gap = p.with_oracle
    rows = []
    for n, c in t.wins.items():
        sig = [" / ".join(str(c[f"{s}@p<{a:g}"]) for s in strategies) for a in (0.1, 0.05)]
        g = t.gap_wins.get(n, {})
        gap_sig = [" / ".join(str(g.get(f"{s}@p<{a:g}", 0)) for s in strategies) for a in (0.1, 0.05)]
        rows.append([budget_label(n, offered), c["pairs"], *(c[s] for s in strategies), c["ties"],
                     *(gap_sig if gap else []), *sig])
    short = " / ".join(s for s in strategies)
    gap_head = [f"gap closed p<0.1 ({short})", f"gap closed p<0.05 ({short})"] if gap else []
    lines = [
        "## Wins per budget",
        "",
        "Per (pair, budget) the strategy with the highest mean surface Dice wins (equal top means: a tie). "
        "Significance: exact two-sided sign test of the winner against the runner-up over the pair's test scans "
        "(paired by scan; [D] used p < 0.1, [M] p < 0.05), on the authors' quantity, the per-scan gap closed "
        "(ft − base) / (oracle − base) (`gap closed` columns; needs `--oracle`), and on the raw per-scan surface "
        "Dice (`sDice` columns). They differ only on scans where the oracle is below the baseline.",
        "",
        _table(["slices", "pairs", *strategies, "ties", *gap_head, f"sDice p<0.1 ({short})",
                f"sDice p<0.05 ({short})"], rows),
        "",
    ]
    most = max((r.n_scans for r in t.pairs), default=0)
    if 0 < most < 10:
        lines += [f"With at most {most} test scans per pair the smallest p-value a sign test can reach is "
                  f"{min(1.0, 2 / 2**most):.3g}: significance needs more test scans (CC359 has about 59 per target).",
                  ""]
    if len(t.pairs) <= 60:
        prow = []
        for r, gt in zip(t.pairs, t.gap_tests, strict=True):
            means = " / ".join(_fmt(r.means.get(s)) for s in strategies)
            prow.append([budget_label(r.n_slices, offered), f"{SHORT[r.source]} -> {SHORT[r.target]}", means,
                         r.winner or "tie", r.runner_up or "–",
                         *([_fmt_p(gt.p if gt else None)] if gap else []),
                         f"{r.test.n_plus}:{r.test.n_minus}:{r.test.n_ties}" if r.test else "–",
                         _fmt_p(r.test.p if r.test else None), r.n_scans])
        lines += [
            "Per pair (sign test counts on the surface Dice: scans where the winner is better : worse : equal):",
            "",
            _table(["slices", "pair", f"mean sDice ({short})", "winner", "runner-up",
                    *(["p (gap closed)"] if gap else []), "+:-:=", "p (sDice)", "scans"], prow),
            "",
        ]
    else:
        lines += ["Per pair: see `wins.csv`.", ""]
    return lines


def _gap_section(p: Plan, t: Tables, offered: dict) -> list[str]:
    head = ["## Gap closed", ""]
    if not p.with_oracle:
        return head + ["(sDice_ft − sDice_base) / (sDice_oracle − sDice_base) needs the oracle: rerun with "
                       "`--oracle` (adds 3-fold cross-validation in every domain involved).", ""]
    budgets = p.selection.budgets
    rows = []
    for s in p.selection.strategies:
        cells = []
        for n in budgets:
            g = t.gap_summary.get((s, n))
            defined = g is not None and g["pairs"]
            cells.append(f"{_fmt(g['mean'], 2)} (median {_fmt(g['median'], 2)})" if defined else "–")
        rows.append([strategy_name(s), *cells])
    undefined = sum(g["undefined"] for g in t.gap_summary.values())
    note = f" {undefined} (pair, budget, strategy) value(s) undefined (oracle not above baseline)." if undefined else ""
    return head + [
        "Mean (median) over pairs of (sDice_ft − sDice_base) / (sDice_oracle − sDice_base), each term over the "
        f"fine-tuned model's test scans; per pair in `gap_closed.csv`.{note}",
        "",
        _table(["strategy", *(budget_label(n, offered) for n in budgets)], rows),
        "",
    ]


def _claim_section(p: Plan, t: Tables) -> list[str]:
    strategies = p.selection.strategies
    head = ["## First layers vs last layers at small budgets", ""]
    if not {"first", "last"} <= set(strategies):
        return head + ["Needs both the first and the last strategy.", ""]
    small = [n for n in p.selection.budgets if n <= SMALL_BUDGET]
    if not small:
        return head + [f"No budget of at most {SMALL_BUDGET} slices was run.", ""]
    first_better = last_better = equal = 0
    firsts, lasts = [], []
    for r in t.pairs:
        if r.n_slices not in small or "first" not in r.means or "last" not in r.means:
            continue
        f, la = r.means["first"], r.means["last"]
        firsts.append(f)
        lasts.append(la)
        first_better += f > la
        last_better += la > f
        equal += f == la
    total = first_better + last_better + equal
    if not total:
        return head + ["No finished (pair, budget) has both strategies yet.", ""]
    mf, ml = sum(firsts) / len(firsts), sum(lasts) / len(lasts)
    verdict = (
        "first-layer fine-tuning BEATS last-layer fine-tuning" if first_better > last_better and mf > ml
        else "last-layer fine-tuning BEATS first-layer fine-tuning" if last_better > first_better and ml > mf
        else "neither strategy consistently beats the other"
    )
    budgets = ", ".join(map(str, small))
    lines = head + [
        f"Budgets of at most {SMALL_BUDGET} slices ({budgets}), {total} (pair, budget) comparison(s): first layers "
        f"have the higher mean surface Dice in {first_better}, last layers in {last_better}, equal in {equal}; "
        f"mean over them: first {mf:.3f} vs last {ml:.3f}. On this data, {verdict} at small budgets"
        + (f" (only {total} comparisons: indicative, not conclusive)." if total < 10 else "."),
    ]
    if "full" in strategies:
        wins = {s: sum(c[s] for n, c in t.wins.items() if n in small) for s in strategies}
        lines.append("Wins among all strategies at these budgets: "
                     + ", ".join(f"{strategy_name(s)} {wins[s]}" for s in strategies) + ".")
    return lines + [""]


def _sweep_section(p: Plan, offered: dict, sweep: list[dict]) -> list[str]:
    if not sweep:
        return []
    budgets = p.selection.budgets
    rows = [[r["strategy"], r["blocks"].replace("+", ", ") if r["kind"] == "prefix" else r["blocks"], r["depth"],
             f"{r['trainable_parameters']:,}", *(r[f"sdice_{n}"][:5] or "–" for n in budgets)] for r in sweep]
    return [
        "## Layer-wise sweep: which blocks hold the scanner",
        "",
        "Fine-tuning one block of the U-Net alone (the rest frozen), and every block up to one (`upto_<block>`), in "
        "the order the forward pass runs them (depth 0 meets the input; a skip connection runs just before the "
        "decoder block it feeds). Mean surface Dice over pairs on the target test scans; `sweep.csv`, `sweep.png`.",
        "",
        _table(["strategy", "trainable blocks", "depth", "parameters", *(budget_label(n, offered) for n in budgets)],
               rows),
        "",
    ]


def _policy_section(policy: dict) -> list[str]:
    if not policy:
        return []
    from custom.freeze import blocks

    columns = blocks()  # the U-Net's blocks in forward order; each SpotTUnet block belongs to one of them
    rows = []
    for n, usage in policy.items():
        by_block: dict[str, list[float]] = {}
        for name, share in zip(usage.blocks, usage.tuned_share, strict=True):
            by_block.setdefault(name.split(".")[0], []).append(share)
        rows.append([n, usage.n_slices, f"{usage.mean:.2f}",
                     *(f"{sum(by_block[c]) / len(by_block[c]):.2f}" if c in by_block else "–" for c in columns)])
    return [
        "## SpotTUnet: the blocks its policy fine-tunes",
        "",
        "Share of the evaluated target slices on which the learned policy ran the fine-tuned copy (argmax, averaged "
        "over pairs), overall and per block of the U-Net in forward order (the mean over the SpotTUnet blocks inside "
        "it); every SpotTUnet block in `spottune_policy.png` and `manifest.json` (`policy_usage` of each "
        "`eval/spottune` cell).",
        "",
        _table(["slices", "slices evaluated", "all", *columns], rows),
        "",
    ]


def _header(p: Plan, outcome: Outcome | None, cell_seconds: float) -> list[str]:
    prof = p.profile
    n_done = sum(p.is_done(c.id) for c in p.grid)
    per_domain = {d: sum(s.domain == d for s in p.scans) for d in DOMAINS}
    lines = [
        f"# Reproduction of Shirokikh et al. (2020) — profile `{prof.name}`",
        "",
        f"Profile `{prof.name}`: {prof.description}.",
        "",
    ]
    changes = shortened(prof)
    if changes:
        lines += ["What this profile changes with respect to the authors' protocol (docs/PROTOCOL.md):", ""]
        lines += [f"- {s}" for s in changes] + [""]
    lines += ["What stays different from the authors' code in every profile, and why:", ""]
    lines += [f"- {s}" for s in REMAINING_DIFFERENCES] + [""]
    sel = p.selection
    lines += [
        f"- data: {sum(per_domain.values())} scans ("
        + ", ".join(f"{SHORT[d]} {n}" for d, n in per_domain.items()) + ")",
        f"- sources: {', '.join(sel.sources)}; targets: {', '.join(sel.targets)}; strategies: "
        f"{', '.join(sel.strategies)}; budgets: {', '.join(map(str, sel.budgets))}; oracle: "
        f"{'yes' if p.with_oracle else 'no'}",
        f"- split seed {prof.split_seed:#x}, training seed {prof.seed}; cells finished: {n_done} of {len(p.grid)}; "
        f"sum of cell run times {cell_seconds / 60:.1f} min"
        + (f"; this invocation {outcome.wall_seconds / 60:.1f} min" if outcome else ""),
        *_precision_and_loss_lines(p),
        "- files: `results.csv` (one row per run x test scan), `wins.csv`, `gap_closed.csv`, `manifest.json`, "
        "figures `baseline_matrix.png`, `sdice_vs_slices.png`, `wins.png`",
        "",
    ]
    return lines


def _precision_and_loss_lines(p: Plan) -> list[str]:
    """Which precision the cells ran in, and whether the fine-tuning losses had levelled off."""
    precisions, ratios = set(), []
    for cell in p.grid:
        if not p.is_done(cell.id):
            continue
        record = p.record(cell.id)
        if record.get("effective", {}).get("compute_dtype"):
            precisions.add(record["effective"]["compute_dtype"])
        losses = record.get("epoch_losses") or []
        if is_finetuning(cell.role) and len(losses) >= 2 and losses[-2] > 0:
            ratios.append(losses[-1] / losses[-2])
    lines = []
    if precisions:
        lines.append(f"- precision: {', '.join(sorted(precisions))} (the bundles' `--precision {p.profile.precision}`)")
    if ratios:
        ratios.sort()
        lines.append(f"- fine-tuning loss, last epoch / the one before: median {ratios[len(ratios) // 2]:.2f}, range "
                     f"{ratios[0]:.2f}-{ratios[-1]:.2f} over {len(ratios)} cells (per cell: `last_epoch_loss` in "
                     "`results.csv`, `epoch_losses` in `manifest.json`)")
    return lines



def summary(p: Plan, t: Tables, offered: dict, outcome: Outcome | None, cell_seconds: float,
            sweep: Sequence[dict] = (), policy: dict | None = None) -> str:
    """The text of ``summary.md`` (``sweep``: ``results.sweep_rows``; ``policy``:
    ``results.policy_usage_by_budget``)."""
    body = [*_matrix_section(p, t), *_means_section(p, t, offered), *_wins_section(p, t, offered),
            *_gap_section(p, t, offered), *_claim_section(p, t), *_sweep_section(p, offered, list(sweep)),
            *_policy_section(policy or {})]
    return "\n".join([*_header(p, outcome, cell_seconds), *body])


def summary_for_console(text: str) -> str:
    """The summary without its header (the tables and the verdict)."""
    start = text.find("## ")
    return text[start:] if start >= 0 else text
