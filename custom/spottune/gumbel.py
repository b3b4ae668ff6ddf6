"""Straight-through Gumbel-softmax: a hard one-hot choice in the forward pass, soft gradients in the backward pass.

As in SpotTune (Guo et al., CVPR 2019) and SpotTUnet (Zakazov et al., MICCAI 2021): the sample is the one-hot argmax
of ``softmax((logits + g) / temperature)`` with Gumbel noise ``g``; its gradient is that of the softmax.
"""

from __future__ import annotations

import torch

__all__ = ["gumbel_noise", "gumbel_softmax_st"]

_EPS = 1e-20  # keeps log(0) away when the uniform draw is exactly 0


def gumbel_noise(shape: torch.Size | tuple[int, ...], device=None, dtype=torch.float32,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard Gumbel samples ``-log(-log(U))``, ``U ~ Uniform[0, 1)``, drawn from ``generator`` (default: torch's
    global generator, which ``monai.utils.set_determinism`` seeds)."""
    u = torch.rand(shape, device=device, dtype=dtype, generator=generator)
    return -torch.log(-torch.log(u + _EPS) + _EPS)


def gumbel_softmax_st(logits: torch.Tensor, temperature: float = 0.1, generator: torch.Generator | None = None,
                      use_noise: bool = True) -> torch.Tensor:
    """A straight-through Gumbel-softmax sample over the last axis of ``logits``.

    Args:
        logits: ``[..., n_choices]`` unnormalised log-probabilities.
        temperature: softmax temperature of the relaxed sample (SpotTUnet: 0.1).
        generator: where the noise comes from (reproducible samples under a seeded generator).
        use_noise: ``False`` gives the deterministic argmax of ``logits`` (with the same straight-through gradient).

    Returns:
        Exactly one-hot values ``[..., n_choices]`` (ties go to the first choice) whose gradient is the gradient of
        the relaxed softmax sample.
    """
    if temperature <= 0:
        raise ValueError(f"gumbel_softmax_st: temperature must be positive, got {temperature}")
    scores = logits.float()
    if use_noise:
        scores = scores + gumbel_noise(scores.shape, scores.device, scores.dtype, generator)
    soft = torch.softmax(scores / temperature, dim=-1)
    hard = torch.zeros_like(soft).scatter_(-1, soft.argmax(dim=-1, keepdim=True), 1.0)
    # value: hard (the soft terms cancel up to rounding; where one-hot values must be exact, use `hard` itself)
    return hard + (soft - soft.detach())
