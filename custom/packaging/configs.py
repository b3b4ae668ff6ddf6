"""An exported bundle's config files: the repository's configs rewritten to use the bundle's own code and to check
its weight files (see ``custom.packaging``)."""

from __future__ import annotations

import ast
import copy
import json
import re
from pathlib import Path

from custom.packaging.layout import ADAPTER, CODE_ID, MODEL, SOURCE, WEIGHTS_ID, ExportError

__all__ = ["dump_config", "export_config", "load_config"]

# The bundle's own `custom`, imported from the bundle root put first on sys.path. Components, not expressions: MONAI
# takes any expression holding the word "import" for an import statement, and fails to parse it when it holds "@".
CODE_ITEMS = {
    CODE_ID: {"_target_": "importlib.import_module", "name": "custom",
              "_requires_": "$sys.path.insert(0, os.path.abspath(@bundle_root))"},
    WEIGHTS_ID: {"_target_": "importlib.import_module", "name": "custom.weights", "_requires_": f"@{CODE_ID}"},
}
CODE_COMMENT = (
    "# the bundle's own code (and its weight checks), imported from the bundle root put first on sys.path: `custom`\n"
    "# needs no install and imports from any working directory\n"
)
_CUSTOM_REF = re.compile(r"(?<![\w.@'\"])custom\.")


def _is_import(value) -> bool:
    if not (isinstance(value, str) and value.startswith("$") and "import" in value):
        return False
    try:
        tree = ast.parse(value[1:])
    except SyntaxError:
        return False
    return bool(tree.body) and isinstance(tree.body[0], (ast.Import, ast.ImportFrom))


def _rewrite(node):
    """``custom.…`` in expressions -> ``@custom_code.…``; components of ``custom`` code require ``@custom_code``."""
    if isinstance(node, dict):
        out = {k: _rewrite(v) for k, v in node.items()}
        target = out.get("_target_")
        if isinstance(target, str) and target.startswith("custom."):
            req = out.get("_requires_")
            reqs = [] if req is None else (list(req) if isinstance(req, list) else [req])
            if f"@{CODE_ID}" not in reqs:
                reqs.insert(0, f"@{CODE_ID}")
            out["_requires_"] = reqs[0] if len(reqs) == 1 else reqs
        return out
    if isinstance(node, list):
        return [_rewrite(v) for v in node]
    if isinstance(node, str) and node.startswith("$"):
        if _is_import(node):
            if re.search(r"\bcustom\b", node) and node.strip() != "$import custom":
                raise ExportError(f"unsupported import of the custom code in a config: {node!r} (use `$import custom`)")
            return node
        return _CUSTOM_REF.sub(f"@{CODE_ID}.", node)
    return node


def _drop_model_loaders(node):
    """Without models/model.pt: remove the ``CheckpointLoader`` items that load ``@model_path``."""
    if isinstance(node, dict):
        return {k: _drop_model_loaders(v) for k, v in node.items()}
    if isinstance(node, list):
        return [
            _drop_model_loaders(v) for v in node
            if not (isinstance(v, dict) and str(v.get("_target_", "")).split(".")[-1] == "CheckpointLoader"
                    and v.get("load_path") == "@model_path")
        ]
    return node


def _mentions(node, text: str) -> bool:
    if isinstance(node, dict):
        return any(_mentions(v, text) for v in node.values())
    if isinstance(node, list):
        return any(_mentions(v, text) for v in node)
    return isinstance(node, str) and text in node


def _verified_expr(rel: str) -> str:
    return f"$@{WEIGHTS_ID}.verified(@bundle_root + '/{rel}', @bundle_root)"


def _insert_after(config: dict, after: str, items: dict) -> dict:
    out, placed = {}, False
    for k, v in config.items():
        if k in items:
            continue
        out[k] = v
        if k == after:
            out.update(items)
            placed = True
    if not placed:
        out = {**items, **out}
    return out


def _load_code(config: dict) -> dict:
    """A root config (one that defines ``bundle_root``) imports the bundle's own code through ``CODE_ITEMS``."""
    if _mentions(config["bundle_root"], f"@{CODE_ID}"):  # the code must not be needed to find the code
        config["bundle_root"] = "."
    imports = list(config.get("imports", []))
    for module in ("os", "sys"):
        if f"$import {module}" not in imports:
            imports.append(f"$import {module}")
    config["imports"] = imports
    return _insert_after(config, "bundle_root", copy.deepcopy(CODE_ITEMS))


def _adapter_network(name: str, config: dict) -> dict:
    """Adapter-only bundles: the network is the source weights + the adapter (no models/model.pt)."""
    config = _drop_model_loaders(config)
    if "model_path" in config:
        network = config.get("network", "")
        if not (isinstance(network, str) and "@network_def" in network):
            raise ExportError(f"configs/{name}: `network` does not build on @network_def; cannot load an adapter")
        del config["model_path"]
        config = _insert_after(config, "network_def", {
            "source_model_path": _verified_expr(SOURCE),
            "adapter_path": _verified_expr(ADAPTER),
            "network": f"$@{CODE_ID}.adapters.load_adapted(@network_def, @source_model_path, @adapter_path)"
                       ".to(@device, memory_format=torch.channels_last)",
        })
    if _mentions(config, "@model_path"):
        raise ExportError(f"configs/{name}: still refers to @model_path, which an adapter-only bundle lacks")
    return config


def _is_training(config: dict) -> bool:
    """A training config (train.yaml: it has a ``train`` section), which writes ``model_path`` instead of reading it."""
    return isinstance(config.get("train"), dict)


def _verify_first(config: dict) -> dict:
    """Inference checks every weight file first, right after turning on the one-line errors."""
    check = f"$@{WEIGHTS_ID}.verify_bundle(@bundle_root)"
    steps = [v for v in config["initialize"] if v != check]
    first = 1 if steps and isinstance(steps[0], str) and "bundle_cli.install()" in steps[0] else 0
    config["initialize"] = [*steps[:first], check, *steps[first:]]
    return config


def export_config(name: str, config: dict, adapter_only: bool, finetune: bool) -> dict:
    """The exported version of one config file (``name`` as in configs/); see ``custom.packaging``."""
    config = _rewrite(copy.deepcopy(config))
    is_root = "bundle_root" in config  # a file that stands alone (the others are merged over one of these)
    for key in ("imports", "+imports"):
        if isinstance(config.get(key), list):
            config[key] = [v for v in config[key] if not (isinstance(v, str) and v.strip() == "$import custom")]
    if is_root:
        config = _load_code(config)
    if finetune and "source_weights" in config:
        config["source_weights"] = _verified_expr(SOURCE)
    if _is_training(config):  # its model_path is where the trained weights go: nothing to check or replace
        return config
    if "model_path" in config:
        config["model_path"] = _verified_expr(MODEL)
    if adapter_only:
        config = _adapter_network(name, config)
    if is_root and name.rsplit(".", 1)[0] == "inference" and isinstance(config.get("initialize"), list):
        config = _verify_first(config)
    return config


def _header(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines) + ("\n" if lines else "")


def dump_config(name: str, original: str, config: dict, adapter_only: bool) -> str:
    """The text of an exported config: the original's header comment, a note on the weight checks, the config."""
    if name.endswith(".json"):
        return json.dumps(config, indent=4) + "\n"
    import yaml

    body = yaml.safe_dump(config, sort_keys=False, width=1 << 16, allow_unicode=True, default_flow_style=False)
    body = re.sub(rf"^{CODE_ID}:", CODE_COMMENT + f"{CODE_ID}:", body, count=1, flags=re.M)
    note = "# Exported bundle: weight files are checked against configs/metadata.json (weights_sha256) before use.\n"
    if adapter_only and "adapter_path:" in body and "load_adapted" in body:
        note += "# The network is the source U-Net (models/source_model.pt) + the adapter (models/adapter.pt).\n"
    return _header(original) + note + "\n" + body


def load_config(path: Path) -> dict:
    text = path.read_text()
    if path.suffix == ".json":
        return json.loads(text)
    import yaml

    data = yaml.safe_load(text)
    return data if isinstance(data, dict) else {}
