"""The figures: the baseline matrix, surface Dice against the slice budget, wins per budget, and, when run, the
layer-wise sweep and the SpotTUnet policy (PNG)."""

from __future__ import annotations

import math
from pathlib import Path

from custom.reproduction.grid import REFERENCE_ROLES
from custom.reproduction.plan import Plan
from custom.reproduction.results import SHORT, Tables, budget_label, diagonal, matrix_columns, strategy_name

__all__ = ["write_figures"]


def write_figures(p: Plan, t: Tables, offered: dict, out: Path, sweep=(), policy: dict | None = None) -> list[Path]:
    """``baseline_matrix.png``, ``sdice_vs_slices.png`` and ``wins.png`` in ``out``, with ``sweep`` rows
    (``results.sweep_rows``) ``sweep.png``, with a ``policy`` (``results.policy_usage_by_budget``)
    ``spottune_policy.png``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    def save(fig, path: Path) -> Path:
        from custom.checkpoints import atomic_write

        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format=path.suffix.lstrip(".") or "png"))
        plt.close(fig)
        return path

    written = []
    # 1. baseline matrix
    sources = list(p.selection.sources)
    columns = matrix_columns(p)
    grid = np.full((len(sources), len(columns)), np.nan)
    for i, s in enumerate(sources):
        for j, c in enumerate(columns):
            grid[i, j] = t.matrix.get((s, c), np.nan)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(columns) + 2.4), 0.8 * len(sources) + 2.2))
    im = ax.imshow(np.ma.masked_invalid(grid), vmin=0, vmax=1, cmap="viridis")
    for i in range(len(sources)):
        for j in range(len(columns)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center",
                        color="black" if grid[i, j] > 0.6 else "white", fontweight="bold" if sources[i] == columns[j]
                        else "normal")
    ax.set_xticks(range(len(columns)), [SHORT[c] for c in columns])
    ax.set_yticks(range(len(sources)), [SHORT[s] for s in sources])
    ax.set_xlabel("target (test) domain")
    ax.set_ylabel("source (training) domain")
    titles = {"oracle": "\ndiagonal: oracle (3-fold CV)", "in-domain": "\ndiagonal: held-out scans of the source",
                None: ""}
    ax.set_title("Baseline surface Dice" + titles[diagonal(p)], fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046)
    written.append(save(fig, out / "baseline_matrix.png"))

    # 2. surface Dice vs slices
    budgets = list(p.selection.budgets)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colours = {"first": "tab:blue", "last": "tab:orange", "full": "tab:green", "spottune": "tab:red",
               "adabn": "tab:purple", "histmatch": "tab:brown", "baseline": "grey", "oracle": "black"}
    cycle = iter(plt.cm.tab20.colors)
    for key in p.selection.strategies:
        colours.setdefault(key, next(cycle, "tab:cyan"))
    for key in ("baseline", *p.selection.strategies, *(("oracle",) if p.with_oracle else ())):
        xs, ys, lo, hi = [], [], [], []
        for n in budgets:
            m = t.means.get((key, n))
            if m and not math.isnan(m["mean"]):
                xs.append(n)
                ys.append(m["mean"])
                lo.append(m["mean"] - m["std"])
                hi.append(m["mean"] + m["std"])
        if not xs:
            continue
        styles = {"baseline": dict(ls="--", marker=""), "oracle": dict(ls=":", marker="")}
        style = styles.get(key, dict(ls="-", marker="o"))
        ax.plot(xs, ys, color=colours[key], label=strategy_name(key) if key not in REFERENCE_ROLES else key, **style)
        if key not in REFERENCE_ROLES and len(xs) > 0:
            ax.fill_between(xs, lo, hi, color=colours[key], alpha=0.15, lw=0)
    ax.set_xscale("log")
    ax.set_xticks(budgets, [budget_label(n, offered).replace(" offered", "") for n in budgets], fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("slice budget (nominal; slices offered in parentheses)")
    ax.set_ylabel("surface Dice (mean over pairs ± std)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.set_title("Fine-tuning on the target: surface Dice vs annotated slices")
    written.append(save(fig, out / "sdice_vs_slices.png"))

    # 3. wins per budget
    strategies = list(p.selection.strategies)
    fig, ax = plt.subplots(figsize=(7.4, 3.8))
    x = np.arange(len(budgets))
    width = 0.8 / (len(strategies) + 1)
    n_pairs = max([1] + [t.wins.get(n, {}).get("pairs", 0) for n in budgets])
    for k, s in enumerate([*strategies, "ties"]):
        offset = x + (k - len(strategies) / 2) * width
        counts = [t.wins.get(n, {}).get(s, 0) for n in budgets]
        colour = colours.get(s, "lightgrey")
        bars = ax.bar(offset, counts, width, color=colour, alpha=0.45 if s != "ties" else 1.0,
                      label=strategy_name(s) if s != "ties" else s)
        if s != "ties":
            significant = [t.wins.get(n, {}).get(f"{s}@p<0.1", 0) for n in budgets]
            ax.bar(offset, significant, width, color=colour, alpha=1.0, label="_nolegend_")
        ax.bar_label(bars, fontsize=7)
    ax.set_xticks(x, [budget_label(n, offered).replace(" offered", "") for n in budgets], fontsize=8)
    ax.set_xlabel("slice budget (nominal; slices offered in parentheses)")
    ax.set_ylabel(f"wins (of {n_pairs} pair(s))")
    ax.set_ylim(0, n_pairs * 1.15)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title("Best strategy per pair (dark part: significant, sign test p < 0.1)", fontsize=10)
    written.append(save(fig, out / "wins.png"))

    if sweep:
        written.append(save(_sweep_figure(plt, list(sweep), budgets, offered), out / "sweep.png"))
    if policy:
        from custom.spottune import plot_policy

        labels = {f"{budget_label(n, offered).replace(' offered', '')} slices": u for n, u in policy.items()}
        written.append(plot_policy(labels, out / "spottune_policy.png",
                                   "SpotTUnet: share of target slices running each block's fine-tuned copy"))
    return written


def _sweep_figure(plt, sweep: list[dict], budgets: list[int], offered: dict):
    """Surface Dice against the depth of the fine-tuned block: one line per budget for single blocks (solid) and
    for the prefixes up to that block (dashed); x labels give each block's trainable parameters."""
    fig, ax = plt.subplots(figsize=(8.4, 4.6))
    blocks = sorted({(r["depth"], r["blocks"].split("+")[-1], r["trainable_parameters"]) for r in sweep
                     if r["kind"] == "block"})
    for k, n in enumerate(budgets):
        colour = plt.cm.viridis(k / max(len(budgets) - 1, 1))
        for kind, style in (("block", "-"), ("prefix", "--")):
            points = sorted((r["depth"], float(r[f"sdice_{n}"])) for r in sweep
                            if r["kind"] == kind and r[f"sdice_{n}"] != "")
            if points:
                label = f"{budget_label(n, offered).replace(' offered', '')} slices" + (
                    "" if kind == "block" else ", blocks up to it")
                ax.plot(*zip(*points, strict=True), style, marker="o" if kind == "block" else "", color=colour,
                        label=label)
    ax.set_xticks([d for d, _, _ in blocks], [f"{name}\n{_count(params)}" for _, name, params in blocks], fontsize=7)
    ax.set_xlabel("fine-tuned block, in forward order (trainable parameters)")
    ax.set_ylabel("surface Dice (mean over pairs)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title("Layer-wise sweep: which blocks hold the scanner", fontsize=10)
    return fig



def _count(n: int) -> str:
    """A parameter count for an axis label: 272, 4.2k, 58k, 0.92M."""
    return f"{n}" if n < 1000 else f"{n / 1000:.1f}k" if n < 10_000 else f"{n / 1000:.0f}k" if n < 500_000 else (
        f"{n / 1e6:.2f}M")
