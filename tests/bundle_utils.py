"""Shared pieces of the bundle tests: where the bundles are, a tiny real dataset, and running a workflow."""

from __future__ import annotations

import shutil
from pathlib import Path

from monai.bundle import ConfigWorkflow

from custom.cc359 import index_dataset
from custom.splits import write_datalist

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"
SOURCE = BUNDLES / "brain_extraction_source"
FINETUNE = {
    "first": BUNDLES / "brain_extraction_first_layers",
    "last": BUNDLES / "brain_extraction_last_layers",
    "full": BUNDLES / "brain_extraction_full",
}
ALL_BUNDLES = [SOURCE, *FINETUNE.values()]
# a learned choice of fine-tuned blocks (custom.spottune)
SPOTTUNE = BUNDLES / "brain_extraction_spottune"
CHECKED_BUNDLES = [*ALL_BUNDLES, SPOTTUNE]  # the model-zoo checks of tests/test_bundles.py
SCHEMA = ROOT / "tests" / "data" / "meta_schema_20240725.json"

# Coarse voxels keep every CPU workflow test to seconds.
FAST = {"spacing": [4.0, 3.8, 3.8], "roi_size": [32, 32], "iterations_per_epoch": 2, "batch_size": 4}


def tiny_dataset(folder: Path) -> Path:
    """Two subjects per demo scanner, CC359 layout (small resolution)."""
    from custom.demo_data import make_demo_data

    make_demo_data(output_dir=str(folder), n_subjects=2, seed=3)
    return folder


def datalist(data_dir: Path, path: Path, train_domain="siemens_15", test_domain="ge_3", n_train=1) -> Path:
    """training: ``n_train`` scans of one domain; validation: another of it; test: another domain's scans."""
    scans = index_dataset(data_dir)
    own = [s for s in scans if s.domain == train_domain]
    other = [s for s in scans if s.domain == test_domain]
    entry = lambda s: {"image": s.image, "label": s.mask, "id": s.id, "domain": s.domain}  # noqa: E731
    write_datalist({"training": [entry(s) for s in own[:n_train]], "validation": [entry(own[-1])],
                    "test": [entry(s) for s in other]}, path)
    return path


def copy_bundle(bundle: Path, dest: Path) -> Path:
    """A private copy (symlinks resolved, so it stands alone), so tests never write into the repository."""
    target = dest / bundle.name
    shutil.copytree(bundle, target, symlinks=False, ignore=shutil.ignore_patterns("runs", "eval"))
    return target


def run_workflow(config_files, bundle: Path, workflow_type: str, **overrides) -> ConfigWorkflow:
    """initialize -> check_properties -> run -> finalize, as model-zoo CI does; returns the workflow."""
    files = [str(f) for f in config_files]
    workflow = ConfigWorkflow(
        config_file=files if len(files) > 1 else files[0],
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=str(bundle / "configs" / "logging.conf"),
        workflow_type=workflow_type,
        bundle_root=str(bundle),
        **overrides,
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()
    workflow.finalize()
    return workflow
