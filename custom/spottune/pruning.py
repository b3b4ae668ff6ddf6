"""Keep only the fine-tuned copies the learned policy uses, so that the shared adapter stays small.

In training the policy samples its choices (Gumbel-softmax), so nearly every block's fine-tuned copy runs now and
then and moves away from the source; at inference the argmax runs, and on a target scanner's slices it picks the
fine-tuned copy of only some blocks. ``DropUnusedCopies`` runs that argmax policy on every slice of the training
scans when training completes and resets the fine-tuned copy of each block it never picks to the frozen copy: the
block then computes the same whichever copy is picked, and the adapter (``custom.adapters``) stores nothing of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from ignite.engine import Engine, Events

from custom.spottune.network import SpotTUNet
from custom.spottune.usage import PolicyUsage, policy_usage, volume_slices

__all__ = ["DropUnusedCopies", "drop_unused_copies", "unused_blocks"]

logger = logging.getLogger(__name__)


def unused_blocks(usage: PolicyUsage) -> list[str]:
    """The blocks whose fine-tuned copy the policy picked for none of the slices."""
    return [b for b, share in zip(usage.blocks, usage.tuned_share, strict=True) if share == 0.0]


def drop_unused_copies(network: SpotTUNet, volumes: Sequence[torch.Tensor],
                       device: str | torch.device = "cpu") -> PolicyUsage:
    """Reset the fine-tuned copies the argmax policy picks on no slice of ``volumes`` (preprocessed ``[C, H, W, D]``
    tensors) to the frozen copies; returns the usage they were judged by."""
    net = getattr(network, "module", network)  # unwrap DistributedDataParallel
    usage = policy_usage(net, (b for v in volumes for b in volume_slices(v)), device)
    dropped = unused_blocks(usage)
    net.reset_tuned(dropped)
    logger.info("SpotTUnet: on the %d slices of the training scans the policy runs the fine-tuned copies of %d of "
                "%d blocks; the other %d are reset to the frozen copies (%s)", usage.n_slices,
                len(usage.blocks) - len(dropped), len(usage.blocks), len(dropped), ", ".join(dropped) or "none")
    return usage


class DropUnusedCopies:
    """When training COMPLETES (before the model and adapter are saved: attach it first), drop the fine-tuned copies
    the policy does not use on the training scans' slices (``drop_unused_copies``).

    Args:
        network: the trained ``SpotTUNet`` (or its DDP wrapper: every rank drops the same copies).
        data: the datalist entries whose images to run the policy on (the training and validation scans: every
            slice of them, annotated or not).
        preprocessing: the transform that turns an entry into the preprocessed ``image`` the network sees.
        device: where the policy runs.
    """

    def __init__(self, network: torch.nn.Module, data: Sequence[dict], preprocessing: Callable[[dict], dict],
                 device: str | torch.device = "cpu"):
        self.network, self.data, self.preprocessing, self.device = network, list(data), preprocessing, device

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine | None = None) -> PolicyUsage:
        volumes = (self.preprocessing(dict(entry))["image"] for entry in self.data)
        return drop_unused_copies(self.network, volumes, self.device)
