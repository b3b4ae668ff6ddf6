"""One benchmark run: every section in one process, with the device, versions, date and settings it ran under."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from custom.benchmark.inference import bench_inference
from custom.benchmark.report import table_rows
from custom.benchmark.settings import Settings
from custom.benchmark.strategies import bench_strategies
from custom.benchmark.surface_dice import bench_surface_dice
from custom.benchmark.training import bench_training

__all__ = ["THREAD_ENV", "meta", "run_benchmark"]

# environment variables that change CPU timings; recorded with the results
THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "KMP_BLOCKTIME", "CUDA_VISIBLE_DEVICES")


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(torch.cuda.current_device())
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "cpu"


def meta(s: Settings) -> dict:
    """Device, versions, date, platform, thread environment and settings of a run."""
    import monai
    import scipy

    return {
        "device": s.device,
        "device_name": _device_name(s.device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "monai": monai.__version__,
                     "numpy": np.__version__, "scipy": scipy.__version__, "cuda": torch.version.cuda,
                     "cudnn": torch.backends.cudnn.version() if s.device == "cuda" else None},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "environment": {k: os.environ[k] for k in THREAD_ENV if k in os.environ},
        "settings": {**asdict(s), "volume_shape": list(s.volume_shape), "spacings": [list(x) for x in s.spacings]},
    }


def run_benchmark(s: Settings) -> dict:
    """Every section, in one process; returns the JSON-ready results (the table rows included)."""
    torch.manual_seed(s.seed)
    results = {"meta": meta(s)}
    start = time.perf_counter()
    results["training"] = bench_training(s)
    results["inference"] = bench_inference(s)
    results["surface_dice"] = bench_surface_dice(s)
    results["fine_tuning"] = bench_strategies(s)
    results["meta"]["elapsed_s"] = time.perf_counter() - start
    results["table"] = [list(r) for r in table_rows(results)]
    return results
