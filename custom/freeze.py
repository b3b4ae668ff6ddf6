"""Which parameters a fine-tuning strategy trains: the paper's rule, "trainable iff the name starts with a prefix".

A strategy is one of the paper's three (``first``, ``last``, ``full``), the name of a *block* (a top-level module
of the network with parameters: for ``custom.networks.UNet2D`` ``init_path``, ``shortcut0``, ``down1``, ...,
``out_path``), a comma-separated list of those (``"down1,down2"``; the bundle command line's ``--strategy
down1,down2`` arrives as a tuple, which works the same), or an explicit list of parameter-name prefixes.

The blocks of a network, in the order its forward pass first runs them (``blocks``), give the depth axis of the
layer-wise sweep: for ``UNet2D`` that is ``init_path, down1, down2, down3, up3, shortcut2, up2, shortcut1, up1,
shortcut0, out_path`` (a skip connection runs just before the decoder block it feeds).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "STRATEGIES", "StrategyError", "block_depths", "blocks", "freeze", "prefix_strategy", "strategy_name",
    "trainable_parameter_count", "trainable_prefixes",
]

logger = logging.getLogger(__name__)

# Prefixes of the paper's network (custom.networks.UNet2D); "full" trains everything.
STRATEGIES: dict[str, tuple[str, ...]] = {
    "first": ("init_path.0", "init_path.2"),
    "last": ("out_path",),
    "full": ("",),
}

Strategy = str | Sequence[str]


class StrategyError(ValueError):
    """A strategy that names no parameter of the network; the message lists the valid names."""


def _default_network(network: nn.Module | None) -> nn.Module:
    if network is not None:
        return network
    from custom.networks import UNet2D

    return UNet2D()


def _example_input(network: nn.Module) -> torch.Tensor:
    """A small input for a tracing forward pass: the first convolution's channels, 16 voxels a side."""
    conv = next((m for m in network.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    if conv is None:
        raise ValueError(f"blocks: {type(network).__name__} has no convolution to infer an input shape from")
    dims = conv.weight.ndim - 2
    return torch.zeros(1, conv.in_channels, *([16] * dims), device=conv.weight.device, dtype=conv.weight.dtype)


def _forward_order(network: nn.Module) -> list[str]:
    """Top-level module names in the order a forward pass first calls them (never-called ones last)."""
    order: list[str] = []
    hooks = [module.register_forward_pre_hook(lambda m, a, name=name: order.append(name) if name not in order else None)
             for name, module in network.named_children()]
    was_training = network.training
    try:
        network.eval()  # BatchNorm statistics stay put
        with torch.no_grad():
            network(_example_input(network))
    finally:
        network.train(was_training)
        for hook in hooks:
            hook.remove()
    return order + [name for name, _ in network.named_children() if name not in order]


def blocks(network: nn.Module | None = None) -> list[str]:
    """The network's blocks (top-level modules with parameters), in the order its forward pass first runs them.

    Args:
        network: any torch module whose first convolution tells the input channels; ``None``: the paper's
            ``custom.networks.UNet2D``.

    Returns:
        For ``UNet2D``: ``["init_path", "down1", "down2", "down3", "up3", "shortcut2", "up2", "shortcut1", "up1",
        "shortcut0", "out_path"]`` (together they hold every parameter, skip connections included).
    """
    network = _default_network(network)
    with_params = {name for name, m in network.named_children() if any(True for _ in m.parameters())}
    return [name for name in _forward_order(network) if name in with_params]


def block_depths(network: nn.Module | None = None) -> dict[str, int]:
    """Each block's depth index (0 = the first block the input meets), the x axis of the layer-wise sweep."""
    return {name: i for i, name in enumerate(blocks(network))}


def prefix_strategy(k: int, network: nn.Module | None = None) -> str:
    """The cumulative strategy "the first ``k`` blocks" (``k`` from 1 to ``len(blocks(network))``), e.g.
    ``prefix_strategy(2) == "init_path,down1"``."""
    names = blocks(network)
    if not 1 <= int(k) <= len(names):
        raise ValueError(f"prefix_strategy: k must be between 1 and {len(names)} (the blocks), got {k}")
    return ",".join(names[: int(k)])


def strategy_name(strategy: Strategy) -> str:
    """The canonical text of a strategy (``"down1,down2"`` for ``("down1", "down2")``), for records and tables."""
    if isinstance(strategy, str):
        return ",".join(t.strip() for t in strategy.split(",") if t.strip())
    return ",".join(str(t).strip() for t in strategy)


def _tokens(strategy: Strategy) -> list[str]:
    if isinstance(strategy, str):
        return [t.strip() for t in strategy.split(",") if t.strip()]
    return [str(t).strip() for t in strategy]


def _matches(name: str, prefix: str) -> bool:
    # "init_path.2" must not match "init_path.20": a prefix ends at a module boundary.
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def trainable_prefixes(strategy: Strategy, network: nn.Module | None = None) -> tuple[str, ...]:
    """Resolve a strategy to parameter-name prefixes, checked against ``network`` (default: ``UNet2D``).

    Each comma-separated item (or list element) is ``first``, ``last``, ``full``, a block name, or, in a list, any
    parameter-name prefix (a module path such as ``up1.3``).

    Raises:
        StrategyError: (a ValueError) an empty strategy, or an item that names no parameter of the network; the
            message lists the valid names.
    """
    tokens = _tokens(strategy)
    if not tokens:
        raise StrategyError("an explicit strategy needs at least one parameter-name prefix (or a block name)")
    network = _default_network(network)
    names = [name for name, _ in network.named_parameters()]
    prefixes: list[str] = []
    for token in tokens:
        for prefix in STRATEGIES.get(token, (token,)):
            if prefix not in prefixes:
                prefixes.append(prefix)
    unknown = [t for t in tokens if t not in STRATEGIES and not any(_matches(n, t) for n in names)]
    if unknown:
        raise StrategyError(
            f"unknown fine-tuning strategy {', '.join(map(repr, unknown))} (no parameter of {type(network).__name__}"
            f" has that name): choose {', '.join(STRATEGIES)}, one of its blocks {', '.join(blocks(network))}, "
            "or a comma-separated list of them"
        )
    return tuple(prefixes)


def trainable_parameter_count(network: nn.Module | None, strategy: Strategy) -> int:
    """How many parameters ``strategy`` trains in ``network`` (default ``UNet2D``), without changing it."""
    network = _default_network(network)
    prefixes = trainable_prefixes(strategy, network)
    return sum(p.numel() for n, p in network.named_parameters() if any(_matches(n, q) for q in prefixes))


class _FrozenBatchNormStats:
    """Forward pre-hook that keeps a frozen BatchNorm in eval mode, so its running statistics stay put."""

    def __call__(self, module: nn.Module, args):
        if module.training:
            module.eval()


def freeze(network: nn.Module, strategy: Strategy = "full", freeze_bn_stats: bool = False) -> nn.Module:
    """Make only the strategy's parameters trainable and return ``network`` (for a config's ``_requires_``).

    Args:
        network: any torch module.
        strategy: ``"first"``, ``"last"``, ``"full"``, a block name (``"down2"``), a comma-separated list of them
            (``"down1,down2"``), or a list of block names / parameter-name prefixes (module paths).
        freeze_bn_stats: by default, as in the paper, BatchNorm layers whose parameters are frozen still update
            their running statistics in train mode. ``True`` keeps those layers in eval mode instead.

    Raises:
        ValueError: an unknown strategy, or a name that matches no parameter of ``network`` (listing valid ones).
    """
    prefixes = trainable_prefixes(strategy, network)
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
                strategy_name(strategy), trainable, total, 100.0 * trainable / max(total, 1))
    return network
