"""Slice-wise inference of a 2D network on 3D volumes, many slices per forward pass."""

from __future__ import annotations

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer

__all__ = ["SliceBatchInferer"]


class SliceBatchInferer(Inferer):
    """Apply a 2D network to every slice of ``(B, C, H, W, D)`` volumes along ``spatial_dim``, ``batch_size`` slices
    per forward pass, on the whole slice (its sides must suit the network: the preprocessing pads them to a
    multiple of 8).

    ``monai.inferers.SliceInferer`` is a ``SlidingWindowInferer`` with one-slice-thick windows: it cuts every slice
    into ``roi_size`` windows (overlapping by ``overlap``, padded where needed), ``sw_batch_size`` windows per
    forward, and blends their outputs. Here each whole slice is one input, stacked into the batch axis as it is (no
    windows, padding or blending), in channels-last memory layout (faster on CPU and GPU).
    """

    def __init__(self, spatial_dim: int = 2, batch_size: int = 32, channels_last: bool = True):
        super().__init__()
        if spatial_dim not in (0, 1, 2):
            raise ValueError(f"spatial_dim must be 0, 1 or 2, got {spatial_dim}")
        self.spatial_dim, self.batch_size, self.channels_last = spatial_dim, int(batch_size), channels_last

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        if inputs.ndim != 5:
            raise ValueError(f"SliceBatchInferer expects (B, C, H, W, D) volumes, got shape {tuple(inputs.shape)}")
        axis = 2 + self.spatial_dim
        volumes = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        stacked = volumes.movedim(axis, 1)  # (B, S, C, h, w)
        b, s = stacked.shape[:2]
        slices = stacked.reshape(b * s, *stacked.shape[2:])
        outputs = []
        for start in range(0, slices.shape[0], self.batch_size):
            chunk = slices[start : start + self.batch_size]
            if self.channels_last:
                chunk = chunk.contiguous(memory_format=torch.channels_last)
            outputs.append(network(chunk, *args, **kwargs).contiguous())
        out = torch.cat(outputs).reshape(b, s, -1, *slices.shape[2:]).movedim(1, axis)
        if isinstance(inputs, MetaTensor):
            out = MetaTensor(out, meta=inputs.meta, applied_operations=inputs.applied_operations)
        return out
