"""``export_bundle``: check the request, choose the weights, stage the bundle, zip it and put it in place."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from custom.packaging.archive import check_large, move_large, publish, zip_bundle
from custom.packaging.code import ALWAYS, copy_code
from custom.packaging.configs import dump_config, export_config, load_config
from custom.packaging.layout import ADAPTER, LARGE_FILE_MB, META, MODEL, SOURCE, ExportError
from custom.packaging.metadata import read_meta, user_trained, write_meta
from custom.packaging.models import choose_weights, export_networks

__all__ = ["export_bundle"]


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
    _check_limits(large_file_mb, url_base)
    meta = _bundle_meta(bundle, version)
    name = bundle.resolve().name
    output_default = output is None
    output = _as_path(output, "output") or Path("dist") / f"{name}-{meta['version']}.zip"
    large_dir = _output_paths(output, overwrite)
    _check_choices(adapter, adapter_only, onnx)

    files, tuned = choose_weights(bundle, adapter_only, weights, adapter, source_weights)  # before anything is written
    check_large({rel: src.stat().st_size for rel, src in files.items()}, large_file_mb, url_base)
    meta = user_trained(meta, bundle, files[ADAPTER if adapter_only else MODEL], version)
    if output_default:  # named after the version of these weights
        output = Path("dist") / f"{name}-{meta['version']}.zip"
        large_dir = _output_paths(output, overwrite)

    work = Path(tempfile.mkdtemp(prefix=f".export-{name}-"))
    try:
        stage = work / name
        _stage(bundle, stage, meta, files, adapter_only)
        if torchscript or onnx:
            model_file = stage / MODEL
            if adapter_only:
                from custom.checkpoints import atomic_save

                model_file = atomic_save(tuned, work / "adapted_model.pt")
            files.update({rel: stage / rel for rel in export_networks(stage, model_file, torchscript, onnx)})
            write_meta(stage, _shipped_meta(meta, files, adapter_only), list(files))
        large = check_large({rel: (stage / rel).stat().st_size for rel in files}, large_file_mb, url_base)
        if large:
            move_large(stage, large, url_base, work / "large")
        zip_bundle(stage, name, work / "bundle.zip")
        publish(work / "bundle.zip", output, work / "large" if large else None, large_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return output


# ---- checking the request (before anything is written) -----------------------------------------------------------

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


def _check_limits(large_file_mb, url_base) -> None:
    if isinstance(large_file_mb, bool) or not isinstance(large_file_mb, (int, float)) or large_file_mb <= 0:
        raise ExportError(f"--large_file_mb must be a positive number, got {large_file_mb!r}")
    if url_base is not None and (not isinstance(url_base, str) or "://" not in url_base):
        raise ExportError(f"--url_base must be a URL such as https://host/path, got {url_base!r}")


def _bundle_meta(bundle: Path, version) -> dict:
    """The metadata of ``bundle``, refused unless it is a bundle of this repository; checks ``--version`` too."""
    if not bundle.is_dir():
        raise ExportError(f"{bundle}: no such bundle folder")
    for required in (META, "configs/inference.yaml", "LICENSE"):
        if not (bundle / required).is_file():
            raise ExportError(f"{bundle}: not a bundle of this repository ({required} missing)")
    meta = read_meta(bundle)
    if version is not None and (not isinstance(version, str) or not version.strip() or "/" in version):
        raise ExportError(f"--version must be a version string such as 0.2.0+site1, got {version!r}")
    return meta


def _output_paths(output: Path, overwrite: bool) -> Path:
    """The folder of large files beside the zip ``output``; both refused if they exist (unless ``overwrite``)."""
    if output.suffix != ".zip":
        raise ExportError(f"{output}: the output must be a .zip file")
    large_dir = output.with_name(output.name[: -len(".zip")] + "_large_files")
    for existing in (output, large_dir):
        if existing.exists() and not overwrite:
            raise ExportError(f"{existing}: already exists (pass --overwrite true to replace it)")
    return large_dir


def _check_choices(adapter: Path | None, adapter_only: bool, onnx: bool) -> None:
    if adapter is not None and not adapter_only:
        raise ExportError("--adapter needs --adapter_only true")
    if onnx and not _module_available("onnx"):
        raise ExportError("--onnx true needs the onnx package (pip install onnx onnxruntime)")


def _module_available(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


# ---- the staged bundle ---------------------------------------------------------------------------------------------

def _stage(bundle: Path, stage: Path, meta: dict, files: dict[str, Path], adapter_only: bool) -> None:
    """The exported bundle's folder: license and docs, configs, the code they use, weights, metadata."""
    (stage / "configs").mkdir(parents=True)
    _stage_docs(bundle, stage, meta)
    texts = _stage_configs(bundle, stage, adapter_only, finetune=SOURCE in files)
    copy_code(texts, stage / "custom", ALWAYS + (("adapters",) if adapter_only else ()))
    for rel, src in files.items():
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, stage / rel)
    write_meta(stage, _shipped_meta(meta, files, adapter_only), list(files))


def _stage_docs(bundle: Path, stage: Path, meta: dict) -> None:
    shutil.copyfile(bundle / "LICENSE", stage / "LICENSE")
    if not (bundle / "docs").is_dir():
        return
    shutil.copytree(bundle / "docs", stage / "docs", symlinks=False)
    readme = stage / "docs" / "README.md"
    if "provenance" in meta and readme.is_file():
        readme.write_text(f"> **Version {meta['version']}: weights trained by their user** (see `provenance` "
                          "in `configs/metadata.json`). The recipe and numbers below describe the shipped "
                          f"version {meta['provenance']['based_on']}, not these weights.\n\n" + readme.read_text())


def _stage_configs(bundle: Path, stage: Path, adapter_only: bool, finetune: bool) -> list[str]:
    """Every config file but the metadata, rewritten for the exported bundle; returns the originals' texts."""
    texts = []
    for path in sorted((bundle / "configs").iterdir()):
        if not path.is_file() or path.name == "metadata.json":
            continue
        original = path.read_text()
        texts.append(original)
        text = original
        if path.suffix in (".yaml", ".yml", ".json"):
            config = load_config(path)
            exported = export_config(path.name, config, adapter_only, finetune)
            if exported != config:
                text = dump_config(path.name, original, exported, adapter_only)
        (stage / "configs" / path.name).write_text(text)
    return texts


def _shipped_meta(meta: dict, files: dict[str, Path], adapter_only: bool) -> dict:
    if not adapter_only:
        return meta
    from custom.adapters import _read_adapter

    strategy = str(_read_adapter(files[ADAPTER]).get("strategy", ""))
    return {**meta, "adapter": {"path": ADAPTER, "source_weights": SOURCE, "strategy": strategy}}
