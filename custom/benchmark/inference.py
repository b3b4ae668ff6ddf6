"""Inference: seconds per head volume with the bundle's slice-batch inferer, memory formats and precisions compared."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from custom.benchmark.bundle import SOURCE_BUNDLE, instantiate, source_config
from custom.benchmark.phantoms import head_phantom
from custom.benchmark.settings import Settings
from custom.benchmark.timing import alternate, cudnn_flags, log, median

__all__ = ["bench_inference"]


def _bundle_inference(precision: str, device: torch.device, **slices) -> tuple[torch.nn.Module, Callable, str]:
    """The source bundle's own inference network and inferer (``inference.yaml``) at ``--precision precision``:
    shipped weights, channels_last, ``AutocastInferer`` around the ``SliceBatchInferer`` (``slices`` overrides its
    arguments); and the precision it ran."""
    from custom.precision import name

    parser = source_config("inference")
    parser.update({"bundle_root": str(SOURCE_BUNDLE), "device": f"$torch.device('{device}')", "precision": precision,
                   **{f"inferer#inferer#{k}": v for k, v in slices.items()}})
    parser.parse(reset=True)
    parser.get_parsed_content("imports")
    network = parser.get_parsed_content("network").eval()
    return network, parser.get_parsed_content("inferer"), name(parser.get_parsed_content("compute_dtype"))


def bench_inference(s: Settings) -> dict:
    parser = source_config("inference")
    net_cfg = parser.get("network_def")
    slice_cfg = parser.get("inferer#inferer")  # the SliceBatchInferer inside the bundle's AutocastInferer
    image, _ = head_phantom(s.volume_shape, (1.0, 1.0, 1.0), seed=s.seed)
    volume = torch.from_numpy(image)[None, None]  # (B, C, H, W, D), slices along the last axis

    def runner(device: torch.device, channels_last: bool, amp: bool) -> Callable[[], object]:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        net = instantiate(net_cfg).to(device, memory_format=fmt).eval()
        inferer = instantiate({**slice_cfg, "channels_last": channels_last})
        x = volume.to(device)

        def infer():
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                return inferer(x, net)

        return infer

    def bundle_runner(device: torch.device, precision: str, **slices) -> tuple[Callable[[], object], str]:
        net, inferer, ran = _bundle_inference(precision, device, **slices)
        x = volume.to(device)

        def infer():
            with torch.no_grad():  # as SupervisedEvaluator runs it
                return inferer(x, net)

        return infer, ran

    # the bundle's `initialize` (set_determinism) sets the cuDNN flags the bundle infers with
    flags = {"deterministic": True, "benchmark": False}
    shape = "x".join(map(str, s.volume_shape))
    slicer = instantiate(slice_cfg)  # its defaults included
    out: dict = {"volume_shape": list(s.volume_shape), "slice_batch_size": slicer.batch_size,
                 "cpu_pixels_per_pass": slicer.cpu_pixels, "cudnn": flags}
    log(f"inference: {s.repeats} x one {shape} volume per variant on cpu, after 1 warm-up volume")
    cpu = torch.device("cpu")
    auto, auto_ran = bundle_runner(cpu, "auto")
    auto_batch, _ = bundle_runner(cpu, "auto", cpu_pixels=None)  # batch_size slices per pass, as on GPU
    times = alternate({"fp32_contiguous": runner(cpu, False, False), "fp32_channels_last": runner(cpu, True, False),
                       "bundle_auto": auto, "bundle_auto_batch_size": auto_batch}, replace(s, device="cpu"), 1, 1)
    out["cpu"] = {name: {"seconds": median(t)} for name, t in times.items()}
    out["cpu"]["bundle_auto"]["precision"] = auto_ran  # what --precision auto chose on this CPU
    out["cpu"]["speedup_channels_last"] = out["cpu"]["fp32_contiguous"]["seconds"] / \
        out["cpu"]["fp32_channels_last"]["seconds"]
    # the same run, alternating: the bundle's default path against fp32 channels_last
    out["cpu"]["speedup_auto_over_fp32_channels_last"] = out["cpu"]["fp32_channels_last"]["seconds"] / \
        out["cpu"]["bundle_auto"]["seconds"]
    # the same run: the CPU pixel budget per forward pass against batch_size slices per pass
    out["cpu"]["speedup_pixel_budget_over_batch_size"] = out["cpu"]["bundle_auto_batch_size"]["seconds"] / \
        out["cpu"]["bundle_auto"]["seconds"]
    if s.device == "cuda":
        log(f"inference: {s.repeats} x one {shape} volume per variant on cuda")
        gpu = s.torch_device
        with cudnn_flags(flags):
            times = alternate({"fp32_contiguous": runner(gpu, False, False),
                               "bf16_channels_last": runner(gpu, True, True)}, s, 1, max(1, s.warmup // 2))
        out["cuda"] = {name: {"seconds": median(t)} for name, t in times.items()}
        out["cuda"]["speedup_bf16_channels_last"] = out["cuda"]["fp32_contiguous"]["seconds"] / \
            out["cuda"]["bf16_channels_last"]["seconds"]
    return out
