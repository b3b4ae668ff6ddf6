"""Benchmark the bundle's training loop, inference and surface Dice; every ratio comes from ONE run.

Usage::

    python scripts/benchmark.py --output bench.json                  # full sizes, CUDA if available
    python scripts/benchmark.py --device cpu --steps 1 --repeats 3    # full sizes on CPU, fewer steps
    python scripts/benchmark.py --quick --device cpu                  # tiny sizes, seconds (the tests use this)
    python scripts/benchmark.py --device cuda --compile true          # plus a torch.compile row
    python scripts/benchmark.py --from_json bench.json --markdown true  # re-render a saved run for the docs

Sections (one table, JSON with the same numbers plus device, versions, date and settings):

* training: the source bundle's training loop, i.e. a ``monai.engines.SupervisedTrainer`` built from
  ``bundles/brain_extraction_source/configs/train.yaml`` by ``monai.bundle.ConfigParser`` (its ``initialize``
  section run, its SliceDataset and DataLoader reading synthetic NIfTI volumes written to a temporary folder),
  against the bare model step (forward, BCE loss, backward, SGD step on a pre-made batch) in the same precision and
  memory format: bf16 autocast + channels_last on CUDA (as the bundle), fp32 + channels_last on CPU. The blocks of
  the two alternate (bundle, bare, bundle, bare, ...) inside one training run, so both see the same machine load;
  the ratio is the median of the per-pair ratios (goal >= 0.9).
* inference: seconds per preprocessed 1 mm head volume (176 x 256 x 256) with the bundle's ``SliceBatchInferer``
  (from ``inference.yaml``): CPU fp32 with contiguous vs channels_last slices, and the bundle's own inference path
  (``inference.yaml``'s network and ``AutocastInferer`` at ``--precision auto``: bf16 autocast on CPUs with AMX or
  AVX512-BF16, fp32 elsewhere) against fp32 channels_last, the three alternating in one run; on CUDA fp32 vs bf16
  autocast + channels_last.
* surface Dice: ``custom.metrics.surface_dice`` against DeepMind's ``surface_distance`` on a brain-like mask and a
  perturbed copy (176 x 256 x 256, 1 mm and anisotropic voxels), values checked equal (|diff| < 1e-6); on CUDA
  also the CUDA-tensor path (goal >= 100x faster than DeepMind on CPU; needs cuCIM for a GPU distance transform).
* fine-tuning: the bare step with only the strategy's parameters trainable (``custom.freeze.freeze``: full, first,
  last), cost relative to the full step.

Timing: warm-up first, ``torch.cuda.synchronize()`` around every timed block on CUDA, the median of ``--repeats``
blocks of ``--steps`` steps (one volume or one mask pair per inference / surface Dice repeat), measurements that
are compared run alternately; ``torch.set_num_threads`` is left at its default. Progress goes to stderr, the table
to stdout. Bad options: one line ``benchmark: error: ...`` on stderr, exit 2, nothing written.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import inspect
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SOURCE_BUNDLE = ROOT / "bundles" / "brain_extraction_source"
HEAD_SHAPE = (176, 256, 256)  # a 1 mm T1 head volume
QUICK_HEAD_SHAPE = (48, 64, 64)
ANISOTROPIC_SPACING = (1.2, 0.9375, 0.9375)
TOLERANCE_MM = 1.0
EQUALITY_ATOL = 1e-6
STRATEGY_NAMES = ("full", "first", "last")
# environment variables that change CPU timings; recorded with the results
THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "KMP_BLOCKTIME", "CUDA_VISIBLE_DEVICES")
# (steps, repeats, warmup) per timed measurement when not given
DEFAULTS = {"cuda": (20, 5, 10), "cpu": (1, 3, 1), "quick": (1, 2, 1)}

__all__ = ["UsageError", "benchmark", "main", "render_markdown", "render_text", "run_benchmark", "table_rows"]


class UsageError(ValueError):
    """A bad command-line option; reported as one line, exit 2."""


@dataclass
class Settings:
    device: str
    batch_size: int
    roi: int
    steps: int
    repeats: int
    warmup: int
    quick: bool
    compile: bool
    volume_shape: tuple[int, int, int]
    spacings: tuple[tuple[float, float, float], ...] = ((1.0, 1.0, 1.0), ANISOTROPIC_SPACING)
    tolerance_mm: float = TOLERANCE_MM
    seed: int = 0
    train_volumes: int = 2
    train_slices: int = field(default=24)

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)


# ---------------------------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------------------------


def _flag(value, name: str) -> bool:
    from custom.options import flag

    try:
        return flag(value)
    except ValueError:
        raise UsageError(f"--{name} must be true or false, got {value!r}") from None


def _optional_int(value, name: str, minimum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"--{name} must be an integer >= {minimum}, got {value!r}")
    return value


def resolve_settings(
    device="auto", batch_size=None, roi=None, steps=None, repeats=None, warmup=None, quick=False, compile=False
) -> Settings:
    """Check the options and fill in the defaults (full sizes, or tiny ones with ``quick``)."""
    quick, compile_ = _flag(quick, "quick"), _flag(compile, "compile")
    if not isinstance(device, str) or device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but no CUDA device is available (torch.cuda.is_available() is False)")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    batch_size = _optional_int(batch_size, "batch_size", 1)
    roi = _optional_int(roi, "roi", 8)
    if roi is not None and roi % 8:
        raise UsageError(f"--roi must be a multiple of 8 (three stride-2 downsamplings), got {roi}")
    steps, repeats = _optional_int(steps, "steps", 1), _optional_int(repeats, "repeats", 1)
    warmup = _optional_int(warmup, "warmup", 1)
    d_steps, d_repeats, d_warmup = DEFAULTS["quick" if quick else device]
    return Settings(
        device=device,
        batch_size=batch_size or (4 if quick else 32),
        roi=roi or (64 if quick else 256),
        steps=steps or d_steps,
        repeats=repeats or d_repeats,
        warmup=warmup or d_warmup,
        quick=quick,
        compile=compile_,
        volume_shape=QUICK_HEAD_SHAPE if quick else HEAD_SHAPE,
        train_slices=8 if quick else 24,
    )


# ---------------------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------------------


def _log(message: str) -> None:
    print(f"benchmark: {message}", file=sys.stderr, flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_block(fn: Callable[[], object], n: int, device: torch.device) -> float:
    """Seconds for ``n`` calls of ``fn``, queued GPU work included."""
    _sync(device)
    start = time.perf_counter()
    for _ in range(n):
        fn()
    _sync(device)
    return time.perf_counter() - start


def _median(values) -> float:
    return float(statistics.median(values))


@contextlib.contextmanager
def _cudnn_flags(flags: dict) -> Iterator[None]:
    """Temporarily set ``torch.backends.cudnn.{deterministic,benchmark}`` (what ``set_determinism`` changes)."""
    saved = _current_cudnn_flags()
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags["deterministic"], flags["benchmark"]
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved["deterministic"], saved["benchmark"]


def _current_cudnn_flags() -> dict:
    cudnn = torch.backends.cudnn
    return {"deterministic": bool(cudnn.deterministic), "benchmark": bool(cudnn.benchmark)}


# ---------------------------------------------------------------------------------------------------------------
# Synthetic but realistic data
# ---------------------------------------------------------------------------------------------------------------


def _smooth_noise(shape: tuple[int, ...], rng: np.random.Generator, cells: int = 8) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a coarse random grid, trilinearly upsampled to ``shape``."""
    coarse = torch.from_numpy(rng.uniform(-1.0, 1.0, size=(1, 1, *(max(2, s // cells) for s in shape))))
    fine = torch.nn.functional.interpolate(coarse.float(), size=shape, mode="trilinear", align_corners=True)
    return fine[0, 0].numpy()


def _radius(shape: tuple[int, ...], spacing, shift=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Normalised ellipsoidal radius: 1 on a brain-sized ellipsoid centred in the field of view."""
    extent = [n * s for n, s in zip(shape, spacing, strict=True)]
    semi = [0.36 * e for e in extent]
    axes = [
        ((np.arange(n, dtype=np.float32) + 0.5) * s - e / 2 - d) / a
        for n, s, e, a, d in zip(shape, spacing, extent, semi, shift, strict=True)
    ]
    z, y, x = np.meshgrid(*axes, indexing="ij", sparse=True)
    return np.sqrt(z * z + y * y + x * x)


def brain_mask_pair(shape, spacing, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A brain-like mask (a bumpy ellipsoid) and a perturbed copy: 1 mm shifted, its boundary rippled."""
    rng = np.random.default_rng(seed)
    bumps = _smooth_noise(tuple(shape), rng)
    target = (_radius(shape, spacing) - 0.06 * bumps) < 1.0
    ripple = _smooth_noise(tuple(shape), rng, cells=4)
    pred = (_radius(shape, spacing, shift=(1.0, -1.0, 0.5)) - 0.06 * bumps - 0.015 * ripple) < 1.0
    return pred, target


def head_phantom(shape, spacing, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A T1-like head: textured brain, dark CSF rim, bright skull and scalp, noisy background; and its brain mask."""
    rng = np.random.default_rng(seed)
    r = _radius(shape, spacing) - 0.05 * _smooth_noise(tuple(shape), rng)
    brain = r < 1.0
    texture = _smooth_noise(tuple(shape), rng, cells=3)
    image = np.where(brain, 0.55 + 0.15 * (texture > 0) + 0.05 * texture, 0.0).astype(np.float32)
    image[(r >= 1.0) & (r < 1.06)] = 0.15  # CSF
    image[(r >= 1.06) & (r < 1.16)] = 0.9  # skull / scalp
    image += rng.normal(0.0, 0.03, size=shape).astype(np.float32)
    return np.clip(image, 0.0, None), brain


def write_training_data(folder: Path, s: Settings) -> Path:
    """``s.train_volumes`` NIfTI head volumes (at the bundle's 1 x 0.95 x 0.95 mm, in RAS) and a datalist JSON."""
    import nibabel as nib

    from custom.splits import write_datalist

    spacing = (1.0, 0.95, 0.95)
    shape = (s.roi + 8, s.roi + 8, s.train_slices)  # slices along the last axis, a bit larger than the crop
    affine = np.diag([*spacing, 1.0])
    entries = []
    for i in range(s.train_volumes):
        image, mask = head_phantom(shape, spacing, seed=s.seed + i)
        image_path, mask_path = folder / f"head{i}.nii.gz", folder / f"head{i}_brainmask.nii.gz"
        nib.save(nib.Nifti1Image(image, affine), str(image_path))
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), str(mask_path))
        entries.append({"image": str(image_path), "label": str(mask_path), "id": f"head{i}", "domain": "synthetic"})
    return write_datalist({"name": "benchmark", "training": entries, "validation": [], "test": []},
                          folder / "datalist.json")


# ---------------------------------------------------------------------------------------------------------------
# Models from the bundle's own definitions
# ---------------------------------------------------------------------------------------------------------------


def _instantiate(config: dict):
    from monai.bundle import ConfigParser

    return ConfigParser({"item": copy.deepcopy(config)}).get_parsed_content("item")


class BareStep:
    """Forward, loss, backward and SGD step on one pre-made batch: what the training loop cannot beat."""

    def __init__(self, train_config: dict, s: Settings, channels_last: bool = True, amp: bool | None = None,
                 strategy: str | None = None, compile: bool = False):
        from custom.freeze import freeze

        device = s.torch_device
        self.device, self.amp = device, (device.type == "cuda") if amp is None else amp
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        net = _instantiate(train_config["network_def"]).to(device, memory_format=fmt)
        self.network = freeze(net, strategy) if strategy else net
        opt = train_config["optimizer"]
        self.optimizer = torch.optim.SGD(
            [p for p in self.network.parameters() if p.requires_grad], lr=float(train_config["learning_rate"]),
            momentum=float(opt["momentum"]), nesterov=bool(opt["nesterov"]), weight_decay=float(opt["weight_decay"]),
        )
        self.loss = _instantiate(train_config["loss"])
        self.model = torch.compile(self.network) if compile else self.network
        gen = torch.Generator().manual_seed(s.seed)
        shape = (s.batch_size, 1, s.roi, s.roi)
        self.image = torch.rand(shape, generator=gen).to(device, memory_format=fmt)
        self.label = (torch.rand(shape, generator=gen) > 0.5).float().to(device, memory_format=fmt)
        self.network.train()

    def __call__(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            loss = self.loss(self.model(self.image), self.label)
        loss.backward()
        self.optimizer.step()


def _precision(s: Settings) -> str:
    return "bf16 autocast + channels_last" if s.device == "cuda" else "fp32 + channels_last"


# ---------------------------------------------------------------------------------------------------------------
# (a) training loop vs bare step
# ---------------------------------------------------------------------------------------------------------------


class _Interleave:
    """Times the trainer in blocks of ``steps`` iterations and runs one bare-step block after each of them."""

    def __init__(self, s: Settings, bare: BareStep, bare_flags: dict):
        self.s, self.bare, self.bare_flags = s, bare, bare_flags
        self.bundle_s: list[float] = []
        self.bare_s: list[float] = []
        self.t0 = 0.0

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine) -> None:
        s, device, i = self.s, self.s.torch_device, engine.state.iteration
        if i < s.warmup or (i > s.warmup and (i - s.warmup) % s.steps):
            return
        _sync(device)
        if i > s.warmup:
            self.bundle_s.append(time.perf_counter() - self.t0)
        with _cudnn_flags(self.bare_flags):
            if i == s.warmup:
                _time_block(self.bare, s.warmup, device)
            else:
                self.bare_s.append(_time_block(self.bare, s.steps, device))
        _sync(device)
        self.t0 = time.perf_counter()


def bench_training(s: Settings) -> dict:
    from monai.bundle import ConfigParser

    default_flags = _current_cudnn_flags()
    with tempfile.TemporaryDirectory(prefix="benchmark-") as tmp:
        tmp = Path(tmp)
        datalist = write_training_data(tmp, s)
        parser = ConfigParser()
        parser.read_config(str(SOURCE_BUNDLE / "configs" / "train.yaml"))
        parser.update({
            "bundle_root": str(SOURCE_BUNDLE),
            "dataset_dir": str(tmp),
            "datalist_file": str(datalist),
            "output_dir": str(tmp / "run"),
            "ckpt_dir": str(tmp / "models"),
            "device": f"$torch.device('{s.device}')",
            "amp": s.device == "cuda",
            "seed": s.seed,
            "max_epochs": 1,
            "iterations_per_epoch": s.warmup + s.repeats * s.steps,
            "batch_size": s.batch_size,
            "roi_size": [s.roi, s.roi],
        })
        parser.parse(reset=True)
        parser.get_parsed_content("imports")
        parser.get_parsed_content("initialize")  # what `monai.bundle run` does first (set_determinism)
        bundle_flags = _current_cudnn_flags()
        _log(f"training: caching slices of {s.train_volumes} synthetic volumes with the bundle's preprocessing")
        trainer = parser.get_parsed_content("train#trainer")
        raw = {k: parser.get(k) for k in ("network_def", "optimizer", "learning_rate", "loss")}
        raw["learning_rate"] = parser.get_parsed_content("learning_rate")
        with _cudnn_flags(default_flags):
            bare = BareStep(raw, s)
        timer = _Interleave(s, bare, default_flags)
        timer.attach(trainer)
        _log(f"training: {s.repeats} x ({s.steps} bundle-loop iterations + {s.steps} bare steps) of "
             f"{s.batch_size} x {s.roi}x{s.roi} slices on {s.device}, after {s.warmup} warm-up each")
        try:
            trainer.run()
        finally:
            torch.backends.cudnn.deterministic = default_flags["deterministic"]
            torch.backends.cudnn.benchmark = default_flags["benchmark"]
        n_slices = trainer.data_loader.dataset.n_slices
    slices = s.batch_size * s.steps
    bundle_rates = [slices / t for t in timer.bundle_s]
    bare_rates = [slices / t for t in timer.bare_s]
    out = {
        "precision": _precision(s),
        "cached_slices": n_slices,
        "bare_step": {"slices_per_s": _median(bare_rates), "repeats_slices_per_s": bare_rates},
        "bundle_loop": {"slices_per_s": _median(bundle_rates), "repeats_slices_per_s": bundle_rates,
                        "cudnn": bundle_flags},
        "ratio_bundle_to_bare": _median([a / b for a, b in zip(bundle_rates, bare_rates, strict=True)]),
        "goal": 0.9,
        "note": "bundle loop: whole iterations (next batch from the DataLoader, prepare_batch, step, decollate, "
                "iteration handlers); epoch-level handlers (checkpoint, LR schedule) fall outside the timed blocks",
    }
    if s.device == "cuda":
        out["references"] = _bare_references(raw, s, bare)
    if s.compile:
        out["compile"] = _bare_compiled(raw, s, bare)
    del trainer, bare
    return out


def _alternate(runs: dict[str, Callable[[], object]], s: Settings, n: int, warmup: int) -> dict[str, list[float]]:
    """Warm each callable up, then time ``s.repeats`` rounds of ``n`` calls each, the callables in turn."""
    device = s.torch_device
    for fn in runs.values():
        _time_block(fn, warmup, device)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(s.repeats):
        for name, fn in runs.items():
            times[name].append(_time_block(fn, n, device))
    return times


def _bare_references(raw: dict, s: Settings, bare: BareStep) -> dict:
    """On CUDA, the bare step in fp32 and in bf16 without channels_last, against the bf16 + channels_last one."""
    _log("training: bare-step references (fp32 contiguous, bf16 contiguous)")
    runs = {
        "bf16_channels_last": bare,
        "fp32_contiguous": BareStep(raw, s, channels_last=False, amp=False),
        "bf16_contiguous": BareStep(raw, s, channels_last=False, amp=True),
    }
    times = _alternate(runs, s, s.steps, s.warmup)
    slices = s.batch_size * s.steps
    out = {name: {"slices_per_s": slices / _median(t)} for name, t in times.items() if name != "bf16_channels_last"}
    for name in out:
        out[name]["speedup_of_bf16_channels_last"] = _median(times[name]) / _median(times["bf16_channels_last"])
    return out


def _bare_compiled(raw: dict, s: Settings, bare: BareStep) -> dict:
    _log("training: torch.compile of the bare step (the first call compiles)")
    compiled = BareStep(raw, s, compile=True)
    start = time.perf_counter()
    _time_block(compiled, 1, s.torch_device)
    compile_s = time.perf_counter() - start
    times = _alternate({"bare": bare, "compiled": compiled}, s, s.steps, s.warmup)
    slices = s.batch_size * s.steps
    return {"slices_per_s": slices / _median(times["compiled"]), "first_call_s": compile_s,
            "speedup_over_bare": _median(times["bare"]) / _median(times["compiled"])}


# ---------------------------------------------------------------------------------------------------------------
# (b) inference of one head volume
# ---------------------------------------------------------------------------------------------------------------


def _bundle_inference(precision: str, device: torch.device) -> tuple[torch.nn.Module, Callable, str]:
    """The source bundle's own inference network and inferer (``inference.yaml``) at ``--precision precision``:
    shipped weights, channels_last, ``AutocastInferer`` around the ``SliceBatchInferer``; and the precision it ran."""
    from monai.bundle import ConfigParser

    from custom.precision import name

    parser = ConfigParser()
    parser.read_config(str(SOURCE_BUNDLE / "configs" / "inference.yaml"))
    parser.update({"bundle_root": str(SOURCE_BUNDLE), "device": f"$torch.device('{device}')", "precision": precision})
    parser.parse(reset=True)
    parser.get_parsed_content("imports")
    network = parser.get_parsed_content("network").eval()
    return network, parser.get_parsed_content("inferer"), name(parser.get_parsed_content("compute_dtype"))


def bench_inference(s: Settings) -> dict:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(SOURCE_BUNDLE / "configs" / "inference.yaml"))
    net_cfg = parser.get("network_def")
    slice_cfg = parser.get("inferer#inferer")  # the SliceBatchInferer inside the bundle's AutocastInferer
    image, _ = head_phantom(s.volume_shape, (1.0, 1.0, 1.0), seed=s.seed)
    volume = torch.from_numpy(image)[None, None]  # (B, C, H, W, D), slices along the last axis

    def runner(device: torch.device, channels_last: bool, amp: bool) -> Callable[[], object]:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        net = _instantiate(net_cfg).to(device, memory_format=fmt).eval()
        inferer = _instantiate({**slice_cfg, "channels_last": channels_last})
        x = volume.to(device)

        def infer():
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                return inferer(x, net)

        return infer

    def bundle_runner(device: torch.device, precision: str) -> tuple[Callable[[], object], str]:
        net, inferer, ran = _bundle_inference(precision, device)
        x = volume.to(device)

        def infer():
            with torch.no_grad():  # as SupervisedEvaluator runs it
                return inferer(x, net)

        return infer, ran

    # the bundle's `initialize` (set_determinism) sets the cuDNN flags the bundle infers with
    flags = {"deterministic": True, "benchmark": False}
    shape = "x".join(map(str, s.volume_shape))
    out: dict = {"volume_shape": list(s.volume_shape), "slice_batch_size": int(slice_cfg["batch_size"]),
                 "cudnn": flags}
    _log(f"inference: {s.repeats} x one {shape} volume per variant on cpu, after 1 warm-up volume")
    cpu = torch.device("cpu")
    auto, auto_ran = bundle_runner(cpu, "auto")
    times = _alternate({"fp32_contiguous": runner(cpu, False, False), "fp32_channels_last": runner(cpu, True, False),
                        "bundle_auto": auto}, _with(s, device="cpu"), 1, 1)
    out["cpu"] = {name: {"seconds": _median(t)} for name, t in times.items()}
    out["cpu"]["bundle_auto"]["precision"] = auto_ran  # what --precision auto chose on this CPU
    out["cpu"]["speedup_channels_last"] = out["cpu"]["fp32_contiguous"]["seconds"] / \
        out["cpu"]["fp32_channels_last"]["seconds"]
    # the same run, alternating: the bundle's default path against fp32 channels_last
    out["cpu"]["speedup_auto_over_fp32_channels_last"] = out["cpu"]["fp32_channels_last"]["seconds"] / \
        out["cpu"]["bundle_auto"]["seconds"]
    if s.device == "cuda":
        _log(f"inference: {s.repeats} x one {shape} volume per variant on cuda")
        gpu = s.torch_device
        with _cudnn_flags(flags):
            times = _alternate({"fp32_contiguous": runner(gpu, False, False),
                                "bf16_channels_last": runner(gpu, True, True)}, s, 1, max(1, s.warmup // 2))
        out["cuda"] = {name: {"seconds": _median(t)} for name, t in times.items()}
        out["cuda"]["speedup_bf16_channels_last"] = out["cuda"]["fp32_contiguous"]["seconds"] / \
            out["cuda"]["bf16_channels_last"]["seconds"]
    return out


def _with(s: Settings, **changes) -> Settings:
    return Settings(**{**asdict(s), **changes})


# ---------------------------------------------------------------------------------------------------------------
# (c) surface Dice
# ---------------------------------------------------------------------------------------------------------------


def bench_surface_dice(s: Settings) -> dict:
    import surface_distance

    from custom.metrics import surface_dice

    cucim = _has_cucim()
    pairs = []
    for i, spacing in enumerate(s.spacings):
        pred, target = brain_mask_pair(s.volume_shape, spacing, seed=s.seed + 100 + i)
        values: dict[str, float] = {}

        def deepmind(pred=pred, target=target, spacing=spacing, values=values):
            distances = surface_distance.compute_surface_distances(target, pred, spacing)
            values["deepmind"] = float(surface_distance.compute_surface_dice_at_tolerance(distances, s.tolerance_mm))

        def ours(pred=pred, target=target, spacing=spacing, values=values):
            values["custom"] = surface_dice(pred, target, spacing, s.tolerance_mm)

        runs = {"deepmind_cpu": deepmind, "custom_cpu": ours}
        if s.device == "cuda":
            pred_gpu, target_gpu = (torch.from_numpy(m).to(s.torch_device) for m in (pred, target))

            def ours_gpu(pred=pred_gpu, target=target_gpu, spacing=spacing, values=values):
                values["custom_cuda"] = surface_dice(pred, target, spacing, s.tolerance_mm)

            runs["custom_cuda"] = ours_gpu
        _log(f"surface Dice: {s.repeats} x {'x'.join(map(str, s.volume_shape))} pair, spacing {spacing} mm: "
             + ", ".join(runs))
        times = _alternate(runs, s, 1, 1)
        diffs = {name: abs(values[name] - values["deepmind"]) for name in ("custom", "custom_cuda") if name in values}
        pair = {
            "spacing_mm": list(spacing),
            "surface_dice": values["deepmind"],
            "dice": float(2 * np.count_nonzero(pred & target) / (np.count_nonzero(pred) + np.count_nonzero(target))),
            "seconds": {name: _median(t) for name, t in times.items()},
            "abs_diff": diffs,
            "equal": all(d < EQUALITY_ATOL for d in diffs.values()),
        }
        pair["speedup_over_deepmind"] = {name: pair["seconds"]["deepmind_cpu"] / sec
                                         for name, sec in pair["seconds"].items() if name != "deepmind_cpu"}
        pairs.append(pair)
    return {"shape": list(s.volume_shape), "tolerance_mm": s.tolerance_mm, "atol": EQUALITY_ATOL, "cucim": cucim,
            "pairs": pairs, "equal": all(p["equal"] for p in pairs), "cuda_goal": 100.0}


def _has_cucim() -> bool:
    """Whether surface Dice of CUDA masks runs its distance transform on the GPU (cupy and cuCIM installed)."""
    from custom.metrics import _has_cucim as has_cucim

    return has_cucim()


# ---------------------------------------------------------------------------------------------------------------
# (d) fine-tuning strategies
# ---------------------------------------------------------------------------------------------------------------


def bench_strategies(s: Settings) -> dict:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(SOURCE_BUNDLE / "configs" / "train.yaml"))
    raw = {k: parser.get(k) for k in ("network_def", "optimizer", "loss")}
    raw["learning_rate"] = parser.get("learning_rate")
    _log(f"fine-tuning: {s.repeats} x {s.steps} bare steps per strategy ({', '.join(STRATEGY_NAMES)})")
    runs = {name: BareStep(raw, s, strategy=name) for name in STRATEGY_NAMES}
    trainable = {name: sum(p.numel() for p in r.network.parameters() if p.requires_grad) for name, r in runs.items()}
    times = _alternate(runs, s, s.steps, s.warmup)
    full = _median(times["full"])
    slices = s.batch_size * s.steps
    return {
        "precision": _precision(s),
        "strategies": {
            name: {"slices_per_s": slices / _median(times[name]), "relative_cost": _median(times[name]) / full,
                   "trainable_parameters": trainable[name]}
            for name in STRATEGY_NAMES
        },
    }


# ---------------------------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------------------------


def _num(x: float, digits: int = 3) -> str:
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    decimals = max(0, digits - 1 - int(math.floor(math.log10(abs(x)))))
    return f"{x:,.{decimals}f}"


def _seconds(x: float) -> str:
    return f"{_num(x * 1000)} ms" if x < 1 else f"{_num(x)} s"


def _spacing_label(spacing) -> str:
    return "1 mm" if all(v == 1.0 for v in spacing) else "x".join(f"{v:g}" for v in spacing) + " mm"


def table_rows(results: dict) -> list[tuple[str, str, str]]:
    """``(section, measurement, result)`` rows; the ratio rows start with ``ratio:``."""
    rows: list[tuple[str, str, str]] = []
    t = results["training"]
    sec = f"training ({t['precision']})"
    rows += [
        (sec, "bare step: forward + backward + SGD on a pre-made batch",
         f"{_num(t['bare_step']['slices_per_s'])} slices/s"),
        (sec, "bundle loop: SupervisedTrainer from train.yaml (SliceDataset, DataLoader)",
         f"{_num(t['bundle_loop']['slices_per_s'])} slices/s"),
        (sec, "ratio: bundle loop / bare step (goal >= 0.9)", f"{t['ratio_bundle_to_bare']:.2f}"),
    ]
    for name, ref in t.get("references", {}).items():
        label = name.replace("_", " ").replace("channels last", "channels_last")
        rows += [(sec, f"bare step, {label}", f"{_num(ref['slices_per_s'])} slices/s"),
                 (sec, f"ratio: bf16 + channels_last / {label} (speedup)",
                  f"{ref['speedup_of_bf16_channels_last']:.2f}")]
    if "compile" in t:
        c = t["compile"]
        rows += [(sec, f"bare step + torch.compile (first call {_seconds(c['first_call_s'])})",
                  f"{_num(c['slices_per_s'])} slices/s"),
                 (sec, "ratio: compiled / bare step (speedup)", f"{c['speedup_over_bare']:.2f}")]

    inf = results["inference"]
    sec = f"inference ({'x'.join(map(str, inf['volume_shape']))} volume, SliceBatchInferer)"
    rows += [
        (sec, "cpu fp32, contiguous slices", _seconds(inf["cpu"]["fp32_contiguous"]["seconds"])),
        (sec, "cpu fp32, channels_last slices", _seconds(inf["cpu"]["fp32_channels_last"]["seconds"])),
        (sec, "ratio: cpu contiguous / channels_last time (speedup)", f"{inf['cpu']['speedup_channels_last']:.2f}"),
    ]
    if "bundle_auto" in inf["cpu"]:  # saved runs of earlier versions lack it
        ran = inf["cpu"]["bundle_auto"]["precision"]
        how = "bf16 autocast + channels_last" if ran == "bf16" else "fp32 + channels_last"
        rows += [
            (sec, f"cpu bundle inference.yaml, --precision auto ({how})",
             _seconds(inf["cpu"]["bundle_auto"]["seconds"])),
            (sec, "ratio: cpu fp32 channels_last / --precision auto time (speedup)",
             f"{inf['cpu']['speedup_auto_over_fp32_channels_last']:.2f}"),
        ]
    if "cuda" in inf:
        rows += [
            (sec, "cuda fp32, contiguous slices", _seconds(inf["cuda"]["fp32_contiguous"]["seconds"])),
            (sec, "cuda bf16 autocast + channels_last", _seconds(inf["cuda"]["bf16_channels_last"]["seconds"])),
            (sec, "ratio: cuda fp32 / bf16 + channels_last time (speedup)",
             f"{inf['cuda']['speedup_bf16_channels_last']:.2f}"),
        ]

    sd = results["surface_dice"]
    sec = f"surface Dice ({'x'.join(map(str, sd['shape']))}, tolerance {sd['tolerance_mm']:g} mm)"
    for pair in sd["pairs"]:
        sp = _spacing_label(pair["spacing_mm"])
        secs, speed = pair["seconds"], pair["speedup_over_deepmind"]
        rows += [
            (sec, f"DeepMind surface_distance (cpu), {sp}", _seconds(secs["deepmind_cpu"])),
            (sec, f"custom.metrics.surface_dice (cpu), {sp}", _seconds(secs["custom_cpu"])),
            (sec, f"ratio: DeepMind / custom cpu time (speedup), {sp}", f"{speed['custom_cpu']:.2f}"),
        ]
        if "custom_cuda" in secs:
            via = "cuCIM" if sd["cucim"] else "no cuCIM: CPU distance transform"
            rows += [
                (sec, f"custom.metrics.surface_dice (cuda tensors, {via}), {sp}", _seconds(secs["custom_cuda"])),
                (sec, f"ratio: DeepMind cpu / custom cuda time (speedup, goal >= 100), {sp}",
                 f"{speed['custom_cuda']:.1f}"),
            ]
        worst = max(pair["abs_diff"].values())
        rows.append((sec, f"equal to DeepMind (|diff| < {sd['atol']:g}), {sp}: {pair['surface_dice']:.6f}",
                     f"{'yes' if pair['equal'] else 'NO'} (max |diff| {worst:.1e})"))

    st = results["fine_tuning"]
    sec = f"fine-tuning step ({st['precision']})"
    for name in STRATEGY_NAMES:
        row = st["strategies"][name]
        rows.append((sec, f"{name}: {row['trainable_parameters']:,} trainable parameters",
                     f"{_num(row['slices_per_s'])} slices/s"))
    for name in STRATEGY_NAMES[1:]:
        rows.append((sec, f"ratio: {name} / full step time (relative cost)",
                     f"{st['strategies'][name]['relative_cost']:.2f}"))
    return rows


def _title(results: dict) -> str:
    m, st = results["meta"], results["meta"]["settings"]
    quick = ", quick" if st["quick"] else ""
    return (f"benchmark on {m['device_name']} ({m['device']}, {m['torch_threads']} threads), batch {st['batch_size']} "
            f"x {st['roi']}x{st['roi']}, median of {st['repeats']} x {st['steps']} step(s){quick}; "
            f"torch {m['versions']['torch']}, monai {m['versions']['monai']}, {m['date']}")


def render_text(results: dict) -> str:
    """The table as plain text, columns aligned."""
    header = ("Section", "Measurement", "Result")
    rows = [header, *table_rows(results)]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [_title(results)]
    for k, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_markdown(results: dict) -> str:
    """The table as Markdown (pipes escaped), the title as an italic caption above it; for the docs."""
    esc = lambda text: text.replace("|", "\\|")  # noqa: E731
    lines = [f"*{esc(_title(results))}*", "", "| Section | Measurement | Result |", "|---|---|---:|"]
    lines += [f"| {esc(a)} | {esc(b)} | {esc(c)} |" for a, b, c in table_rows(results)]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------------------


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(torch.cuda.current_device())
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "cpu"


def _meta(s: Settings) -> dict:
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
    results = {"meta": _meta(s)}
    start = time.perf_counter()
    results["training"] = bench_training(s)
    results["inference"] = bench_inference(s)
    results["surface_dice"] = bench_surface_dice(s)
    results["fine_tuning"] = bench_strategies(s)
    results["meta"]["elapsed_s"] = time.perf_counter() - start
    results["table"] = [list(r) for r in table_rows(results)]
    return results


def _fail(message: str) -> None:
    print(f"benchmark: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def benchmark(
    *extra,
    device: str = "auto",
    batch_size: int | None = None,
    roi: int | None = None,
    steps: int | None = None,
    repeats: int | None = None,
    warmup: int | None = None,
    quick: bool = False,
    compile: bool = False,
    markdown: bool = False,
    output: str | None = None,
    from_json: str | None = None,
    **unknown,
) -> None:
    """Measure, print ONE table of ratios, and optionally write the results as JSON.

    Args:
        device: auto | cpu | cuda (auto: cuda when available).
        batch_size: training batch (default 32; 4 with --quick).
        roi: training crop side, a multiple of 8 (default 256; 64 with --quick).
        steps: steps per timed block (default: 20 on cuda, 1 on cpu).
        repeats: timed blocks per measurement, the median reported (default: 5 on cuda, 3 on cpu, 2 with --quick).
        warmup: untimed warm-up steps per measurement (default: 10 on cuda, 1 on cpu).
        quick: tiny sizes (64x64 crops, a 48x64x64 volume, few steps): seconds, for tests.
        compile: also time the bare step under torch.compile.
        markdown: print the table as Markdown (to paste into docs).
        output: write the results (numbers, table, device, versions, date, settings) to this JSON file.
        from_json: render the table of a saved results JSON instead of measuring.
    """
    try:
        if extra:
            raise UsageError(f"unexpected argument(s): {' '.join(map(str, extra))}")
        if unknown:
            raise UsageError(f"unknown option(s): {' '.join('--' + k for k in unknown)}")
        as_markdown = _flag(markdown, "markdown")
        if output is not None and (not isinstance(output, str) or not output or Path(output).is_dir()):
            raise UsageError(f"--output must be a JSON file path, got {output!r}")
        if from_json is not None:
            if not isinstance(from_json, str) or not Path(from_json).is_file():
                raise UsageError(f"--from_json {from_json!r}: no such file")
            try:
                results = json.loads(Path(from_json).read_text())
                text = render_markdown(results) if as_markdown else render_text(results)
            except (ValueError, KeyError, TypeError) as e:
                raise UsageError(f"--from_json {from_json}: not a benchmark results file ({e!r})") from None
            print(text)
            return
        settings = resolve_settings(device, batch_size, roi, steps, repeats, warmup, quick, compile)
    except UsageError as e:
        _fail(str(e))
    with contextlib.redirect_stdout(sys.stderr):  # the engines' log lines: stdout holds the table only
        results = run_benchmark(settings)
    print(render_markdown(results) if as_markdown else render_text(results), flush=True)
    if output is not None:
        path = Path(output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
        _log(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    import fire

    from custom.options import refuse_unknown_options

    args = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__.strip() + "\n\nOptions (python scripts/benchmark.py --name value):\n")
        print(inspect.cleandoc(benchmark.__doc__).split("Args:\n", 1)[1])
        return
    fire.Fire(benchmark, command=refuse_unknown_options(benchmark, args, "benchmark: error: "), name="benchmark")


if __name__ == "__main__":
    main()
