"""An exported bundle's ``configs/metadata.json``: the bundle's own, with the hashes of the weights it ships, and a
new version for weights that are not the shipped ones."""

from __future__ import annotations

import json
from pathlib import Path

from custom.checkpoints import sha256
from custom.packaging.layout import HASH_KEY, META, MODEL, SHIPPED_KEY, ExportError

__all__ = ["read_meta", "user_trained", "write_meta"]


def read_meta(bundle: Path) -> dict:
    try:
        meta = json.loads((bundle / META).read_text())
    except (OSError, ValueError) as e:
        raise ExportError(f"{bundle / META}: not a readable JSON file ({type(e).__name__})") from None
    version = meta.get("version")
    if not isinstance(version, str) or version not in (meta.get("changelog") or {}):
        raise ExportError(f"{bundle / META}: version {version!r} has no changelog entry")
    return meta


def user_trained(meta: dict, bundle: Path, weights: Path, version: str | None) -> dict:
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


def write_meta(stage: Path, meta: dict, files: list[str]) -> None:
    """The staged bundle's metadata, recording the sha256 of each of ``files`` (paths in the bundle)."""
    hashes = {rel: sha256(stage / rel) for rel in sorted(files)}
    (stage / META).write_text(json.dumps({**meta, HASH_KEY: hashes}, indent=4) + "\n")
