"""Which parameters a fine-tuning strategy trains: the paper's rule, "trainable iff the name starts with a prefix"."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from torch import nn

__all__ = ["STRATEGIES", "freeze", "trainable_prefixes"]

logger = logging.getLogger(__name__)

# Prefixes of the paper's network (custom.networks.UNet2D); "full" trains everything.
STRATEGIES: dict[str, tuple[str, ...]] = {
    "first": ("init_path.0", "init_path.2"),
    "last": ("out_path",),
    "full": ("",),
}


def trainable_prefixes(strategy: str | Sequence[str]) -> tuple[str, ...]:
    """Resolve a strategy name or an explicit list of name prefixes."""
    if isinstance(strategy, str):
        if strategy not in STRATEGIES:
            choices = sorted(STRATEGIES)
            raise ValueError(f"unknown fine-tuning strategy {strategy!r}; choose {choices} or a list of prefixes")
        return STRATEGIES[strategy]
    prefixes = tuple(strategy)
    if not prefixes:
        raise ValueError("an explicit strategy needs at least one parameter-name prefix")
    return prefixes


def _matches(name: str, prefix: str) -> bool:
    # "init_path.2" must not match "init_path.20": a prefix ends at a module boundary.
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


class _FrozenBatchNormStats:
    """Forward pre-hook that keeps a frozen BatchNorm in eval mode, so its running statistics stay put."""

    def __call__(self, module: nn.Module, args):
        if module.training:
            module.eval()


def freeze(network: nn.Module, strategy: str | Sequence[str] = "full", freeze_bn_stats: bool = False) -> nn.Module:
    """Make only the strategy's parameters trainable and return ``network`` (for a config's ``_requires_``).

    Args:
        network: any torch module.
        strategy: ``"first"``, ``"last"``, ``"full"`` or a list of parameter-name prefixes (module paths).
        freeze_bn_stats: by default, as in the paper, BatchNorm layers whose parameters are frozen still update
            their running statistics in train mode. ``True`` keeps those layers in eval mode instead.

    Raises:
        ValueError: an unknown strategy, or a prefix that matches no parameter of ``network``.
    """
    prefixes = trainable_prefixes(strategy)
    names = [name for name, _ in network.named_parameters()]
    unmatched = [p for p in prefixes if not any(_matches(n, p) for n in names)]
    if unmatched:
        raise ValueError(
            f"freeze: prefix(es) {unmatched} match no parameter of {type(network).__name__} "
            f"(its top-level modules: {sorted({n.split('.')[0] for n in names})})"
        )
    for name, param in network.named_parameters():
        param.requires_grad_(any(_matches(name, p) for p in prefixes))

    if freeze_bn_stats:
        for module in network.modules():
            own = list(module.parameters(recurse=False))
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and own and not any(p.requires_grad for p in own):
                module.register_forward_pre_hook(_FrozenBatchNormStats())

    trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
    total = sum(p.numel() for p in network.parameters())
    logger.info("fine-tuning strategy %s: %d of %d parameters trainable (%.2f%%)",
                strategy, trainable, total, 100.0 * trainable / max(total, 1))
    return network
