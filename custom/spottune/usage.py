"""How often the learned policy runs each block's fine-tuned copy, and the figure of it per slice budget (as the
authors' policy visualisation)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from custom.spottune.network import SpotTUNet, argmax_choice

__all__ = ["PolicyRecorder", "PolicyUsage", "plot_policy", "policy_usage", "volume_slices"]


@dataclass(frozen=True)
class PolicyUsage:
    """Per block (in forward order), the share of slices whose policy picked the fine-tuned copy."""

    blocks: tuple[str, ...]
    tuned_share: tuple[float, ...]
    n_slices: int

    def as_dict(self) -> dict:
        return {"n_slices": self.n_slices, "tuned_share": dict(zip(self.blocks, self.tuned_share, strict=True))}

    @property
    def mean(self) -> float:
        """The share of all (slice, block) choices that ran a fine-tuned copy."""
        return sum(self.tuned_share) / max(len(self.tuned_share), 1)


def volume_slices(volume: torch.Tensor, batch_size: int = 32) -> Iterable[torch.Tensor]:
    """A preprocessed ``[C, H, W, D]`` volume as batches of ``[B, C, H, W]`` slices along its last axis."""
    slices = volume.as_tensor() if hasattr(volume, "as_tensor") else volume
    slices = slices.permute(3, 0, 1, 2)
    for start in range(0, slices.shape[0], batch_size):
        yield slices[start:start + batch_size]


@torch.no_grad()
def policy_usage(network: SpotTUNet, batches: Iterable[torch.Tensor],
                 device: str | torch.device = "cpu") -> PolicyUsage:
    """Run the network's policy (eval mode: argmax, deterministic) on ``[B, C, H, W]`` slice batches (e.g.
    ``volume_slices`` of each preprocessed test volume) and count its choices. The network's mode is restored."""
    was_training = network.training
    network.eval()
    counts, n = torch.zeros(len(network.blocks), dtype=torch.float64), 0
    try:
        for batch in batches:
            hard, _ = network.decide(batch.to(device=device, dtype=torch.float32))
            counts += hard.double().sum(0).cpu()
            n += hard.shape[0]
    finally:
        network.train(was_training)
    share = (counts / max(n, 1)).tolist()
    return PolicyUsage(tuple(network.blocks), tuple(share), n)


class PolicyRecorder:
    """Counts the learned policy's choices over every slice the network sees in eval mode while attached (e.g.
    through an evaluation run), without running anything twice; forced blocks (``set_policy``) are not applied.

    Use as a context manager or call ``close``; ``usage()`` gives the shares so far.
    """

    def __init__(self, network: SpotTUNet):
        net = getattr(network, "module", network)
        self.blocks = tuple(net.blocks)
        self.counts = torch.zeros(len(self.blocks), dtype=torch.float64)
        self.n_slices = 0
        self._handle = net.policy.register_forward_hook(self._record)

    def _record(self, module, args, logits: torch.Tensor) -> None:
        if not module.training:
            hard = argmax_choice(logits.detach().float())
            self.counts += hard.double().sum(0).cpu()
            self.n_slices += hard.shape[0]

    def usage(self) -> PolicyUsage:
        return PolicyUsage(self.blocks, tuple((self.counts / max(self.n_slices, 1)).tolist()), self.n_slices)

    def close(self) -> None:
        self._handle.remove()

    def __enter__(self) -> PolicyRecorder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def plot_policy(usage_by_budget: Mapping[object, PolicyUsage], path: str | Path, title: str = "") -> Path:
    """A heat map: one row per budget (the mapping's keys, e.g. slice budgets, in their order), one column per block,
    the share of slices that ran the block's fine-tuned copy. Written atomically as PNG; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from custom.checkpoints import atomic_write

    if not usage_by_budget:
        raise ValueError("plot_policy: no policy usage to plot")
    usages = list(usage_by_budget.values())
    blocks = usages[0].blocks
    if any(u.blocks != blocks for u in usages):
        raise ValueError("plot_policy: the usages name different blocks")
    grid = [list(u.tuned_share) for u in usages]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * len(blocks) + 2), 0.45 * len(grid) + 2.2))
    image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(blocks)), blocks, rotation=90, fontsize=7)
    ax.set_yticks(range(len(grid)), [str(k) for k in usage_by_budget], fontsize=8)
    ax.set_xlabel("block (forward order)")
    ax.set_ylabel("annotated slices")
    ax.set_title(title or "SpotTUnet: share of slices that run the fine-tuned copy")
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"), suffix=".png")
    finally:
        plt.close(fig)
    return Path(path)
