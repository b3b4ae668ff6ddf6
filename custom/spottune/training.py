"""What SpotTUnet training adds to the bundles' fine-tuning: the ``k_reg`` loss term, two optimizer groups, the
start from the source weights."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from custom.checkpoints import WeightsError, load_state_dict, sha256
from custom.spottune.network import SpotTUNet, expand_source_state

__all__ = ["SpotTuneLoss", "load_source", "param_groups", "prepare"]

logger = logging.getLogger(__name__)


class SpotTuneLoss(nn.Module):
    """``criterion(pred, label) + k_reg * mean fine-tuned usage``, the authors' "l1" policy regulariser.

    The usage is the share of (slice, block) choices that ran a fine-tuned copy in the network's last training
    forward pass (straight-through: its gradient trains the policy to use fewer fine-tuned blocks).

    Args:
        network: the ``SpotTUNet`` whose forward pass produced ``pred`` (not its DDP wrapper).
        k_reg: the regulariser's weight (the authors: 0.005 - 0.012 up to 540 slices, 0 at 800).
        criterion: the segmentation loss (default ``BCEWithLogitsLoss``).
    """

    def __init__(self, network: SpotTUNet, k_reg: float = 0.005, criterion: nn.Module | None = None):
        super().__init__()
        self.network = [network]  # a list: not a submodule (its parameters belong to the network)
        self.k_reg = float(k_reg)
        self.criterion = criterion or nn.BCEWithLogitsLoss()

    def forward(self, pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        loss = self.criterion(pred, label)
        usage = self.network[0].last_usage
        if usage is None:
            raise RuntimeError("SpotTuneLoss: the network has not run a training forward pass")
        self.network[0].last_usage = None  # each forward pass pays once
        return loss + self.k_reg * usage.mean().to(loss.dtype)


def load_source(network: SpotTUNet, source_weights: str | Path, init_weights: str | Path | None = None) -> SpotTUNet:
    """Load ``init_weights`` into ``network``: a ``UNet2D`` file (the source weights: both copies from it, a fresh
    policy) or a ``SpotTUNet`` file (continue from it). Returns ``network``.

    Raises:
        WeightsError: one line naming the file, when it fits neither network.
    """
    path = Path(init_weights or source_weights)
    state = load_state_dict(path)
    own = network.state_dict()
    if any(k.startswith("policy.") for k in state):  # a whole SpotTUNet
        candidate = state
    else:
        candidate = {**expand_source_state(state), **{k: v for k, v in own.items() if k.startswith("policy.")}}
    try:
        network.load_state_dict(candidate, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).strip().splitlines()[:2])[:300]
        raise WeightsError(f"{path}: weights fit neither UNet2D nor SpotTUNet ({detail})") from None
    logger.info("weights: %s (sha256 %s)", path, sha256(path))
    return network


def prepare(network: SpotTUNet, freeze_bn_stats: bool = False) -> SpotTUNet:
    """Train only the fine-tuned copies and the policy; ``freeze_bn_stats`` also keeps the frozen copies'
    BatchNorm statistics at the source's (by default they adapt in training, as the authors' frozen blocks do)."""
    for name, param in network.named_parameters():
        param.requires_grad_(".tuned." in name or name.startswith("policy."))
    network.keep_frozen_statistics = bool(freeze_bn_stats)
    tuned = sum(p.numel() for n, p in network.named_parameters() if ".tuned." in n)
    policy = sum(p.numel() for p in network.policy.parameters())
    logger.info("SpotTUnet: %d blocks; %d fine-tunable U-Net parameters, %d policy parameters; frozen BatchNorm "
                "statistics %s", len(network.blocks), tuned, policy, "fixed" if freeze_bn_stats else "adapt")
    return network


def param_groups(network: SpotTUNet, lr: float, policy_lr: float, policy_weight_decay: float = 0.001) -> list[dict]:
    """SGD parameter groups: the fine-tuned copies at ``lr``, the policy at ``policy_lr`` with its weight decay
    (the authors: 1e-3 and 1e-2, weight decay 0 and 1e-3)."""
    tuned = [p for n, p in network.named_parameters() if ".tuned." in n and p.requires_grad]
    policy = [p for p in network.policy.parameters() if p.requires_grad]
    return [{"params": tuned, "lr": float(lr)},
            {"params": policy, "lr": float(policy_lr), "weight_decay": float(policy_weight_decay)}]
