"""The ``brain-extraction-reproduce`` command: the paper's experiment (docs/PROTOCOL.md) over a grid of bundle runs.

Usage::

    brain-extraction-reproduce --profile demo --data_dir demo_data --output_dir results/demo
    brain-extraction-reproduce --profile paper --data_dir CC359 --output_dir results/paper --oracle
    brain-extraction-reproduce --profile paper ... --sources siemens_15,ge_3 --targets philips_3 \\
        --strategies first,last --budgets 5,24,270
    brain-extraction-reproduce --profile demo --strategies first,last,full,spottune,adabn,histmatch
    brain-extraction-reproduce --profile demo --sweep --targets ge_15

(``python scripts/reproduce.py`` takes the same options.) The cells and how reruns resume: see
``custom.reproduction``. Profiles: ``paper``, the authors' protocol; ``demo``, a CPU-sized slice of it on the
simulated six-scanner data (generated when ``--data_dir`` is missing or empty). What a profile changes with respect
to the protocol is derived from its settings (``custom.reproduction.profiles.shortened``) and listed at the top of
``summary.md`` and in ``manifest.json``, with what stays different from the authors' code.

Scale-out: ``--workers N`` runs cells in N spawned processes (``--devices 0,1``: round-robin GPUs through
CUDA_VISIBLE_DEVICES); ``--ray_address ADDR`` (or ``--ray-address``) runs them as Ray tasks on an existing cluster
(install ``ray``; data, bundles and output dir at the same paths on every node); ``--shard i/n`` runs only the
cells with grid index % n == i (job arrays; ``--wait_s S`` waits up to S seconds for another shard's baseline), and a
later run without ``--shard`` on the same output dir assembles the tables.

Strategies beyond the paper's three (``custom.reproduction.grid``): ``spottune`` (SpotTUnet learns which blocks to
fine-tune; ``spottune_policy.png`` shows its choices per budget), ``adabn`` and ``histmatch`` (no annotations: one
evaluation per pair, set beside every budget on the same test scans), single blocks (``down1``) and prefixes
(``upto_down2``); ``--sweep`` runs every block alone and every prefix and writes ``sweep.csv`` and ``sweep.png``.

Outputs in ``--output_dir``: ``results.csv`` (source, target, strategy, n_slices, train_slices, fold, id, domain,
surface_dice, dice: one row per run x test scan), ``summary.md``, ``wins.csv``, ``gap_closed.csv``,
``baseline_matrix.png``, ``sdice_vs_slices.png``, ``wins.png``, ``manifest.json`` (overrides, seeds, versions, device,
per-cell timings) and ``cells/``. Bad input: one line ``reproduce: error: ...`` on stderr, exit 2, nothing written.
Exit 1 when a cell failed or could not run (the tables still hold every finished cell).
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

from custom.reproduction.plan import check_scans, plan
from custom.reproduction.profiles import PROFILES, Profile
from custom.reproduction.report import summary_for_console
from custom.reproduction.run import run
from custom.reproduction.selection import UsageError, parse_devices, parse_shard, resolve_selection

__all__ = ["main", "reproduce"]

ROOT = Path(__file__).resolve().parents[2]


def _fail(message: str) -> None:
    print(f"reproduce: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"--{name} must be a positive integer, got {value!r}")
    return value


def _ensure_data(data_dir: Path, profile: Profile) -> None:
    """Generate the demo data into a missing or empty ``data_dir`` (demo profile only)."""
    empty = not data_dir.exists() or (data_dir.is_dir() and not any(data_dir.iterdir()))
    if not empty:
        return
    if not profile.demo_subjects:
        raise UsageError(f"data dir {data_dir} does not exist or is empty (the {profile.name} profile needs CC359)")
    from custom.demo_data import make_demo_data

    print(f"reproduce: generating the demo data ({profile.demo_subjects} subjects per domain) in {data_dir}",
          file=sys.stderr)
    make_demo_data(str(data_dir), n_subjects=profile.demo_subjects, seed=profile.data_seed, resolution="small",
                   overwrite=True, verbose=False)


def reproduce(
    data_dir: str | None = None,
    output_dir: str | None = None,
    profile: str = "demo",
    sources=None,
    targets=None,
    strategies=None,
    budgets=None,
    sweep: bool = False,
    oracle: bool = False,
    train_source: bool = False,
    workers: int | None = None,
    threads: int | None = None,
    devices=None,
    ray_address: str | None = None,
    shard: str | None = None,
    wait_s: float = 0.0,
    cache_preprocessing: bool = True,
    progress: bool = True,
) -> None:
    """Run the paper's grid (or a subset) on DATA_DIR and write the tables and figures to OUTPUT_DIR.

    Args:
        data_dir: CC359 (either layout) or demo data; with --profile demo a missing or empty folder is generated.
        output_dir: results folder (default results/<profile>); cells/ inside it makes reruns resume.
        profile: paper | demo.
        sources: source domains, comma-separated (default: the profile's).
        targets: target domains, comma-separated (default: the profile's).
        strategies: comma-separated among first, last, full (the paper's, the default), spottune (SpotTUnet),
            adabn and histmatch (no annotations: one evaluation per pair), a block of the U-Net (init_path, down1,
            ..., out_path) or upto_<block> (every block up to it).
        sweep: the layer-wise sweep: every block alone and every upto_<block> (added to --strategies); writes
            sweep.csv and sweep.png.
        budgets: slice budgets among 5,8,12,24,45,90,270,540,800 (default: the profile's).
        oracle: also run the oracle (3-fold cross-validation in every domain involved).
        train_source: train the source models even where the profile ships them (demo: siemens_15).
        workers: run cells in this many spawned processes (default: the profile's, demo 2, paper 1; at most the
            number of CPU cores unless given).
        threads: torch threads per cell (default: CPU cores / workers; in-process: torch's default).
        devices: GPU indices for the workers, round-robin (e.g. 0,1).
        ray_address: run cells as Ray tasks on this cluster (e.g. auto or 10.0.0.1:6379).
        shard: i/n - run only the cells whose grid index % n == i.
        wait_s: with --shard, wait up to this many seconds for other shards' cells this shard depends on.
        cache_preprocessing: keep each evaluated scan, preprocessed, in OUTPUT_DIR/cache/preprocessed for the other
            cells that evaluate it (the same results, faster; about 100 MB of disk per CC359 scan at the paper's
            spacing, 13 MB per demo scan); false: every evaluation preprocesses its scans again.
        progress: show the progress bar.
    """
    argv = list(sys.argv)
    try:
        if profile not in PROFILES:
            raise UsageError(f"unknown profile {profile!r}; valid: {', '.join(PROFILES)}")
        prof = PROFILES[profile]
        for flag, value in (("train_source", train_source), ("cache_preprocessing", cache_preprocessing)):
            if not isinstance(value, bool):
                raise UsageError(f"--{flag} must be true or false, got {value!r}")
        if train_source:
            prof = replace(prof, source_models={})
        resolve_selection(prof, sources, targets, strategies, budgets, sweep)
        parse_shard(shard)
        if workers is None:
            workers = max(1, min(prof.workers, os.cpu_count() or 1))
        workers = _positive_int(workers, "workers")
        if threads is not None:
            threads = _positive_int(threads, "threads")
        device_list = parse_devices(devices)
        if device_list and workers < 2 and not ray_address:
            raise UsageError("--devices needs --workers N (N >= 2)")
        if ray_address is not None:
            if not isinstance(ray_address, str) or not ray_address.strip():
                raise UsageError(f"malformed --ray_address {ray_address!r}")
            try:
                import ray  # noqa: F401
            except ImportError:
                raise UsageError("--ray_address needs the ray package (pip install ray)") from None
        if isinstance(wait_s, bool) or not isinstance(wait_s, int | float) or wait_s < 0:
            raise UsageError(f"--wait_s must be a number of seconds >= 0, got {wait_s!r}")
        if data_dir is None:
            if not prof.demo_subjects:
                raise UsageError("--data_dir is required (the CC359 folder)")
            data_dir = "demo_data"
        data = Path(str(data_dir))
        if data.exists() and not data.is_dir():
            raise UsageError(f"data dir {data} is not a folder")
        if not prof.demo_subjects and not data.is_dir():
            raise UsageError(f"data dir {data} does not exist")
        output = Path(str(output_dir)) if output_dir is not None else ROOT / "results" / prof.name
        if output.exists() and not output.is_dir():
            raise UsageError(f"output dir {output} exists and is not a folder")
        _ensure_data(data, prof)
        p = plan(prof, data, output, sources, targets, strategies, budgets, with_oracle=bool(oracle), shard=shard,
                 sweep=sweep, cache_preprocessing=cache_preprocessing)
        check_scans(p, progress=bool(progress))
    except (UsageError, ValueError, OSError) as e:
        _fail(str(e))
    outcome, text = run(p, workers=workers, devices=device_list, ray_address=ray_address, wait_s=float(wait_s),
                        argv=argv, progress=bool(progress), threads=threads)
    if text is not None:
        print(summary_for_console(text))
        print(f"reproduce: wrote {p.output_dir / 'summary.md'} and {p.output_dir / 'results.csv'}", file=sys.stderr)
    if outcome.failed or outcome.blocked:
        print(f"reproduce: {len(outcome.failed)} cell(s) failed, {len(outcome.blocked)} not run because a cell "
              "they depend on failed or is not finished (another shard's); rerun to retry them", file=sys.stderr)
        raise SystemExit(1)


def main(argv: list[str] | None = None) -> None:
    import fire

    from custom.options import refuse_unknown_options

    fire.Fire(reproduce, command=refuse_unknown_options(reproduce, argv, "reproduce: error: "), name="reproduce")


if __name__ == "__main__":
    main()
