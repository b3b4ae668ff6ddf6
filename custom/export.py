"""Sharing a bundle: one self-contained zip, and the check that its weights are the ones its metadata names.

``export_bundle(...)`` (CLI: ``scripts/export_bundle.py``) packages one bundle of this repository as a zip holding
one folder, the bundle's name::

    <name>/LICENSE
    <name>/configs/{inference,evaluate,train,multi_gpu_train}.yaml, logging.conf   real files (symlinks resolved)
    <name>/configs/metadata.json        + "weights_sha256": {"models/model.pt": "<sha256>", ...}
    <name>/custom/*.py                  the code the configs use (imported from the bundle, no install needed)
    <name>/docs/...
    <name>/models/model.pt              the network's weights; or, with ``adapter_only``, models/adapter.pt +
                                        models/source_model.pt (the source weights the adapter was made from)
    <name>/models/source_model.pt       fine-tuning bundles: the source U-Net (further fine-tuning starts from it)
    <name>/models/model.ts, model.onnx  with ``torchscript`` / ``onnx``
    <name>/large_files.yml              weight files over ``large_file_mb`` (left out of the zip, written beside it)

Custom code: the exported configs never ``$import custom`` (MONAI evaluates import statements before anything can
put the bundle on ``sys.path``, and a failed one only becomes a placeholder). Their ``custom_code`` component imports
``custom`` after putting the bundle root (``--bundle_root``) first on ``sys.path``; every ``custom.…`` expression
reads ``@custom_code.…`` and every ``_target_: custom.…`` component ``_requires_`` it, so the bundle's own copy of the
code runs from any working directory, in an environment holding only the PyPI packages of its metadata.

Hashes: the exported configs read each weight file through ``@custom_export.verified(path, bundle_root)`` and
inference starts with ``verify_bundle(bundle_root)``: a file whose sha256 differs from ``weights_sha256`` stops the
run with one line naming the file and both hashes. The repository's bundles record ``weights_sha256`` too
(``scripts/sync_bundles.py``); every load checks it (``custom.checkpoints.check_recorded_hash``) and a bundle's own
training re-records the files it writes.
"""

from __future__ import annotations

import ast
import copy
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import textwrap
import warnings
import zipfile
from pathlib import Path

from custom.checkpoints import sha256

__all__ = ["ExportError", "WeightsHashError", "export_bundle", "main", "verified", "verify_bundle"]

logger = logging.getLogger(__name__)

HASH_KEY = "weights_sha256"
SHIPPED_KEY = "shipped_weights_sha256"  # in a repository bundle's metadata: the weights its docs describe
META = "configs/metadata.json"
CODE_ID = "custom_code"
LARGE_FILE_MB = 25.0
LARGE_FILES = "large_files.yml"
MODEL, SOURCE, ADAPTER, TORCHSCRIPT, ONNX = (
    "models/model.pt", "models/source_model.pt", "models/adapter.pt", "models/model.ts", "models/model.onnx",
)
EXPORT_ID = "custom_export"
# The bundle's own `custom`, imported from the bundle root put first on sys.path. Components, not expressions: MONAI
# takes any expression holding the word "import" for an import statement, and fails to parse it when it holds "@".
CODE_ITEMS = {
    CODE_ID: {"_target_": "importlib.import_module", "name": "custom",
              "_requires_": "$sys.path.insert(0, os.path.abspath(@bundle_root))"},
    EXPORT_ID: {"_target_": "importlib.import_module", "name": "custom.export", "_requires_": f"@{CODE_ID}"},
}
CODE_COMMENT = (
    "# the bundle's own code (and its weight checks), imported from the bundle root put first on sys.path: `custom`\n"
    "# needs no install and imports from any working directory\n"
)
_CUSTOM_REF = re.compile(r"(?<![\w.@'\"])custom\.")
_CUSTOM_MODULE = re.compile(r"(?<![\w@'\"])custom\.(\w+)")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
ONNX_CONVERTER = {
    # the TorchScript-based exporter: only needs `onnx` (the dynamo one also needs `onnxscript`), and is faster
    "dynamo": False,
    "input_names": ["image"],
    "output_names": ["pred"],
    "dynamic_axes": {"image": {0: "batch", 2: "height", 3: "width"}, "pred": {0: "batch", 2: "height", 3: "width"}},
}


class ExportError(ValueError):
    """Bad input to the export: the message is one line, printed as ``export_bundle: error: <message>``."""


class WeightsHashError(ValueError):
    """A weight file of an exported bundle whose sha256 is not the one its metadata records."""


# ---- hash verification (runs inside exported bundles) ------------------------------------------------------------

def _recorded_hashes(bundle_root: str | Path) -> dict[str, str]:
    meta = Path(bundle_root) / META
    if not meta.is_file():
        raise FileNotFoundError(f"{meta}: not found; pass --bundle_root <the bundle's folder>")
    return dict(json.loads(meta.read_text()).get(HASH_KEY) or {})


def _fail(message: str) -> None:
    logger.error(message)  # the run's log shows it as one line, above the traceback
    raise WeightsHashError(message)


def _check(rel: str, path: Path, expected: str, bundle_root: Path) -> None:
    if not path.is_file():
        hint = ""
        if (bundle_root / LARGE_FILES).is_file():
            hint = f"; fetch it with: python -m monai.bundle download_large_files --bundle_path {bundle_root}"
        _fail(f"{rel}: weight file missing{hint}")
    actual = sha256(path)
    if actual != expected:
        _fail(f"{rel}: sha256 is {actual} but {META} ({HASH_KEY}) records {expected}: the file was changed or "
              "corrupted (if you replaced it on purpose, record its new sha256 there)")


def verified(path: str | Path, bundle_root: str | Path) -> str:
    """``path`` after checking its sha256 against the bundle's ``weights_sha256``; for a config's weight path.

    Bundles without recorded hashes and files outside ``bundle_root`` pass unchecked; a file inside the bundle that
    the metadata does not list is refused.

    Raises:
        WeightsHashError: the file is missing, unlisted, or its sha256 differs (the message names both hashes).
    """
    hashes = _recorded_hashes(bundle_root)
    if not hashes:
        return str(path)
    root = Path(bundle_root).resolve()
    # where the file is NAMED, not where a link points: models/source_model.pt replaced by a link to other weights
    # is still the bundle's file, and its content must have the recorded hash
    named = Path(os.path.realpath(Path(path).absolute().parent)) / Path(path).name
    try:
        rel = named.relative_to(root).as_posix()
    except ValueError:
        logger.info("%s: outside the bundle, not checked against %s", path, META)
        return str(path)
    if rel not in hashes:
        _fail(f"{rel}: no sha256 for it in {META} ({HASH_KEY}); refusing an unlisted weight file")
    _check(rel, root / rel, hashes[rel], root)
    return str(path)


def verify_bundle(bundle_root: str | Path) -> dict[str, str]:
    """Check every weight file listed in the bundle's ``weights_sha256``; returns that mapping."""
    hashes = _recorded_hashes(bundle_root)
    root = Path(bundle_root).resolve()
    for rel, expected in sorted(hashes.items()):
        _check(rel, root / rel, expected, root)
    if hashes:
        logger.info("%s: %d weight file(s) match %s", root.name, len(hashes), META)
    return hashes


# ---- configs -----------------------------------------------------------------------------------------------------

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
    return f"$@{EXPORT_ID}.verified(@bundle_root + '/{rel}', @bundle_root)"


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


def _export_config(name: str, config: dict, adapter_only: bool, finetune: bool) -> dict:
    """The exported version of one config file (``name`` as in configs/); see the module docstring."""
    config = _rewrite(copy.deepcopy(config))
    stem = name.rsplit(".", 1)[0]
    is_root = "bundle_root" in config  # a file that stands alone (the others are merged over one of these)
    for key in ("imports", "+imports"):
        if isinstance(config.get(key), list):
            config[key] = [v for v in config[key] if not (isinstance(v, str) and v.strip() == "$import custom")]
    if is_root:
        if _mentions(config["bundle_root"], f"@{CODE_ID}"):  # the code must not be needed to find the code
            config["bundle_root"] = "."
        imports = list(config.get("imports", []))
        for module in ("os", "sys"):
            if f"$import {module}" not in imports:
                imports.append(f"$import {module}")
        config["imports"] = imports
        config = _insert_after(config, "bundle_root", copy.deepcopy(CODE_ITEMS))
    if finetune and "source_weights" in config:
        config["source_weights"] = _verified_expr(SOURCE)
    if "model_path" in config:
        config["model_path"] = _verified_expr(MODEL)
    if adapter_only:
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
    if is_root and stem == "inference" and isinstance(config.get("initialize"), list):
        check = f"$@{EXPORT_ID}.verify_bundle(@bundle_root)"
        steps = [v for v in config["initialize"] if v != check]
        first = 1 if steps and isinstance(steps[0], str) and "bundle_cli.install()" in steps[0] else 0
        config["initialize"] = [*steps[:first], check, *steps[first:]]  # after the one-line errors are on
    return config


def _header(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines) + ("\n" if lines else "")


def _dump(name: str, original: str, config: dict, adapter_only: bool) -> str:
    if name.endswith(".json"):
        return json.dumps(config, indent=4) + "\n"
    import yaml

    body = yaml.safe_dump(config, sort_keys=False, width=1 << 16, allow_unicode=True, default_flow_style=False)
    body = re.sub(rf"^{CODE_ID}:", CODE_COMMENT + f"{CODE_ID}:", body, count=1, flags=re.M)
    note = "# Exported bundle: weight files are checked against configs/metadata.json (weights_sha256) before use.\n"
    if adapter_only and "adapter_path:" in body and "load_adapted" in body:
        note += "# The network is the source U-Net (models/source_model.pt) + the adapter (models/adapter.pt).\n"
    head = _header(original)
    return head + note + "\n" + body


def _load_config(path: Path) -> dict:
    text = path.read_text()
    if path.suffix == ".json":
        return json.loads(text)
    import yaml

    data = yaml.safe_load(text)
    return data if isinstance(data, dict) else {}


# ---- the custom code a bundle needs ---------------------------------------------------------------------------

def _imports_of(source: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("custom.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "custom":
                found |= {a.name for a in node.names}
            elif node.module.startswith("custom."):
                found.add(node.module.split(".")[1])
    return found


def _package_all(package: Path) -> set[str]:
    for node in ast.walk(ast.parse((package / "__init__.py").read_text())):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return set()


def code_modules(config_texts: list[str], package: Path | None = None) -> list[str]:
    """The modules of ``custom`` that configs naming ``custom.<module>`` need, with everything they import."""
    package = package or Path(__file__).resolve().parent
    available = {p.stem for p in package.glob("*.py")} - {"__init__"}
    wanted = {m for text in config_texts for m in _CUSTOM_MODULE.findall(text)}
    wanted |= {"export", "checkpoints", "adapters"} | _package_all(package)
    wanted = (wanted | _imports_of((package / "__init__.py").read_text())) & available
    todo, done = sorted(wanted), set()
    while todo:
        module = todo.pop()
        if module in done:
            continue
        done.add(module)
        todo.extend(m for m in _imports_of((package / f"{module}.py").read_text()) if m in available)
    return sorted(done)


# ---- the export ------------------------------------------------------------------------------------------------

def _read_meta(bundle: Path) -> dict:
    try:
        meta = json.loads((bundle / META).read_text())
    except (OSError, ValueError) as e:
        raise ExportError(f"{bundle / META}: not a readable JSON file ({type(e).__name__})") from None
    version = meta.get("version")
    if not isinstance(version, str) or version not in (meta.get("changelog") or {}):
        raise ExportError(f"{bundle / META}: version {version!r} has no changelog entry")
    return meta


def _parse(bundle: Path, config: str, key: str, **override):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / config))
    parser.update({"bundle_root": str(bundle), **override})
    return parser.get_parsed_content(key)


def _check_weights(path: Path, bundle: Path, what: str) -> dict:
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
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or extra or wrong:
        raise ExportError(f"{path}: {what} do not fit the bundle's network_def (missing {missing[:2]}, "
                          f"unexpected {extra[:2]}, other shapes {wrong[:2]})")
    return state


def _source_weights(bundle: Path) -> Path | None:
    """A fine-tuning bundle's source weights, as its train.yaml names them (``None`` for the source bundle)."""
    train = bundle / "configs" / "train.yaml"
    if not train.is_file() or "source_weights" not in _load_config(train):
        return None
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(train))
    parser.update({"bundle_root": str(bundle)})
    return Path(parser.get_parsed_content("source_weights"))


def _as_path(value, option: str) -> Path | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, os.PathLike)) or not str(value):
        raise ExportError(f"--{option} needs a path, got {value!r}")
    return Path(value)


def _flag(value, option: str) -> bool:
    from custom.options import flag

    try:
        return flag(value)
    except ValueError:
        raise ExportError(f"--{option} expects true or false, got {value!r}") from None


def _export_networks(stage: Path, weights_file: Path, torchscript: bool, onnx: bool) -> None:
    """models/model.ts and models/model.onnx of the staged bundle, made by MONAI's own exporters."""
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


def _zip(stage: Path, name: str, target: Path) -> None:
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for path in sorted(p for p in stage.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(f"{name}/{path.relative_to(stage).as_posix()}", date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(path, "rb") as src, zf.open(info, "w") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)


def _check_large(sizes: dict[str, int], large_file_mb: float, url_base: str | None) -> list[str]:
    """The weight files over the size limit; refused without ``url_base``."""
    large = sorted(rel for rel, size in sizes.items() if size > large_file_mb * 1e6)
    if large and not url_base:
        raise ExportError(f"{', '.join(large)} over {large_file_mb:g} MB: give --url_base to list them in "
                          f"{LARGE_FILES} instead of the zip")
    return large


def _publish(zipped: Path, output: Path, large: Path | None, large_dir: Path) -> None:
    """Copy to temporary names beside the outputs, then rename: the large files first, the zip last."""
    output.parent.mkdir(parents=True, exist_ok=True)
    from custom.checkpoints import atomic_write, current_umask

    umask = current_umask()
    tmp_large = None
    try:
        if large is not None:
            tmp_large = Path(tempfile.mkdtemp(prefix=f".{large_dir.name}.", dir=output.parent))
            shutil.copytree(large, tmp_large, dirs_exist_ok=True)
            os.chmod(tmp_large, 0o777 & ~umask)
        if large_dir.exists():  # an earlier export's large files (--overwrite)
            shutil.rmtree(large_dir)
        if tmp_large is not None:
            os.replace(tmp_large, large_dir)
        # the zip last, readable as the umask allows (it is meant to be shared), checked to read back
        atomic_write(output, lambda tmp: shutil.copyfile(zipped, tmp),
                     verify=lambda tmp: zipfile.ZipFile(tmp).testzip() is None)
    finally:
        if tmp_large is not None and tmp_large.exists():
            shutil.rmtree(tmp_large, ignore_errors=True)


def export_bundle(
    bundle: str | Path,
    output: str | Path | None = None,
    adapter_only: bool = False,
    weights: str | Path | None = None,
    adapter: str | Path | None = None,
    source_weights: str | Path | None = None,
    torchscript: bool = False,
    onnx: bool = False,
    url_base: str | None = None,
    large_file_mb: float = LARGE_FILE_MB,
    overwrite: bool = False,
    version: str | None = None,
) -> Path:
    """Package ``bundle`` as the zip ``output`` (default ``dist/<name>-<version>.zip``); returns its path.

    Args:
        bundle: the bundle folder (e.g. ``bundles/brain_extraction_first_layers``).
        adapter_only: ship ``models/adapter.pt`` + ``models/source_model.pt`` (fine-tuning bundles) instead of the
            whole fine-tuned model; the inference config builds the network from both.
        weights: the model weights (default ``<bundle>/models/model.pt``); with ``adapter_only``, optional: the
            fine-tuned model that source + adapter must reproduce bit for bit.
        adapter: the adapter (default ``<bundle>/models/adapter.pt``); only with ``adapter_only``.
        source_weights: a fine-tuning bundle's source weights (default: as its train.yaml names them).
        torchscript, onnx: also ship ``models/model.ts`` / ``models/model.onnx``.
        url_base: where the large files will be downloadable: ``<url_base>/<path in the bundle>``.
        large_file_mb: weight files over this many MB (10^6 bytes) go to ``large_files.yml`` and beside the zip
            (``<output without .zip>_large_files/<path in the bundle>``), not into it.
        overwrite: replace an existing output.
        version: the version of weights other than the shipped ones (default ``<version>+<sha256[:8]>``); such an
            export gets a changelog entry and a ``provenance`` block (from ``models/model.provenance.json``).

    Raises:
        ExportError: bad input; nothing has been written.
    """
    bundle = _as_path(bundle, "bundle")
    if bundle is None:
        raise ExportError("--bundle is required")
    adapter_only, torchscript, onnx, overwrite = (_flag(v, o) for v, o in (
        (adapter_only, "adapter_only"), (torchscript, "torchscript"), (onnx, "onnx"), (overwrite, "overwrite")))
    weights, adapter = _as_path(weights, "weights"), _as_path(adapter, "adapter")
    source_weights = _as_path(source_weights, "source_weights")
    if isinstance(large_file_mb, bool) or not isinstance(large_file_mb, (int, float)) or large_file_mb <= 0:
        raise ExportError(f"--large_file_mb must be a positive number, got {large_file_mb!r}")
    if url_base is not None and (not isinstance(url_base, str) or "://" not in url_base):
        raise ExportError(f"--url_base must be a URL such as https://host/path, got {url_base!r}")
    if not bundle.is_dir():
        raise ExportError(f"{bundle}: no such bundle folder")
    for required in (META, "configs/inference.yaml", "LICENSE"):
        if not (bundle / required).is_file():
            raise ExportError(f"{bundle}: not a bundle of this repository ({required} missing)")
    meta = _read_meta(bundle)
    if version is not None and (not isinstance(version, str) or not version.strip() or "/" in version):
        raise ExportError(f"--version must be a version string such as 0.2.0+site1, got {version!r}")
    name = bundle.resolve().name
    output_default = output is None
    output = _as_path(output, "output") or Path("dist") / f"{name}-{meta['version']}.zip"
    if output.suffix != ".zip":
        raise ExportError(f"{output}: the output must be a .zip file")
    large_dir = output.with_name(output.name[: -len(".zip")] + "_large_files")
    for existing in (output, large_dir):
        if existing.exists() and not overwrite:
            raise ExportError(f"{existing}: already exists (pass --overwrite true to replace it)")
    if adapter is not None and not adapter_only:
        raise ExportError("--adapter needs --adapter_only true")
    if onnx and not _module_available("onnx"):
        raise ExportError("--onnx true needs the onnx package (pip install onnx onnxruntime)")

    # ---- which weights: checked before anything is written ----
    default_source = _source_weights(bundle)
    finetune = default_source is not None
    if source_weights is not None and not finetune:
        raise ExportError(f"--source_weights: {name} is not a fine-tuning bundle (it has no source weights)")
    source = source_weights or default_source
    files: dict[str, Path] = {}  # path in the bundle -> file to copy
    if finetune:
        _check_weights(source, bundle, "source weights")
        files[SOURCE] = source
    tuned = None
    if adapter_only:
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

            expected = _check_weights(weights, bundle, "weights")
            if set(expected) != set(tuned) or not all(torch.equal(expected[k], tuned[k]) for k in expected):
                raise ExportError(f"{adapter}: source + adapter do not reproduce {weights} bit for bit")
        files[ADAPTER] = adapter
    else:
        weights = weights or bundle / MODEL
        _check_weights(weights, bundle, "weights")
        files[MODEL] = weights

    _check_large({rel: src.stat().st_size for rel, src in files.items()}, large_file_mb, url_base)
    meta = _user_trained(meta, bundle, files[ADAPTER if adapter_only else MODEL], version)
    if output_default:
        output = Path("dist") / f"{name}-{meta['version']}.zip"
        large_dir = output.with_name(output.name[: -len(".zip")] + "_large_files")
        for existing in (output, large_dir):
            if existing.exists() and not overwrite:
                raise ExportError(f"{existing}: already exists (pass --overwrite true to replace it)")

    # ---- stage, zip, rename ----
    work = Path(tempfile.mkdtemp(prefix=f".export-{name}-"))
    try:
        stage = work / name
        (stage / "configs").mkdir(parents=True)
        shutil.copyfile(bundle / "LICENSE", stage / "LICENSE")
        if (bundle / "docs").is_dir():
            shutil.copytree(bundle / "docs", stage / "docs", symlinks=False)
            readme = stage / "docs" / "README.md"
            if "provenance" in meta and readme.is_file():
                readme.write_text(f"> **Version {meta['version']}: weights trained by their user** (see `provenance` "
                                  "in `configs/metadata.json`). The recipe and numbers below describe the shipped "
                                  f"version {meta['provenance']['based_on']}, not these weights.\n\n"
                                  + readme.read_text())
        texts = []
        for path in sorted((bundle / "configs").iterdir()):
            if not path.is_file() or path.name == "metadata.json":
                continue
            original = path.read_text()
            texts.append(original)
            if path.suffix in (".yaml", ".yml", ".json"):
                config = _load_config(path)
                exported = _export_config(path.name, config, adapter_only, finetune)
                text = original if exported == config else _dump(path.name, original, exported, adapter_only)
            else:
                text = original
            (stage / "configs" / path.name).write_text(text)
        package = Path(__file__).resolve().parent
        (stage / "custom").mkdir()
        for module in ["__init__", *code_modules(texts, package)]:
            shutil.copyfile(package / f"{module}.py", stage / "custom" / f"{module}.py")
        for rel, src in files.items():
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, stage / rel)

        meta = dict(meta)
        if adapter_only:
            from custom.adapters import _read_adapter

            meta["adapter"] = {"path": ADAPTER, "source_weights": SOURCE,
                               "strategy": str(_read_adapter(adapter).get("strategy", ""))}

        def write_meta() -> None:
            hashes = {rel: sha256(stage / rel) for rel in sorted(files)}
            (stage / META).write_text(json.dumps({**meta, HASH_KEY: hashes}, indent=4) + "\n")

        write_meta()
        if torchscript or onnx:
            model_file = stage / MODEL
            if adapter_only:
                from custom.checkpoints import atomic_save

                model_file = atomic_save(tuned, work / "adapted_model.pt")
            _export_networks(stage, model_file, torchscript, onnx)
            for rel, wanted in ((TORCHSCRIPT, torchscript), (ONNX, onnx)):
                if wanted:
                    files[rel] = stage / rel
            write_meta()

        large = _check_large({rel: (stage / rel).stat().st_size for rel in files}, large_file_mb, url_base)
        moved = work / "large"
        if large:
            import yaml

            hashes = json.loads((stage / META).read_text())[HASH_KEY]
            entries = [{"path": rel, "url": f"{url_base.rstrip('/')}/{rel}", "hash_val": hashes[rel],
                        "hash_type": "sha256"} for rel in large]
            (stage / LARGE_FILES).write_text(
                "# weight files too large for the zip: `python -m monai.bundle download_large_files --bundle_path "
                "<this folder>` fetches them\n" + yaml.safe_dump({"large_files": entries}, sort_keys=False))
            for rel in large:
                (moved / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(stage / rel), moved / rel)

        zipped = work / "bundle.zip"
        _zip(stage, name, zipped)
        _publish(zipped, output, moved if large else None, large_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return output


def _user_trained(meta: dict, bundle: Path, weights: Path, version: str | None) -> dict:
    """Metadata for weights that are not the shipped ones: a new version, a changelog entry and their provenance.

    The shipped weights are those whose sha256 ``shipped_weights_sha256`` records; anything else was trained (or
    chosen) by the user, and the export must not claim the shipped recipe.
    """
    digest = sha256(weights)
    shipped = meta.get(SHIPPED_KEY, {})
    if digest in shipped.values() and version is None:
        return meta
    from custom.handlers import provenance_path

    record = {"based_on": meta["version"], "weights": weights.name, "weights_sha256": digest}
    model = bundle / MODEL
    trained = provenance_path(model)
    if trained.is_file() and model.is_file():
        run = json.loads(trained.read_text())
        if run.get("model_sha256") == sha256(model):  # describes the model these weights come from
            record["training"] = run
    new_version = version or f"{meta['version']}+{digest[:8]}"
    what = record.get("training", {})
    detail = ", ".join(f"{k} {what[k]}" for k in ("strategy", "epochs_run") if k in what)
    if "datalist" in what:
        detail += f"{', ' if detail else ''}datalist sha256 {what['datalist']['sha256'][:12]}"
    entry = f"weights trained by the user from {meta['version']}" + (f" ({detail})" if detail else "")
    out = {**meta, "version": new_version, "changelog": {new_version: entry, **meta.get("changelog", {})},
           "provenance": record}
    out.pop(SHIPPED_KEY, None)
    return out


def _module_available(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


# ---- command line ------------------------------------------------------------------------------------------------

def _cli(
    *unexpected,
    bundle=None,
    output=None,
    adapter_only=False,
    weights=None,
    adapter=None,
    source_weights=None,
    torchscript=False,
    onnx=False,
    url_base=None,
    large_file_mb=LARGE_FILE_MB,
    overwrite=False,
    version=None,
    **unknown,
) -> None:
    if unexpected:
        raise ExportError(f"unexpected argument {unexpected[0]!r} (options are --name value)")
    if unknown:
        raise ExportError(f"unknown option --{sorted(unknown)[0]}")
    out = export_bundle(bundle, output, adapter_only=adapter_only, weights=weights, adapter=adapter,
                        source_weights=source_weights, torchscript=torchscript, onnx=onnx, url_base=url_base,
                        large_file_mb=large_file_mb, overwrite=overwrite, version=version)
    print(f"export_bundle: wrote {out}", file=sys.stderr)


_cli.__doc__ = export_bundle.__doc__


USAGE = """usage: export_bundle --bundle <folder> [--output <zip>] [--adapter_only true] [--weights <model.pt>]
                     [--adapter <adapter.pt>] [--source_weights <model.pt>] [--torchscript true] [--onnx true]
                     [--url_base <url>] [--large_file_mb 25] [--overwrite true] [--version <version>]
"""


def main(argv: list[str] | None = None) -> None:
    """``export_bundle --bundle <folder> [--output <zip>] [...]``; bad input: one line on stderr, exit 2."""
    import fire

    args = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in args):  # every --option reaches _cli (so unknown ones are caught)
        print(USAGE + "\n" + textwrap.dedent("    " + (export_bundle.__doc__ or "")))
        return
    try:
        fire.Fire(_cli, command=args, name="export_bundle")
    except ExportError as e:
        print(f"export_bundle: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()

