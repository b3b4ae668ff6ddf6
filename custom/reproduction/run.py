"""A whole run: execute the plan's cells, then write every output (tables, figures, summary, manifest)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from custom.reproduction.executors import Outcome, execute
from custom.reproduction.figures import write_figures
from custom.reproduction.manifest import write_manifest
from custom.reproduction.plan import Plan, assembly
from custom.reproduction.report import summary
from custom.reproduction.results import (
    RESULT_COLUMNS,
    collect_rows,
    csv_text,
    offered_slices,
    policy_usage_by_budget,
    sweep_rows,
    tables,
    write_csvs,
    write_sweep_csv,
)

__all__ = ["report", "run"]


def report(p: Plan, outcome: Outcome | None = None) -> str:
    """Write results.csv, wins.csv, gap_closed.csv (sweep.csv), the figures and summary.md; returns the summary."""
    from custom.checkpoints import atomic_write_text

    out = p.output_dir
    rows = collect_rows(p)
    atomic_write_text(out / "results.csv", csv_text(rows, RESULT_COLUMNS))
    t = tables(p, rows)
    write_csvs(p, rows, t)
    offered = offered_slices(p)
    cell_seconds = 0.0
    for cell in p.grid:
        if p.is_done(cell.id):
            cell_seconds += p.record(cell.id).get("seconds") or 0
    sweep, policy = sweep_rows(p, t), policy_usage_by_budget(p)
    if sweep:
        write_sweep_csv(p, sweep)
    text = summary(p, t, offered, outcome, cell_seconds, sweep, policy)
    atomic_write_text(out / "summary.md", text)
    write_figures(p, t, offered, out, sweep, policy)
    return text


def run(
    p: Plan,
    workers: int = 1,
    devices: Sequence[str] = (),
    ray_address: str | None = None,
    wait_s: float = 0.0,
    argv: Sequence[str] | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    threads: int | None = None,
) -> tuple[Outcome, str | None]:
    """Execute the plan, then (unless sharded) write the tables, figures and summary; the manifest always."""
    p.output_dir.mkdir(parents=True, exist_ok=True)
    write_manifest(p, argv)
    outcome = execute(p, workers=workers, devices=devices, ray_address=ray_address, wait_s=wait_s,
                      progress=progress, threads=threads)
    write_manifest(p, argv, outcome)
    text = None
    if p.shard is None:
        text = report(assembly(p), outcome)
    else:
        i, n = p.shard
        echo(f"reproduce: shard {i}/{n}: ran {len(outcome.ran)} cell(s), {len(outcome.skipped_done)} already "
             f"finished, {len(outcome.failed)} failed, {len(outcome.blocked)} waiting on other shards; run without "
             "--shard on the same output dir to assemble the tables")
    return outcome, text
