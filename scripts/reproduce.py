"""Reproduce the paper's experiment (docs/PROTOCOL.md) by driving the bundles over a grid of resumable cells.

Usage::

    python scripts/reproduce.py --profile demo --data_dir demo_data --output_dir results/demo
    python scripts/reproduce.py --profile paper --data_dir CC359 --output_dir results/paper --oracle
    python scripts/reproduce.py --profile paper ... --sources siemens_15,ge_3 --targets philips_3 \\
        --strategies first,last --budgets 5,24,270

Cells: 6 baseline trainings (one2all) and their evaluations on each other domain (30) and on their own held-out
validation scans (6, the in-domain reference), with ``--oracle`` 3-fold cross-validation per domain (18 trainings
+ 18 evaluations), and per ordered source -> target pair, strategy
(first | last | full) and slice budget (5 ... 800) one fine-tuning and one evaluation on the target's test scans
(30 x 3 x 9 = 810 each). Each cell runs a bundle in-process (``monai.bundle.ConfigWorkflow``) and lives in
``<output_dir>/cells/<kind>/<role>/...``; its ``done.json`` (written last) marks it finished. A rerun skips finished
cells and restarts unfinished ones (a training resumes from its last epoch checkpoint).

Profiles:

* ``paper``: the authors' protocol (docs/PROTOCOL.md, every item with its setting): their scans (scikit-learn
  splits over their meta.csv order), the stored array orientation (``--orientation none``), resampling to
  1 x 0.95 x 0.95 mm with the cubic spline for images and masks (``--mask_interpolation cubic``), 256 x 256 crops
  centred on a smaller slice (``--crop_mode centre_if_small``), fp32, baseline 100 epochs x 100 iterations,
  batch 32, lr 1e-3 x0.1 after epoch 81, 4 validation scans (oracle folds: 2); fine-tuning 'dart20' (20 epochs x
  100 iterations, batch 32, lr x0.1 after epoch 16); all 30 pairs x 3 strategies x 9 budgets. What stays
  different from the authors' code is listed at the top of ``summary.md`` and in ``manifest.json``.
* ``demo``: the CPU demo (at most 10 minutes on 2 idle CPU cores, data generation included). It shortens
  EXACTLY this: the simulated six-scanner demo data (``scripts/make_demo_data.py``, 8 subjects per domain, seed 1,
  ~2 mm voxels, generated when ``--data_dir`` is missing or empty) instead of CC359; everything at twice the paper's
  voxel size: resampling to 2.0 x 1.9 x 1.9 mm, 128 x 128 crops (the whole slice, as the paper's 256 x 256 at
  0.95 mm), surface Dice at 2 mm (one voxel, as the paper's 1 mm); the siemens_15 source model is the shipped
  ``custom/resources/demo_source_siemens_15.pt`` (trained by the source bundle with 14 epochs x 100 iterations,
  batch 16, lr 1e-2 x0.1 after epoch 11, on other simulated subjects; ``--train_source true`` trains it instead);
  fine-tuning 6 epochs x 10 iterations, batch 16, lr 2.5e-2 x0.1 after epoch 5; precision auto (bf16 where
  native); grid siemens_15 -> ge_15, philips_15 with budgets 5, 24, 90 (each budget keeps the protocol's slice
  interval k, so a ~100-slice demo scan offers about 100/k slices: about 2, 8 and 33). No oracle unless
  ``--oracle``. Cells run in 2 processes of 1 torch thread each. ``summary.md`` lists the same in its header.

Scale-out: ``--workers N`` runs cells in N spawned processes (``--devices 0,1``: round-robin GPUs through
CUDA_VISIBLE_DEVICES); ``--ray_address ADDR`` (or ``--ray-address``) runs them as Ray tasks on an existing cluster
(install ``ray``; data, bundles and output dir at the same paths on every node); ``--shard i/n`` runs only the
cells with grid index % n == i (job arrays; ``--wait_s S`` waits up to S seconds for another shard's baseline), and a
later run without ``--shard`` on the same output dir assembles the tables.

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

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from custom import experiment  # noqa: E402
from custom.experiment import UsageError  # noqa: E402


def _fail(message: str) -> None:
    print(f"reproduce: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"--{name} must be a positive integer, got {value!r}")
    return value


def _ensure_data(data_dir: Path, profile: experiment.Profile) -> None:
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
    oracle: bool = False,
    train_source: bool = False,
    workers: int | None = None,
    threads: int | None = None,
    devices=None,
    ray_address: str | None = None,
    shard: str | None = None,
    wait_s: float = 0.0,
    progress: bool = True,
) -> None:
    """Run the paper's grid (or a subset) on DATA_DIR and write the tables and figures to OUTPUT_DIR.

    Args:
        data_dir: CC359 (either layout) or demo data; with --profile demo a missing or empty folder is generated.
        output_dir: results folder (default results/<profile>); cells/ inside it makes reruns resume.
        profile: paper | demo.
        sources: source domains, comma-separated (default: the profile's).
        targets: target domains, comma-separated (default: the profile's).
        strategies: first,last,full (default: the profile's).
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
        progress: show the progress bar.
    """
    argv = list(sys.argv)
    try:
        if profile not in experiment.PROFILES:
            raise UsageError(f"unknown profile {profile!r}; valid: {', '.join(experiment.PROFILES)}")
        prof = experiment.PROFILES[profile]
        if not isinstance(train_source, bool):
            raise UsageError(f"--train_source must be true or false, got {train_source!r}")
        if train_source:
            prof = replace(prof, source_models={})
        experiment.resolve_selection(prof, sources, targets, strategies, budgets)
        experiment.parse_shard(shard)
        if workers is None:
            workers = max(1, min(prof.workers, os.cpu_count() or 1))
        workers = _positive_int(workers, "workers")
        if threads is not None:
            threads = _positive_int(threads, "threads")
        device_list = experiment.parse_devices(devices)
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
        p = experiment.plan(prof, data, output, sources, targets, strategies, budgets, with_oracle=bool(oracle),
                            shard=shard)
        experiment.check_scans(p, progress=bool(progress))
    except (UsageError, ValueError, OSError) as e:
        _fail(str(e))
    outcome, text = experiment.run(p, workers=workers, devices=device_list, ray_address=ray_address,
                                   wait_s=float(wait_s), argv=argv, progress=bool(progress), threads=threads)
    if text is not None:
        print(experiment.summary_for_console(text))
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
