"""SpotTUnet (Zakazov et al., MICCAI 2021) on the paper's U-Net: every block twice, a policy picks one per slice.

Each top-level module of ``custom.networks.UNet2D`` exists twice, ``<module>.frozen`` (the source weights, never
trained) and ``<module>.tuned`` (initialised from the source, fine-tuned). The modules are cut into 33 blocks, named
after their parametrised layer as in the freezing prefixes (``init_path.0``, ``init_path.2``, ``down1.1``,
``down1.4``, ..., ``shortcut0``, ``out_path.1``); a BatchNorm before a convolution belongs to it, parameter-free
layers to the layer before. A policy network looks at the input slice and picks, per block, which copy runs:
straight-through Gumbel-softmax in training, argmax at inference (deterministic). State-dict keys are the source's
with ``.frozen`` / ``.tuned`` after the first component, plus ``policy.*``.
"""

import copy

import torch
from torch import nn

from custom.networks import PreActivation2d, ResBlock2d, UNet2D
from custom.spottune.gumbel import gumbel_softmax_st
from custom.spottune.policy import PolicyNet

__all__ = ["OWN_PREFIX", "POLICY_MODES", "SpotTUNet", "block_names", "expand_source_state", "split_state"]

POLICY_MODES = ("learned", "frozen", "tuned")
OWN_PREFIX = "policy."  # entries the source weights lack (custom.adapters: always in the adapter)
_ANCHORS = (nn.Conv2d, nn.ConvTranspose2d, ResBlock2d, PreActivation2d)


def _group(seq: nn.Sequential) -> list[int]:
    """Per child of ``seq``, the index of the child whose block it belongs to (its parametrised anchor layer)."""
    children = list(seq)
    anchors = [i for i, m in enumerate(children) if isinstance(m, _ANCHORS)]
    owner = []
    for i, m in enumerate(children):
        later = [a for a in anchors if a >= i]
        earlier = [a for a in anchors if a <= i]
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and later:  # pre-activation: BN feeds the next conv
            owner.append(later[0])
        else:
            owner.append(earlier[-1] if earlier else later[0])
    return owner


def _mix(tuned: torch.Tensor, frozen: torch.Tensor, use: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """Per sample, exactly one copy's values; the gradient of the straight-through sample ``soft`` reaches the
    policy through ``tuned - frozen`` (its factor is zero in value)."""
    out = torch.where(use.view(-1, 1, 1, 1), tuned, frozen)
    straight = (soft - soft.detach()).view(-1, 1, 1, 1)
    return out + straight.to(out.dtype) * (tuned - frozen)


class _SwitchedLayer(nn.Module):
    """One layer (a skip connection), twice: ``frozen`` and ``tuned``."""

    def __init__(self, module: nn.Module, block: int):
        super().__init__()
        self.block = block
        self.frozen = module.requires_grad_(False)
        self.tuned = copy.deepcopy(module).requires_grad_(True)

    def copies(self, block: int) -> list[tuple[nn.Module, nn.Module]]:
        """The ``(frozen, tuned)`` layer pairs of ``block`` here (none if it is not this layer's)."""
        return [(self.frozen, self.tuned)] if block == self.block else []

    def forward(self, x: torch.Tensor, hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        use = hard[:, self.block] > 0.5
        if not self.training and bool(use.all()):  # inference runs only the copies it uses
            return self.tuned(x)
        if not self.training and not bool(use.any()):
            return self.frozen(x)
        return _mix(self.tuned(x), self.frozen(x), use, soft[:, self.block])


class _SwitchedSequence(nn.Module):
    """A sequence of layers, twice; each layer mixes per sample by the policy of the block it belongs to."""

    def __init__(self, module: nn.Sequential, first_block: int):
        super().__init__()
        owner = _group(module)
        self.anchors: list[int] = sorted(set(owner))
        self.block_of: list[int] = [first_block + self.anchors.index(o) for o in owner]
        # layers without parameters or buffers are the same in both copies: run once
        self.shared: list[bool] = [not list(m.parameters()) and not list(m.buffers()) for m in module]
        self.frozen = module.requires_grad_(False)
        self.tuned = copy.deepcopy(module).requires_grad_(True)

    def copies(self, block: int) -> list[tuple[nn.Module, nn.Module]]:
        """The ``(frozen, tuned)`` layer pairs of ``block`` in this sequence (layers with parameters or buffers)."""
        return [(self.frozen[j], self.tuned[j]) for j, k in enumerate(self.block_of)
                if k == block and not self.shared[j]]

    def forward(self, x: torch.Tensor, hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        j = 0
        for fr, ft in zip(self.frozen, self.tuned):  # noqa: B905 - TorchScript takes no strict=
            if self.shared[j]:
                x = fr(x)
            else:
                k = self.block_of[j]
                use = hard[:, k] > 0.5
                if not self.training and bool(use.all()):
                    x = ft(x)
                elif not self.training and not bool(use.any()):
                    x = fr(x)
                else:
                    x = _mix(ft(x), fr(x), use, soft[:, k])
            j += 1
        return x


class SpotTUNet(nn.Module):
    """The U-Net of ``custom.networks.UNet2D`` with a frozen and a fine-tuned copy of every block and a policy.

    Args:
        in_channels, out_channels, n_filters: as ``UNet2D``.
        policy_width: stem channels of the policy network (the authors' 32).
        temperature: Gumbel-softmax temperature in training (the authors' 0.1).

    ``policy_mode`` (``"learned"``, ``"frozen"``, ``"tuned"``) or ``force_blocks`` (a 0/1 choice per block) override
    the policy, for tests and analysis. In training the last forward's straight-through choice of the fine-tuned
    copies, ``[B, n_blocks]``, is kept in ``last_usage`` for the ``k_reg`` regulariser.
    """

    last_usage: torch.Tensor | None
    ADAPTER_LAYOUT = "spottune"  # custom.adapters: adapters expand the source weights with expand_source_state

    def __init__(self, in_channels: int = 1, out_channels: int = 1, n_filters: int = 16, policy_width: int = 32,
                 temperature: float = 0.1):
        super().__init__()
        unet = UNet2D(in_channels, out_channels, n_filters)
        names = []
        for name, module in unet.named_children():
            if isinstance(module, nn.Sequential):
                switched = _SwitchedSequence(module, len(names))
                names += [f"{name}.{i}" for i in switched.anchors]
            else:
                switched = _SwitchedLayer(module, len(names))
                names.append(name)
            self.add_module(name, switched)
        self.blocks: list[str] = names
        self.policy = PolicyNet(len(names), in_channels, policy_width)
        self.temperature = float(temperature)
        # -1: the policy decides; 0 / 1: this block always runs its frozen / fine-tuned copy (not saved)
        self.register_buffer("forced", torch.full((len(names),), -1.0), persistent=False)
        self.last_usage = None
        self.keep_frozen_statistics = False

    # ---- policy ---------------------------------------------------------------------------------------------
    @torch.jit.unused
    def set_policy(self, mode: str = "learned", blocks: dict[str, int] | None = None) -> "SpotTUNet":
        """Override the policy: ``mode`` for every block, then ``blocks`` ({name: 0 frozen / 1 tuned}) one by one."""
        if mode not in POLICY_MODES:
            raise ValueError(f"policy mode must be one of {POLICY_MODES}, got {mode!r}")
        self.forced.fill_({"learned": -1.0, "frozen": 0.0, "tuned": 1.0}[mode])
        for name, value in (blocks or {}).items():
            if name not in self.blocks:
                raise ValueError(f"unknown block {name!r}; blocks: {', '.join(self.blocks)}")
            self.forced[self.blocks.index(name)] = float(value)
        return self

    def decide(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(hard, soft)``, ``[B, n_blocks]``: 1 where the fine-tuned copy runs (exactly 0/1), and the
        straight-through sample whose gradient trains the policy (zero in eval mode)."""
        logits = self.policy(x)
        if self.training:
            sample = self._sample(logits)
            hard = (sample[..., 1] > 0.5).to(sample.dtype)
            soft = sample[..., 1]
        else:
            hard = argmax_choice(logits)
            soft = torch.zeros_like(hard)
        forced = self.forced.view(1, -1).expand_as(hard) >= 0
        hard = torch.where(forced, self.forced.view(1, -1).expand_as(hard).to(hard.dtype), hard)
        soft = torch.where(forced, torch.zeros_like(soft), soft)
        return hard, soft

    # ---- the copies ---------------------------------------------------------------------------------------------
    @torch.jit.unused
    def reset_tuned(self, blocks: list[str]) -> "SpotTUNet":
        """Make the fine-tuned copy of each of ``blocks`` equal to its frozen copy (parameters and BatchNorm
        statistics): whichever copy the policy then picks, the block computes the same, and an adapter stores
        nothing of that copy's parameters."""
        for name in blocks:
            if name not in self.blocks:
                raise ValueError(f"unknown block {name!r}; blocks: {', '.join(self.blocks)}")
            k = self.blocks.index(name)
            for module in self.children():
                pairs = module.copies(k) if isinstance(module, (_SwitchedLayer, _SwitchedSequence)) else []
                for frozen, tuned in pairs:
                    with torch.no_grad():
                        for t, f in zip(tuned.state_dict().values(), frozen.state_dict().values(), strict=True):
                            t.copy_(f)
        return self

    @torch.jit.unused
    def _sample(self, logits: torch.Tensor) -> torch.Tensor:
        return gumbel_softmax_st(logits, self.temperature)

    # ---- network --------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 8 or x.shape[-2] % 8:
            raise ValueError(f"SpotTUNet needs spatial sides divisible by 8, got {x.shape[-2]}x{x.shape[-1]}")
        hard, soft = self.decide(x)
        if self.training:
            self._keep_usage(hard, soft)
        # the topology of UNet2D.forward, each module switched per sample
        x0 = self.init_path(x, hard, soft)
        x1 = self.down1(x0, hard, soft)
        x2 = self.down2(x1, hard, soft)
        x3 = self.down3(x2, hard, soft)
        u = self.up3(x3, hard, soft)
        u = self.up2(u + self.shortcut2(x2, hard, soft), hard, soft)
        u = self.up1(u + self.shortcut1(x1, hard, soft), hard, soft)
        return self.out_path(u + self.shortcut0(x0, hard, soft), hard, soft)

    @torch.jit.unused
    def _keep_usage(self, hard: torch.Tensor, soft: torch.Tensor) -> None:
        # value: the hard choices; gradient: the relaxed sample's (forced blocks: none)
        self.last_usage = hard + (soft - soft.detach())

    def train(self, mode: bool = True) -> "SpotTUNet":
        super().train(mode)
        if mode and self.keep_frozen_statistics:  # the frozen copies' BatchNorm statistics stay the source's
            for name, module in self.named_modules():
                if ".frozen" in name and isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self


def argmax_choice(logits: torch.Tensor) -> torch.Tensor:
    """The policy's deterministic choice from its ``[B, n_blocks, 2]`` logits: 1 where the fine-tuned copy runs;
    ties pick the frozen copy."""
    return (logits[..., 1] > logits[..., 0]).to(torch.float32)


def block_names(network: SpotTUNet | None = None) -> list[str]:
    """The switchable blocks, in forward order of the modules (default: of a ``SpotTUNet()``)."""
    return list((network or SpotTUNet()).blocks)


def expand_source_state(source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ``UNet2D`` state dict as both copies of a ``SpotTUNet`` (no policy entries)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        head, _, rest = key.partition(".")
        for copy_name in ("frozen", "tuned"):
            out[f"{head}.{copy_name}.{rest}" if rest else f"{head}.{copy_name}"] = value
    return out


def split_state(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """A ``SpotTUNet`` state dict as ``{"frozen": UNet2D state, "tuned": UNet2D state, "policy": PolicyNet state}``."""
    out: dict[str, dict[str, torch.Tensor]] = {"frozen": {}, "tuned": {}, "policy": {}}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "policy":
            out["policy"][".".join(parts[1:])] = value
        else:
            out[parts[1]][".".join([parts[0], *parts[2:]])] = value
    return out
