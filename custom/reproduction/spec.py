"""What one cell runs: its bundle, config files, overrides, datalist and fingerprint (``CellSpec``).

A spec is decided by the plan before anything is written and handed to ``custom.reproduction.cell.run_cell``, in
this process, a spawned worker or a Ray task (it pickles). The fingerprint covers the cell, its bundle and
configs, its settings and its scans: a finished cell counts only for the spec that made it. It holds no absolute
path: files in the data or output folder count by their path there, other files (shipped weights) by their
sha256, so a moved checkout, data or output folder keeps every finished cell.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from custom.cc359 import Scan
from custom.reproduction.grid import LABEL_FREE, N_FOLDS, REFERENCE_ROLES, Cell, freeze_strategy, is_finetuning
from custom.reproduction.profiles import Profile, profile_overrides
from custom.reproduction.selection import UsageError
from custom.splits import budget, one2all, one2one, oracle

__all__ = ["BUNDLES", "SOURCE_BUNDLE", "STRATEGY_BUNDLES", "CellSpec", "cell_datalist", "cell_spec"]

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
SOURCE_BUNDLE = "brain_extraction_source"
STRATEGY_BUNDLES = {
    "first": "brain_extraction_first_layers",
    "last": "brain_extraction_last_layers",
    "full": "brain_extraction_full",
    "spottune": "brain_extraction_spottune",
}
SWEEP_BUNDLE = "brain_extraction_full"  # a block or upto_<block> strategy: the full bundle with --strategy
HISTOGRAM_REFERENCE = "histogram_reference.json"  # a histmatch cell's source-domain reference, in its folder
PREPROCESSING_CACHE = "cache/preprocessed"  # in the output folder: evaluated scans, preprocessed once for all cells


@dataclass(frozen=True)
class CellSpec:
    """One cell's bundle run, fixed by the plan.

    ``settings`` and ``paths`` are bundle overrides (config ids -> values; for a cell the profile replaces by
    shipped weights, ``settings`` holds ``shipped_weights`` and ``sha256`` instead); ``datalist`` is the
    cell's ``datalist.json``; ``threads`` the torch threads its executor gives it (None: torch's default).
    """

    cell: Cell
    bundle: str
    config_files: tuple[str, ...]
    meta_file: str
    workflow_type: str
    cell_dir: str
    settings: dict
    paths: dict
    datalist: dict
    fingerprint: str
    profile: str
    seed: int
    split_seed: int
    threads: int | None = None
    reference_scans: tuple[str, ...] = ()  # histmatch: the source scans its histogram reference is built from

    @property
    def shipped(self) -> bool:
        """The profile's shipped weights stand in for this (source-training) cell."""
        return "shipped_weights" in self.settings

    def cell_record(self) -> dict:
        """The cell as ``plan.json`` and ``done.json`` record it."""
        return asdict(self.cell) | {"id": self.cell.id, "deps": list(self.cell.deps)}

    def plan_record(self) -> dict:
        """``plan.json``: every field but the datalist (``datalist.json`` beside it) and empty ``reference_scans``."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "cell":
                value = self.cell_record()
            elif f.name in ("config_files", "reference_scans"):
                value = list(value)
            if f.name != "datalist" and not (f.name == "reference_scans" and not value):
                out[f.name] = value
        return out


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_sha256(path: str) -> str:
    from custom.checkpoints import sha256

    if not Path(path).is_file():
        raise UsageError(f"{path}: shipped source weights not found (use --train_source true to train the source)")
    return sha256(path)


def _portable(value, roots: dict[str, Path]):
    """``value`` as the fingerprint sees it: an absolute path inside one of ``roots`` as ``<root>/<relative
    path>``, any other existing file as ``sha256:<its content's hash>``; lists and dicts item by item."""
    if isinstance(value, dict):
        return {k: _portable(v, roots) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_portable(v, roots) for v in value]
    if not (isinstance(value, str) and Path(value).is_absolute()):
        return value
    path = Path(value)
    for name, root in sorted(roots.items(), key=lambda item: -len(item[1].parts)):  # the innermost root first
        if path.is_relative_to(root):
            return f"<{name}>/{path.relative_to(root).as_posix()}"
    return f"sha256:{_file_sha256(value)}" if path.is_file() else value


def _ids(datalist: dict) -> dict:
    return {part: [e["id"] for e in datalist.get(part, [])] for part in ("training", "validation", "test")}


def cell_datalist(cell: Cell, scans: Sequence[Scan], profile: Profile) -> dict:
    """The datalist of ``cell`` (the splits of docs/PROTOCOL.md over ``scans``); ValueError when impossible."""
    seed = profile.split_seed
    if cell.role == "baseline":
        n_domain = sum(s.domain == cell.source for s in scans)
        n_val = min(profile.n_val, max(n_domain - 1, 0))  # a tiny dataset keeps one training scan
        dl = one2all(scans, cell.source, n_val=n_val, seed=seed)
        if cell.kind == "eval":
            test = dl["validation"] if cell.target == cell.source else [
                e for e in dl["test"] if e["domain"] == cell.target]
            dl = {**dl, "name": f"{dl['name']}_on_{cell.target}", "target": cell.target, "test": test}
        return dl
    if cell.role in LABEL_FREE:  # the source model on every scan of the target, as the baseline
        return cell_datalist(Cell("eval", "baseline", cell.source, cell.target), scans, profile)
    if cell.role == "oracle":
        return oracle(scans, cell.source, cell.fold, n_folds=N_FOLDS, seed=seed)  # 2 validation scans, as dpipe
    n_target_scans, k = budget(cell.n_slices)
    dl = one2one(scans, cell.source, cell.target, n_target_scans, k, seed=seed)
    return {**dl, "n_slices": cell.n_slices}


def _bundle(cell: Cell) -> str:
    if cell.role in REFERENCE_ROLES or cell.role in LABEL_FREE:
        return SOURCE_BUNDLE
    return STRATEGY_BUNDLES.get(cell.role, SWEEP_BUNDLE)


def _meta_file(bundle_dir: Path) -> Path:
    own = bundle_dir / "configs" / "metadata.json"
    return own if own.is_file() else bundle_dir.parent / SOURCE_BUNDLE / "configs" / "metadata.json"


def cell_spec(cell: Cell, datalist: dict, profile: Profile, data_dir: Path, out: Path, bundles: Path,
              cache_preprocessing: bool = True) -> CellSpec:
    """The spec of ``cell`` with ``datalist``, run under ``profile`` on ``data_dir`` into ``out``; an evaluation
    reuses the preprocessed scans of ``out/cache/preprocessed`` when ``cache_preprocessing`` (a path, not a setting:
    the fingerprint ignores it, the results are the same)."""
    cell_dir = out / "cells" / cell.id
    bundle_dir = bundles / _bundle(cell)
    paths = {"bundle_root": str(bundle_dir), "dataset_dir": str(data_dir),
             "datalist_file": str(cell_dir / "datalist.json"), "output_dir": str(cell_dir)}
    shipped = profile.source_models.get(cell.source) if (cell.kind, cell.role) == ("train", "baseline") else None
    reference_scans: tuple[str, ...] = ()
    if cell.kind == "train":
        config_files = [bundle_dir / "configs" / "train.yaml"]
        paths["model_path"] = str(cell_dir / "model.pt")
        if is_finetuning(cell.role):
            _, k = budget(cell.n_slices)
            source_model = str(out / "cells" / cell.deps[0] / "model.pt")
            paths.update(adapter_path=str(cell_dir / "adapter.pt"), source_weights=source_model,
                         init_weights=source_model)
            kind = "spottune" if cell.role == "spottune" else "finetune"
            settings = {**profile_overrides(profile, kind), "n_slices": cell.n_slices, "slice_interval": k}
            if cell.role not in STRATEGY_BUNDLES:
                settings["strategy"] = freeze_strategy(cell.role)
        else:
            settings = profile_overrides(profile, "baseline")
    else:
        config_files = [bundle_dir / "configs" / "inference.yaml", bundle_dir / "configs" / "evaluate.yaml"]
        paths.update(model_path=str(out / "cells" / cell.train_id / "model.pt"),
                     metrics_csv=str(cell_dir / "metrics.csv"))
        if cache_preprocessing:
            paths["cache_dir"] = str(out / PREPROCESSING_CACHE)
        settings = {**profile_overrides(profile, "evaluate"), "datalist_key": "test"}
        if cell.role == "adabn":  # the target's scans, unlabeled: only their images are read for the statistics
            settings["adapt_bn_on"] = [e["image"] for e in datalist["test"]]
        elif cell.role == "histmatch":
            reference_scans = tuple(e["image"] for e in datalist["training"])  # the source model's training scans
            paths["histogram_reference"] = str(cell_dir / HISTOGRAM_REFERENCE)
    if shipped:  # the shipped weights stand in for this training: they, not the settings, define the cell
        settings = {"shipped_weights": shipped, "sha256": _file_sha256(shipped)}
    portable = _portable(settings, {"dataset_dir": data_dir, "output_dir": out})
    fingerprint = _sha({"cell": cell.id, "bundle": bundle_dir.name, "configs": [f.name for f in config_files],
                        "settings": portable, "scans": _ids(datalist), "split_seed": profile.split_seed})
    return CellSpec(
        cell=cell,
        bundle=bundle_dir.name,
        config_files=tuple(str(f) for f in config_files),
        meta_file=str(_meta_file(bundle_dir)),
        workflow_type="train" if cell.kind == "train" else "infer",
        cell_dir=str(cell_dir),
        settings=settings,
        paths=paths,
        datalist=datalist,
        fingerprint=fingerprint,
        profile=profile.name,
        seed=profile.seed,
        split_seed=profile.split_seed,
        reference_scans=reference_scans,
    )
