"""The weight files an exported bundle ships (``models/``): chosen and checked before anything is written, and the
TorchScript / ONNX versions of the network."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from custom.packaging.configs import load_config
from custom.packaging.layout import ADAPTER, META, MODEL, ONNX, SOURCE, TORCHSCRIPT, ExportError

__all__ = ["ONNX_CONVERTER", "check_weights", "choose_weights", "export_networks", "source_weights"]

ONNX_CONVERTER = {
    # the TorchScript-based exporter: only needs `onnx` (the dynamo one also needs `onnxscript`), and is faster
    "dynamo": False,
    "input_names": ["image"],
    "output_names": ["pred"],
    "dynamic_axes": {"image": {0: "batch", 2: "height", 3: "width"}, "pred": {0: "batch", 2: "height", 3: "width"}},
}


def _parse(bundle: Path, config: str, key: str, **override):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / config))
    parser.update({"bundle_root": str(bundle), **override})
    return parser.get_parsed_content(key)


def check_weights(path: Path, bundle: Path, what: str) -> dict:
    """The state dict in ``path``, refused unless it fits the bundle's ``network_def`` exactly."""
    from custom.checkpoints import load_state_dict

    if not path.is_file():
        raise ExportError(f"{path}: {what} not found")
    try:
        state = load_state_dict(path)
    except (ValueError, FileNotFoundError) as e:
        raise ExportError(str(e)) from None
    net = _parse(bundle, "inference.yaml", "network_def")
    expected = net.state_dict()
    layout = getattr(net, "ADAPTER_LAYOUT", "")
    if what == "source weights" and layout:  # a network laid out otherwise (SpotTUnet): the source mapped onto it
        from custom.adapters import layout_module

        mapping = layout_module(layout)
        state = mapping.expand_source_state(state)
        expected = {k: v for k, v in expected.items() if not k.startswith(mapping.OWN_PREFIX)}
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or extra or wrong:
        raise ExportError(f"{path}: {what} do not fit the bundle's network_def (missing {missing[:2]}, "
                          f"unexpected {extra[:2]}, other shapes {wrong[:2]})")
    return state


def source_weights(bundle: Path) -> Path | None:
    """A fine-tuning bundle's source weights, as its train.yaml names them (``None`` for the source bundle)."""
    train = bundle / "configs" / "train.yaml"
    if not train.is_file() or "source_weights" not in load_config(train):
        return None
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(train))
    parser.update({"bundle_root": str(bundle)})
    return Path(parser.get_parsed_content("source_weights"))


def choose_weights(bundle: Path, adapter_only: bool, weights: Path | None, adapter: Path | None,
                   source: Path | None) -> tuple[dict[str, Path], dict | None]:
    """The weight files to ship (path in the bundle -> file), each checked against the bundle's network, and with
    ``adapter_only`` the fine-tuned state dict that source + adapter give (else ``None``)."""
    name = bundle.resolve().name
    default_source = source_weights(bundle)
    finetune = default_source is not None
    if source is not None and not finetune:
        raise ExportError(f"--source_weights: {name} is not a fine-tuning bundle (it has no source weights)")
    source = source or default_source
    files: dict[str, Path] = {}
    if finetune:
        check_weights(source, bundle, "source weights")
        files[SOURCE] = source
    if not adapter_only:
        weights = weights or bundle / MODEL
        check_weights(weights, bundle, "weights")
        files[MODEL] = weights
        return files, None
    if not finetune:
        raise ExportError(f"--adapter_only: {name} has no adapter (it is not a fine-tuning bundle)")
    from custom.adapters import AdapterError, apply_adapter

    adapter = adapter or bundle / ADAPTER
    if not adapter.is_file():
        raise ExportError(f"{adapter}: adapter not found")
    try:
        tuned = apply_adapter(source, adapter)
    except (AdapterError, FileNotFoundError) as e:
        raise ExportError(str(e).replace("\n", " ")) from None
    if weights is not None:
        import torch

        expected = check_weights(weights, bundle, "weights")
        if set(expected) != set(tuned) or not all(torch.equal(expected[k], tuned[k]) for k in expected):
            raise ExportError(f"{adapter}: source + adapter do not reproduce {weights} bit for bit")
    files[ADAPTER] = adapter
    return files, tuned


def export_networks(stage: Path, weights_file: Path, torchscript: bool, onnx: bool) -> list[str]:
    """models/model.ts and models/model.onnx of the staged bundle, made by MONAI's own exporters; returns them."""
    import torch
    from monai.bundle import ckpt_export, onnx_export

    common = dict(net_id="network_def", ckpt_file=str(weights_file), meta_file=str(stage / META),
                  config_file=str(stage / "configs" / "inference.yaml"), bundle_root=str(stage))
    saved_path = list(sys.path)  # the staged configs put the stage on sys.path (this process's `custom` is used)
    try:
        with warnings.catch_warnings():
            # the traced ONNX graph drops UNet2D's check that slice sides are multiples of 8 (preprocessing pads them)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            if torchscript:
                ckpt_export(filepath=str(stage / TORCHSCRIPT), **common)
            if onnx:
                onnx_export(filepath=str(stage / ONNX), use_trace=True, input_shape=[1, 1, 64, 64],
                            converter_kwargs=dict(ONNX_CONVERTER), **common)
    finally:
        sys.path[:] = saved_path
    return [rel for rel, wanted in ((TORCHSCRIPT, torchscript), (ONNX, onnx)) if wanted]
