"""Training: the source bundle's own training loop against the bare model step, alternating inside one run."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from custom.benchmark.bundle import SOURCE_BUNDLE, instantiate, source_config
from custom.benchmark.phantoms import write_training_data
from custom.benchmark.settings import Settings
from custom.benchmark.timing import alternate, cudnn_flags, current_cudnn_flags, log, median, sync, time_block

__all__ = ["BareStep", "bench_training", "precision_label"]


class BareStep:
    """Forward, loss, backward and SGD step on one pre-made batch: what the training loop cannot beat."""

    def __init__(self, train_config: dict, s: Settings, channels_last: bool = True, amp: bool | None = None,
                 strategy: str | None = None, compile: bool = False):
        from custom.freeze import freeze

        device = s.torch_device
        self.device, self.amp = device, (device.type == "cuda") if amp is None else amp
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        net = instantiate(train_config["network_def"]).to(device, memory_format=fmt)
        self.network = freeze(net, strategy) if strategy else net
        opt = train_config["optimizer"]
        self.optimizer = torch.optim.SGD(
            [p for p in self.network.parameters() if p.requires_grad], lr=float(train_config["learning_rate"]),
            momentum=float(opt["momentum"]), nesterov=bool(opt["nesterov"]), weight_decay=float(opt["weight_decay"]),
        )
        self.loss = instantiate(train_config["loss"])
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


def precision_label(s: Settings) -> str:
    """The precision and memory format the bare step and the bundle train in on ``s.device``."""
    return "bf16 autocast + channels_last" if s.device == "cuda" else "fp32 + channels_last"


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
        sync(device)
        if i > s.warmup:
            self.bundle_s.append(time.perf_counter() - self.t0)
        with cudnn_flags(self.bare_flags):
            if i == s.warmup:
                time_block(self.bare, s.warmup, device)
            else:
                self.bare_s.append(time_block(self.bare, s.steps, device))
        sync(device)
        self.t0 = time.perf_counter()


def bench_training(s: Settings) -> dict:
    default_flags = current_cudnn_flags()
    with tempfile.TemporaryDirectory(prefix="benchmark-") as tmp:
        tmp = Path(tmp)
        datalist = write_training_data(tmp, s)
        parser = source_config("train")
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
        bundle_flags = current_cudnn_flags()
        log(f"training: caching slices of {s.train_volumes} synthetic volumes with the bundle's preprocessing")
        trainer = parser.get_parsed_content("train#trainer")
        raw = {k: parser.get(k) for k in ("network_def", "optimizer", "learning_rate", "loss")}
        raw["learning_rate"] = parser.get_parsed_content("learning_rate")
        with cudnn_flags(default_flags):
            bare = BareStep(raw, s)
        timer = _Interleave(s, bare, default_flags)
        timer.attach(trainer)
        log(f"training: {s.repeats} x ({s.steps} bundle-loop iterations + {s.steps} bare steps) of "
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
        "precision": precision_label(s),
        "cached_slices": n_slices,
        "bare_step": {"slices_per_s": median(bare_rates), "repeats_slices_per_s": bare_rates},
        "bundle_loop": {"slices_per_s": median(bundle_rates), "repeats_slices_per_s": bundle_rates,
                        "cudnn": bundle_flags},
        "ratio_bundle_to_bare": median([a / b for a, b in zip(bundle_rates, bare_rates, strict=True)]),
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


def _bare_references(raw: dict, s: Settings, bare: BareStep) -> dict:
    """On CUDA, the bare step in fp32 and in bf16 without channels_last, against the bf16 + channels_last one."""
    log("training: bare-step references (fp32 contiguous, bf16 contiguous)")
    runs = {
        "bf16_channels_last": bare,
        "fp32_contiguous": BareStep(raw, s, channels_last=False, amp=False),
        "bf16_contiguous": BareStep(raw, s, channels_last=False, amp=True),
    }
    times = alternate(runs, s, s.steps, s.warmup)
    slices = s.batch_size * s.steps
    out = {name: {"slices_per_s": slices / median(t)} for name, t in times.items() if name != "bf16_channels_last"}
    for name in out:
        out[name]["speedup_of_bf16_channels_last"] = median(times[name]) / median(times["bf16_channels_last"])
    return out


def _bare_compiled(raw: dict, s: Settings, bare: BareStep) -> dict:
    log("training: torch.compile of the bare step (the first call compiles)")
    compiled = BareStep(raw, s, compile=True)
    start = time.perf_counter()
    time_block(compiled, 1, s.torch_device)
    compile_s = time.perf_counter() - start
    times = alternate({"bare": bare, "compiled": compiled}, s, s.steps, s.warmup)
    slices = s.batch_size * s.steps
    return {"slices_per_s": slices / median(times["compiled"]), "first_call_s": compile_s,
            "speedup_over_bare": median(times["bare"]) / median(times["compiled"])}
