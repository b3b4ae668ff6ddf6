"""Adaptation without labels: re-estimate every BatchNorm layer's statistics on the target scanner's scans (AdaBN).

Li et al. (2016), "Revisiting batch normalization for practical domain adaptation": the learned weights stay as they
are; only the running mean and variance of each BatchNorm layer are recomputed on unlabeled target data, so the
normalisation matches the new scanner's feature statistics. Here every slice of every scan goes through the network
in train mode (no gradient, no optimizer), ``batch_size`` slices per forward pass, with each BatchNorm layer
averaging the batch statistics cumulatively (``momentum=None`` after ``reset_running_stats``). The scans are
preprocessed exactly as for inference.

The adapted statistics are saved as an adapter of ``custom.adapters``' format (BatchNorm buffers only, a few KB, with
the sha256 of the weights they were estimated for), so ``custom.adapters.load_adapted`` (and the bundles'
``--bn_adapter``) puts them back on those weights and refuses any others.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
from monai.data import Dataset
from torch import nn

from custom.adapters import FORMAT, AdapterError, apply_adapter
from custom.checkpoints import atomic_save, sha256
from custom.transforms import InputError

__all__ = [
    "ADAPTER_NAME", "STRATEGY", "BatchNormAdaptation", "adapt_batchnorm", "adapt_on_folder", "batchnorm_layers",
    "save_bn_adapter", "unlabeled_dataset",
]

logger = logging.getLogger(__name__)
STRATEGY = "adabn"  # the adapter's strategy field, and the grid's name for this row
ADAPTER_NAME = "adabn_adapter.pt"  # the file an inference run with --adapt_bn_on writes into its output_dir
_BN = nn.modules.batchnorm._BatchNorm


def batchnorm_layers(network: nn.Module) -> dict[str, _BN]:
    """Every BatchNorm layer of ``network`` (with running statistics), by module name."""
    return {name: m for name, m in network.named_modules() if isinstance(m, _BN) and m.track_running_stats}


def _slices(volume: torch.Tensor, spatial_dim: int) -> torch.Tensor:
    """``(C, H, W, D)`` or ``(B, C, H, W, D)`` -> ``(N, C, h, w)``: the 2D slices along ``spatial_dim``."""
    if volume.ndim == 4:
        volume = volume[None]
    if volume.ndim != 5:
        raise ValueError(f"adapt_batchnorm expects (C, H, W, D) or (B, C, H, W, D) volumes, got {tuple(volume.shape)}")
    stacked = volume.movedim(2 + spatial_dim, 1)  # (B, S, C, h, w)
    return stacked.reshape(-1, *stacked.shape[2:])


def _chunks(n: int, size: int) -> Iterable[slice]:
    """Consecutive index ranges of ``size`` (the last one longer rather than a single slice, which train-mode
    BatchNorm cannot normalise at the coarsest level)."""
    start = 0
    while start < n:
        stop = start + size
        if n - stop == 1:
            stop = n
        yield slice(start, min(stop, n))
        start = stop


def adapt_batchnorm(network: nn.Module, volumes: Iterable, batch_size: int = 32,
                    device: str | torch.device | None = None, spatial_dim: int = 2) -> nn.Module:
    """Re-estimate every BatchNorm layer's running statistics on ``volumes``; no parameter changes.

    Args:
        network: a 2D network with BatchNorm layers (its parameters are left bit for bit as they are).
        volumes: preprocessed scans: tensors ``(C, H, W, D)`` / ``(B, C, H, W, D)``, or dicts holding one under
            ``"image"`` (what a MONAI ``Dataset`` or ``DataLoader`` gives).
        batch_size: slices per forward pass (each pass counts once in the cumulative average).
        device: where to run (default: where the network's parameters are); the network stays there.
        spatial_dim: the axis of the volume the 2D slices are taken along (2: the last, as the inferer).

    Returns:
        ``network``, in eval mode, with the adapted statistics; each layer's momentum is restored.

    Raises:
        ValueError: ``volumes`` yielded no slice, or ``network`` has no BatchNorm layer.
    """
    layers = batchnorm_layers(network)
    if not layers:
        raise ValueError(f"adapt_batchnorm: {type(network).__name__} has no BatchNorm layer with running statistics")
    device = torch.device(device) if device is not None else next(network.parameters()).device
    network.to(device)
    momenta = {name: m.momentum for name, m in layers.items()}
    for m in layers.values():
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every forward pass weighs the same
    n_scans = n_slices = 0
    network.train()
    try:
        with torch.no_grad():
            for item in volumes:
                image = item["image"] if isinstance(item, Mapping) else item
                slices = _slices(torch.as_tensor(image).as_subclass(torch.Tensor).float(), spatial_dim)
                for part in _chunks(slices.shape[0], int(batch_size)):
                    chunk = slices[part].to(device).contiguous(memory_format=torch.channels_last)
                    network(chunk)
                n_scans, n_slices = n_scans + 1, n_slices + slices.shape[0]
    finally:
        for name, m in layers.items():
            m.momentum = momenta[name]
        network.eval()
    if n_slices == 0:
        raise ValueError("adapt_batchnorm: no slices to estimate the BatchNorm statistics on")
    logger.info("AdaBN: re-estimated %d BatchNorm layers on %d scans (%d slices)", len(layers), n_scans, n_slices)
    return network


def unlabeled_dataset(folder: str | Path | Sequence[str | Path], preprocessing,
                      exclude: str | Path | None = None) -> Dataset:
    """The scans at ``folder`` (every volume below it, as ``custom.transforms.find_volumes``; or a list of volume
    files), preprocessed.

    Raises:
        custom.transforms.InputError: ``folder`` is missing or holds no volume, or a listed file is missing (one
            line naming it).
    """
    from custom.transforms import find_volumes

    if isinstance(folder, str | Path):
        return Dataset(find_volumes(folder, exclude=exclude), transform=preprocessing)
    missing = [str(f) for f in folder if not Path(f).exists()]
    if missing or not folder:
        raise InputError(f"{missing[0]}: no such scan" if missing else "an empty list of unlabeled scans")
    return Dataset([{"image": str(f)} for f in folder], transform=preprocessing)


def adapt_on_folder(network: nn.Module, folder: str | Path, preprocessing, batch_size: int = 32,
                    device: str | torch.device | None = None, exclude: str | Path | None = None) -> nn.Module:
    """``adapt_batchnorm`` on every scan at ``folder``, each preprocessed by ``preprocessing`` (image key ``image``)."""
    return adapt_batchnorm(network, unlabeled_dataset(folder, preprocessing, exclude), batch_size, device)


def save_bn_adapter(network: nn.Module, weights: str | Path, path: str | Path) -> Path:
    """Write the BatchNorm buffers of ``network`` as an adapter for the weights file ``weights`` (its sha256)."""
    net = getattr(network, "module", network)
    names = {f"{name}.{buf}" for name in batchnorm_layers(net) for buf in ("running_mean", "running_var",
                                                                         "num_batches_tracked")}
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items() if k in names}
    atomic_save({"format": FORMAT, "strategy": STRATEGY, "source_sha256": sha256(weights), "state": state}, path,
                compact=True)
    logger.info("saved AdaBN adapter %s: %d BatchNorm buffers for %s", path, len(state), weights)
    return Path(path)


class BatchNormAdaptation:
    """The inference bundle's AdaBN step: ``network`` (loaded from ``weights``) -> the same network, adapted or not.

    Used in a config as ``$@bn_adaptation(custom.checkpoints.load_into(@network_def, @model_path), @model_path)``.

    Args:
        adapt_on: a folder of unlabeled target scans (every volume below it) or a list of scan files: re-estimate
            the BatchNorm statistics on them and write them as ``<save_dir>/adabn_adapter.pt``. Empty: none.
        adapter: an AdaBN adapter file (made for the same weights) to load instead. Empty: none.
        save_dir: where the adapter goes (the run's staging folder, so it appears with the outputs); empty: not saved.
        preprocessing: the transform giving the network's input from ``{"image": path}`` (needed with ``adapt_on``).
        batch_size: slices per forward pass while adapting.
        device: where to adapt (default: where the network is).
        exclude: a folder below ``adapt_on`` never read as scans (the run's output_dir).
    """

    def __init__(self, adapt_on: str | Path | Sequence[str | Path] = "", adapter: str | Path = "",
                 save_dir: str | Path = "", preprocessing=None, batch_size: int = 32,
                 device: str | torch.device | None = None, exclude: str | Path | None = None):
        # a folder, or a list of scan files (the reproduction grid passes the target's test scans)
        self.adapt_on = [str(f) for f in adapt_on] if isinstance(adapt_on, list | tuple) else str(
            adapt_on or "").strip()
        self.adapter = str(adapter or "").strip()
        if self.adapt_on and self.adapter:
            raise AdapterError(f"{self.adapter}: give --adapt_bn_on (adapt now) or --bn_adapter (reuse an adaptation), "
                               "not both")
        if self.adapt_on and preprocessing is None:
            raise ValueError("BatchNormAdaptation: adapt_on needs the inference preprocessing")
        self.save_dir, self.preprocessing, self.batch_size = str(save_dir or ""), preprocessing, int(batch_size)
        self.device, self.exclude = device, exclude

    def __call__(self, network: nn.Module, weights: str | Path) -> nn.Module:
        """Adapt (or load the adapter into) ``network``, which holds ``weights``; returns it.

        Raises:
            AdapterError: an adapter made for other weights.
            custom.transforms.InputError: ``adapt_on`` is missing or holds no volume (one line naming it).
        """
        if self.adapter:
            network.load_state_dict(apply_adapter(weights, self.adapter), strict=True)
            logger.info("AdaBN: BatchNorm statistics from %s", self.adapter)
        elif self.adapt_on:
            try:
                dataset = unlabeled_dataset(self.adapt_on, self.preprocessing, self.exclude)
            except InputError as e:
                what = "folder of unlabeled scans" if isinstance(self.adapt_on, str) else "unlabeled scans"
                raise InputError(f"{e} (the --adapt_bn_on {what})") from None
            adapt_batchnorm(network, dataset, self.batch_size, self.device)
            if self.save_dir:
                save_bn_adapter(network, weights, Path(self.save_dir) / ADAPTER_NAME)
        return network
