"""Adapters: what fine-tuning changed, small enough to share, tied to the exact source weights it applies to.

An adapter holds the fine-tuned values of every state entry that differs from the source (the trainable parameters
and the BatchNorm statistics that moved), the strategy, and the sha256 of the source weights file. Source weights
+ adapter reproduce the fine-tuned model bit for bit; any other source weights are refused.

A network laid out otherwise than the source (SpotTUnet: two copies of every block and a policy) names its
``ADAPTER_LAYOUT``; the layout's module expands source weights to the network's keys (``expand_source_state``), and
entries under its ``OWN_PREFIX`` (the policy), which the source lacks, are always part of the adapter.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from ignite.engine import Engine, Events

from custom.checkpoints import atomic_save, load_state_dict, sha256
from custom.freeze import strategy_name

__all__ = [
    "AdapterError", "AdapterSaver", "apply_adapter", "layout_module", "load_adapted", "make_adapter", "save_adapter",
]

FORMAT = "brain-extraction-adapter/1"
LAYOUTS = {"spottune": "custom.spottune.network"}  # ADAPTER_LAYOUT -> module with expand_source_state, OWN_PREFIX
logger = logging.getLogger(__name__)


class AdapterError(ValueError):
    """An adapter that cannot be applied (wrong source weights, wrong network, not an adapter file)."""


def make_adapter(state: dict[str, torch.Tensor], source_state: dict[str, torch.Tensor],
                 trainable: set[str] | None = None) -> dict[str, torch.Tensor]:
    """The entries of ``state`` that differ from ``source_state`` (plus every ``trainable`` one), as CPU tensors."""
    trainable = trainable or set()
    # every source entry must be there; only trainable entries (a SpotTUnet policy) may be new
    missing, extra = sorted(set(source_state) - set(state)), sorted(set(state) - set(source_state) - trainable)
    if missing or extra:
        raise AdapterError(f"the fine-tuned and source networks differ: missing {missing[:3]}, extra {extra[:3]}")
    return {
        k: v.detach().cpu().clone()
        for k, v in state.items()
        if k in trainable or not torch.equal(v.detach().cpu(), source_state[k].cpu())
    }


def layout_module(name: str):
    """The module that maps source weights onto a network of layout ``name`` (``""``: the source's own layout)."""
    if name not in LAYOUTS:
        raise AdapterError(f"unknown adapter layout {name!r}; known: {sorted(LAYOUTS)}")
    return importlib.import_module(LAYOUTS[name])


def save_adapter(network: torch.nn.Module, source_weights: str | Path, path: str | Path,
                 strategy: str | Sequence[str] = "") -> Path:
    """Write the adapter of ``network`` against the source weights file ``source_weights``.

    It holds every trainable parameter of the strategy (changed or not) and every other state entry that differs
    from the source (the BatchNorm statistics that moved); ``strategy`` is recorded as text (``"down1,down2"``).
    A network with an ``ADAPTER_LAYOUT`` (SpotTUnet) is compared with the source weights mapped onto its layout.
    """
    net = getattr(network, "module", network)  # unwrap DistributedDataParallel
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    source, layout = load_state_dict(source_weights), getattr(net, "ADAPTER_LAYOUT", "")
    if layout:
        mapping = layout_module(layout)
        source = mapping.expand_source_state(source)
        # only what moved: a block copy the policy never ran in training kept the source's values
        trainable = {k for k in net.state_dict() if k.startswith(mapping.OWN_PREFIX)}
    entries = make_adapter(net.state_dict(), source, trainable)
    adapter = {"format": FORMAT, "strategy": strategy_name(strategy), "source_sha256": sha256(source_weights),
               "state": entries}
    if layout:
        adapter["layout"] = layout
    atomic_save(adapter, path, compact=True)
    size = sum(v.numel() for v in entries.values())
    logger.info("saved adapter %s: %d tensors, %d values (strategy %s)", path, len(entries), size, strategy)
    return Path(path)


def _read_adapter(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: adapter file not found")
    try:
        adapter = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise AdapterError(f"{path}: not a readable adapter file ({type(e).__name__})") from None
    if not isinstance(adapter, dict) or adapter.get("format") != FORMAT:
        raise AdapterError(f"{path}: not an adapter file (expected format {FORMAT!r})")
    return adapter


def apply_adapter(source_weights: str | Path, adapter_path: str | Path) -> dict[str, torch.Tensor]:
    """The fine-tuned state dict: the source weights with the adapter's entries put back.

    Raises:
        AdapterError: the source weights' sha256 is not the one the adapter was made from, or the adapter names
            entries the source does not have.
    """
    adapter = _read_adapter(adapter_path)
    digest = sha256(source_weights)
    if digest != adapter["source_sha256"]:
        raise AdapterError(
            f"{adapter_path}: made for source weights with sha256 {adapter['source_sha256'][:12]}…, "
            f"but {source_weights} has {digest[:12]}…"
        )
    state = load_state_dict(source_weights)
    own = ()
    if adapter.get("layout"):
        mapping = layout_module(adapter["layout"])
        state, own = mapping.expand_source_state(state), (mapping.OWN_PREFIX,)
    unknown = sorted(k for k in set(adapter["state"]) - set(state) if not k.startswith(own))
    if unknown:
        raise AdapterError(f"{adapter_path}: entries {unknown[:3]} are not in the source weights")
    state.update(adapter["state"])
    return state


def load_adapted(network: torch.nn.Module, source_weights: str | Path, adapter_path: str | Path) -> torch.nn.Module:
    """Load source weights + adapter into ``network`` (strictly) and return it, for a config's ``network`` id."""
    network.load_state_dict(apply_adapter(source_weights, adapter_path), strict=True)
    return network


class AdapterSaver:
    """Write the adapter when fine-tuning COMPLETES (never after a crash), next to the full fine-tuned model."""

    def __init__(self, network: torch.nn.Module, source_weights: str, path: str, strategy: str | Sequence[str] = ""):
        self.network, self.source_weights, self.path, self.strategy = network, source_weights, path, strategy

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank():
            return
        save_adapter(self.network, self.source_weights, self.path, self.strategy)
