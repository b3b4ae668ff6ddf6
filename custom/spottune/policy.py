"""The policy network: a small ResNet that looks at a slice and scores, per U-Net block, frozen vs fine-tuned.

After the agent network of SpotTUnet (Zakazov et al., MICCAI 2021, after SpotTune): a 3x3 stem, three basic
residual blocks of stride 2 (parameter-free shortcuts: average pooling plus zero channels), global average pooling
and a linear layer giving two logits per block (index 0: the frozen copy, 1: the fine-tuned copy).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PolicyNet"]


class _BasicBlock(nn.Module):
    """conv3x3 (stride 2) -> BN -> ReLU -> conv3x3 -> BN, plus an average-pooled, zero-padded identity."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.pad = out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = F.avg_pool2d(x, 2, ceil_mode=True)
        shortcut = F.pad(shortcut, [0, 0, 0, 0, 0, self.pad])
        return F.relu(out + shortcut)


class PolicyNet(nn.Module):
    """Two logits per block from one 2D slice.

    Args:
        n_blocks: how many switchable blocks the policy decides on.
        in_channels: image channels.
        width: stem channels; the stages have ``2, 4, 8`` times as many (the authors' 32: 64, 128, 256).
    """

    def __init__(self, n_blocks: int, in_channels: int = 1, width: int = 32):
        super().__init__()
        self.n_blocks = n_blocks
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
        self.stages = nn.Sequential(*(_BasicBlock(width * 2**i, width * 2 ** (i + 1)) for i in range(3)))
        self.head_norm = nn.BatchNorm2d(width * 8)
        self.head = nn.Linear(width * 8, 2 * n_blocks)
        for m in self.modules():  # the authors' initialisation (He, fan-out)
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` slices -> ``[B, n_blocks, 2]`` logits (frozen, fine-tuned)."""
        h = F.relu(self.head_norm(self.stages(self.stem(x))))
        h = torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)
        return self.head(h).view(x.shape[0], self.n_blocks, 2)
