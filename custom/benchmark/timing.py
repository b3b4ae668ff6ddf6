"""Timing: blocks of calls with queued GPU work included, medians, alternating runs, progress lines on stderr."""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator

import torch

from custom.benchmark.settings import Settings

__all__ = ["alternate", "cudnn_flags", "current_cudnn_flags", "log", "median", "sync", "time_block"]


def log(message: str) -> None:
    print(f"benchmark: {message}", file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_block(fn: Callable[[], object], n: int, device: torch.device) -> float:
    """Seconds for ``n`` calls of ``fn``, queued GPU work included."""
    sync(device)
    start = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return time.perf_counter() - start


def median(values) -> float:
    return float(statistics.median(values))


def alternate(runs: dict[str, Callable[[], object]], s: Settings, n: int, warmup: int) -> dict[str, list[float]]:
    """Warm each callable up, then time ``s.repeats`` rounds of ``n`` calls each, the callables in turn."""
    device = s.torch_device
    for fn in runs.values():
        time_block(fn, warmup, device)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(s.repeats):
        for name, fn in runs.items():
            times[name].append(time_block(fn, n, device))
    return times


@contextlib.contextmanager
def cudnn_flags(flags: dict) -> Iterator[None]:
    """Temporarily set ``torch.backends.cudnn.{deterministic,benchmark}`` (what ``set_determinism`` changes)."""
    saved = current_cudnn_flags()
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags["deterministic"], flags["benchmark"]
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved["deterministic"], saved["benchmark"]


def current_cudnn_flags() -> dict:
    cudnn = torch.backends.cudnn
    return {"deterministic": bool(cudnn.deterministic), "benchmark": bool(cudnn.benchmark)}
