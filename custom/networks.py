"""The paper's 2D residual U-Net (Shirokikh et al., DART 2020), with the authors' module layout.

The modules sit at the same indices as in the authors' definition, including the parameter-free dropout
placeholders (``nn.Identity``) after each down-sampling and up-sampling, so the state-dict names are theirs and a
state dict saved by their code loads strictly here (``tests/test_networks.py``); the residual blocks of ``down*``
are ``down*.4-6``. Not everything carries over unchanged: the constructor's arguments are ``in_channels``,
``out_channels``, ``n_filters`` (theirs: ``n_chans_in``, ``n_chans_out``, ``n_filters_init``, default 8, not 16), and
their freezing strings ("first layers" ``init_path.0`` + ``init_path.2``, "last layers" ``out_path``) matched any
parameter name containing them, where ``custom.freeze`` matches module-path prefixes (the same parameters here).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PreActivation2d", "ResBlock2d", "UNet2D"]


class PreActivation2d(nn.Module):
    """BatchNorm -> ReLU -> Conv: the pre-activation unit of a residual block."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = False):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.activation = nn.ReLU(inplace=True)
        self.layer = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.activation(self.bn(x)))


class ResBlock2d(nn.Module):
    """Two pre-activation convolutions plus the identity; no conv biases (as the paper's dpipe default)."""

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__()
        self.conv_path = nn.Sequential(
            PreActivation2d(channels, channels, kernel_size),
            PreActivation2d(channels, channels, kernel_size),
        )
        self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_path(x) + self.shortcut(x)


def _res_blocks(channels: int, n: int = 3) -> list[nn.Module]:
    return [ResBlock2d(channels) for _ in range(n)]


def _down(in_channels: int, out_channels: int, last: bool = False) -> nn.Sequential:
    # nn.Identity: the authors' (disabled) dropout slots; they keep the residual blocks at indices 4-6.
    return nn.Sequential(
        nn.BatchNorm2d(in_channels),
        nn.Conv2d(in_channels, out_channels, kernel_size=2, stride=2, bias=False),
        nn.ReLU(inplace=True),
        nn.Identity(),
        *_res_blocks(out_channels),
        *([nn.Identity()] if last else []),
    )


def _up(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        *_res_blocks(in_channels),
        nn.BatchNorm2d(in_channels),
        nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2, bias=False),
        nn.ReLU(inplace=True),
        nn.Identity(),
    )


class UNet2D(nn.Module):
    """2D residual U-Net with additive 1x1-conv skips; 2,434,771 parameters at ``n_filters=16``.

    Args:
        in_channels: image channels (1 for a T1 scan).
        out_channels: logit channels (1: brain, trained with BCE-with-logits).
        n_filters: width of the first level; the levels are ``n, 2n, 4n, 8n``.

    Input sides must be multiples of 8 (three stride-2 downsamplings).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, n_filters: int = 16):
        super().__init__()
        n1, n2, n3, n4 = (n_filters * m for m in (1, 2, 4, 8))
        self.init_path = nn.Sequential(
            nn.Conv2d(in_channels, n1, kernel_size=3, padding=1, bias=False),
            nn.ReLU(inplace=True),
            *_res_blocks(n1),
        )
        self.shortcut0 = nn.Conv2d(n1, n1, kernel_size=1)
        self.down1 = _down(n1, n2)
        self.shortcut1 = nn.Conv2d(n2, n2, kernel_size=1)
        self.down2 = _down(n2, n3)
        self.shortcut2 = nn.Conv2d(n3, n3, kernel_size=1)
        self.down3 = _down(n3, n4, last=True)
        self.up3 = _up(n4, n3)
        self.up2 = _up(n3, n2)
        self.up1 = _up(n2, n1)
        self.out_path = nn.Sequential(
            ResBlock2d(n1, kernel_size=1),
            PreActivation2d(n1, out_channels, kernel_size=1, bias=True),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 8 or x.shape[-2] % 8:
            raise ValueError(f"UNet2D needs spatial sides divisible by 8, got {x.shape[-2]}x{x.shape[-1]}")
        x0 = self.init_path(x)
        x1 = self.down1(x0)
        x2 = self.down2(x1)
        x3 = self.down3(x2)
        u = self.up3(x3)
        u = self.up2(u + self.shortcut2(x2))
        u = self.up1(u + self.shortcut1(x1))
        return self.out_path(u + self.shortcut0(x0))

