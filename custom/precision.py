"""Numerical precision of the forward pass: fp32, or bf16 autocast where the device runs bf16 natively.

``--precision auto`` (the bundles' default) picks bf16 on CUDA devices with bf16 support and on CPUs with
AMX or AVX512-BF16 instructions (detected, never assumed), fp32 elsewhere. bf16 needs no loss scaling, so one
mechanism, ``AutocastInferer``, serves training, validation and inference on every device.
"""

from __future__ import annotations

import logging

import torch
from monai.inferers import Inferer

__all__ = ["PRECISIONS", "AutocastInferer", "cpu_has_native_bf16", "name", "resolve"]

PRECISIONS = ("auto", "fp32", "bf16")
logger = logging.getLogger(__name__)


def cpu_has_native_bf16() -> bool:
    """True on CPUs with AMX tiles or AVX512-BF16: bf16 matrix work there is faster than fp32."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def _auto(device: torch.device) -> tuple[torch.dtype, str]:
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "CUDA device with bf16"
        return torch.float32, "CUDA device without bf16"
    if device.type == "cpu":
        if cpu_has_native_bf16():
            return torch.bfloat16, "CPU with AMX or AVX512-BF16"
        return torch.float32, "CPU without native bf16"
    return torch.float32, f"{device.type} device"


def resolve(precision: str, device: torch.device | str) -> torch.dtype:
    """The compute dtype for ``precision`` (``auto``, ``fp32`` or ``bf16``) on ``device``; logs the choice."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        dtype, why = _auto(device)
        logger.info("precision: %s (auto: %s)", name(dtype), why)
    else:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        logger.info("precision: %s (requested)", precision)
    return dtype


def name(dtype: torch.dtype) -> str:
    """``"bf16"`` or ``"fp32"``: how the options spell a compute dtype."""
    return "bf16" if dtype == torch.bfloat16 else "fp32"


class AutocastInferer(Inferer):
    """Run ``inferer`` under ``torch.autocast`` with ``dtype`` (a no-op for fp32) and return fp32 outputs.

    Outputs are cast back to fp32 so that losses, sigmoid thresholds and metrics are computed in full precision.
    """

    def __init__(self, inferer: Inferer, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.inferer, self.dtype = inferer, dtype

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        if self.dtype == torch.float32:
            return self.inferer(inputs, network, *args, **kwargs)
        with torch.autocast(device_type=inputs.device.type, dtype=self.dtype):
            out = self.inferer(inputs, network, *args, **kwargs)
        return out.float()
