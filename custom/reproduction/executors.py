"""Executing a plan's cells: in this process, in N spawned processes, or as Ray tasks on a cluster.

Each cell starts once the cells it depends on are finished; a failure blocks only its dependents. Every executor
has ``capacity`` (cells at once), ``submit(fn, spec) -> Future`` and ``shutdown()``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field, replace

from custom.reproduction.cell import run_cell
from custom.reproduction.grid import Cell
from custom.reproduction.plan import Plan
from custom.reproduction.records import ERROR

__all__ = ["Outcome", "execute", "make_executor"]


class _SerialExecutor:
    """Runs each submitted call at once, in this process; returns a finished Future."""

    capacity = 1

    def __init__(self, threads: int | None = None):
        self.threads = threads

    def submit(self, fn, spec) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(replace(spec, threads=self.threads)))
        except Exception as e:  # noqa: BLE001 - reported by the scheduler
            future.set_exception(e)
        return future

    def shutdown(self) -> None:
        pass


def _init_worker(counter, devices: tuple[str, ...], threads: int) -> None:
    """Runs first in every spawned worker: pick its GPU (round-robin) before torch is imported."""
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    if devices:
        os.environ["CUDA_VISIBLE_DEVICES"] = devices[index % len(devices)]
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)


class _PoolExecutor:
    def __init__(self, workers: int, devices: tuple[str, ...], threads: int | None = None):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        ctx = multiprocessing.get_context("spawn")
        self.threads = threads or max(1, (os.cpu_count() or 1) // workers)
        self.capacity = workers
        self.pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                        initargs=(ctx.Value("i", 0), devices, self.threads))

    def submit(self, fn, spec) -> Future:
        return self.pool.submit(fn, replace(spec, threads=self.threads))

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class _RayExecutor:
    def __init__(self, address: str, cpus_per_cell: float = 1, gpus_per_cell: float | None = None,
                 threads: int | None = None):
        import ray

        if not ray.is_initialized():
            ray.init(address=address, log_to_driver=False)
        resources = ray.cluster_resources()
        if gpus_per_cell is None:
            gpus_per_cell = 1 if resources.get("GPU", 0) >= 1 else 0
        self.threads = threads or max(1, int(cpus_per_cell))
        self.capacity = max(1, int(resources.get("CPU", 1) // cpus_per_cell))
        if gpus_per_cell:
            self.capacity = min(self.capacity, max(1, int(resources.get("GPU", 1) // gpus_per_cell)))
        self.remote = ray.remote(run_cell).options(num_cpus=cpus_per_cell, num_gpus=gpus_per_cell, max_retries=0)

    def submit(self, fn, spec) -> Future:
        return self.remote.remote(replace(spec, threads=self.threads)).future()

    def shutdown(self) -> None:
        pass


def make_executor(workers: int, devices: tuple[str, ...], ray_address: str | None, threads: int | None = None):
    """Ray tasks with ``ray_address``, else ``workers`` spawned processes (more than one), else this process.

    Torch threads per cell: ``threads``, else the CPU cores divided among the workers (one process per cell
    and one thread each avoids thread oversubscription, which slows small convolutions down by orders of
    magnitude on a busy machine); in-process runs keep torch's default unless ``threads`` is given."""
    if ray_address:
        return _RayExecutor(ray_address, threads=threads)
    if workers > 1:
        return _PoolExecutor(workers, devices, threads)
    return _SerialExecutor(threads)


@dataclass
class Outcome:
    """What one invocation did: cell ids run, skipped as finished, failed (with the error), blocked."""

    ran: list[str] = field(default_factory=list)
    skipped_done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    blocked: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0


def execute(
    p: Plan,
    workers: int = 1,
    devices: Sequence[str] = (),
    ray_address: str | None = None,
    wait_s: float = 0.0,
    progress: bool = True,
    executor=None,
    poll_s: float = 5.0,
    threads: int | None = None,
) -> Outcome:
    """Run this plan's unfinished cells, each after the cells it depends on; failures do not stop the others.

    A dependency outside this run (another shard's cell) is waited for up to ``wait_s`` seconds (polling its
    ``done.json``); cells still blocked then are reported, not run.
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    outcome = Outcome()
    mine = p.mine()
    todo = []
    for cell in mine:
        if p.is_done(cell.id):
            outcome.skipped_done.append(cell.id)
        else:
            todo.append(cell)
    if not todo:
        outcome.wall_seconds = time.perf_counter() - t0
        return outcome
    executor = executor or make_executor(workers, tuple(devices), ray_address, threads)
    in_run = {c.id for c in todo}
    done = {c.id for c in p.grid if c.id not in in_run and p.is_done(c.id)}
    pending: list[Cell] = list(todo)
    running: dict[Future, Cell] = {}
    deadline = time.monotonic() + float(wait_s)
    bar = tqdm(total=len(todo), unit="cell", disable=not progress, dynamic_ncols=True, file=sys.stderr)
    try:
        while pending or running:
            for cell in list(pending):
                if len(running) >= executor.capacity:
                    break
                bad = [d for d in cell.deps if d in outcome.failed or d in outcome.blocked]
                if bad:
                    pending.remove(cell)
                    outcome.blocked.append(cell.id)
                    bar.update(1)
                    continue
                if all(d in done for d in cell.deps):
                    pending.remove(cell)
                    bar.set_postfix_str(cell.id, refresh=True)
                    running[executor.submit(run_cell, p.specs[cell.id])] = cell
            if not running:
                if not pending:
                    break
                foreign = {d for c in pending for d in c.deps if d not in in_run and d not in done}
                newly = {d for d in foreign if p.is_done(d)}
                if newly:
                    done |= newly
                    continue
                if time.monotonic() < deadline:
                    time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
                    continue
                outcome.blocked += [c.id for c in pending]
                bar.update(len(pending))
                pending.clear()
                break
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in finished:
                cell = running.pop(future)
                error = future.exception()
                if error is None:
                    done.add(cell.id)
                    outcome.ran.append(cell.id)
                else:
                    outcome.failed[cell.id] = f"{type(error).__name__}: {error}"
                    bar.write(f"reproduce: cell {cell.id} failed: {type(error).__name__}: {error} "
                              f"(see {p.cell_dir(cell.id) / ERROR})")
                bar.update(1)
    finally:
        bar.close()
        executor.shutdown()
    outcome.wall_seconds = time.perf_counter() - t0
    return outcome
