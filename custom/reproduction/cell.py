"""Running one cell: its bundle in-process through ``monai.bundle.ConfigWorkflow``, then its ``done.json``.

Runs in this process, a spawned worker or a Ray task; torch and MONAI are imported only inside the run, after
a worker has chosen its GPU.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import json
import logging
import os
import shutil
import socket
import sys
import time
import traceback
import warnings
from pathlib import Path

from custom.reproduction.records import DONE, ERROR, LOG, PLAN, now, versions, write_json
from custom.reproduction.spec import CellSpec

__all__ = ["KNOBS", "prepare", "read_metrics", "run_cell"]

# what each kind of cell reports as its effective configuration (after the bundle resolved its defaults)
KNOBS = {
    "train": ("max_epochs", "lr_decay_epoch", "iterations_per_epoch", "batch_size", "learning_rate", "spacing",
              "roi_size", "slice_interval", "val_interval", "strategy", "freeze_bn_stats", "seed", "precision",
              "orientation", "mask_interpolation", "crop_mode"),
    "eval": ("spacing", "precision", "orientation", "mask_interpolation", "key_metric#surface_dice#tolerance"),
}


def _device_description() -> str:
    import torch

    if torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        where = f", CUDA_VISIBLE_DEVICES={visible}" if visible is not None else ""
        return f"cuda ({torch.cuda.get_device_name(0)}{where})"
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


@contextlib.contextmanager
def _captured(path: Path):
    """Send everything a bundle run prints or logs to ``path`` instead of the console."""
    with open(path, "a", buffering=1) as f:
        swapped = []

        def loggers():
            yield logging.getLogger()
            yield from (lg for lg in list(logging.root.manager.loggerDict.values()) if isinstance(lg, logging.Logger))

        seen = set()
        for lg in loggers():
            for h in lg.handlers:
                console = isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
                if console and id(h) not in seen:
                    seen.add(id(h))
                    swapped.append((h, h.stream))
                    h.setStream(f)
        root = logging.getLogger()
        handler = logging.StreamHandler(f)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
        old_level = root.level
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f), warnings.catch_warnings():
                warnings.simplefilter("default")
                yield f
        finally:
            root.removeHandler(handler)
            root.setLevel(old_level)
            for h, stream in swapped:
                h.setStream(stream)
            for lg in loggers():  # handlers created during the run captured the redirected stream
                for h in lg.handlers:
                    if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is f:
                        h.setStream(sys.stdout)


def _effective(workflow, kind: str) -> dict:
    from custom.precision import name

    out = {}
    if "compute_dtype" in workflow.parser:  # what --precision resolved to on this device
        out["compute_dtype"] = name(workflow.parser.get_parsed_content("compute_dtype"))
    for key in KNOBS[kind]:
        try:
            if key in workflow.parser:
                value = workflow.parser.get_parsed_content(key)
                out[key] = value if isinstance(value, bool | int | float | str | list | tuple) else str(value)
        except Exception as e:  # a knob some bundle version lacks must not fail the run
            out[key] = f"<unresolved: {type(e).__name__}>"
    return out


def prepare(cell_dir: Path, fingerprint: str, train: bool) -> bool:
    """Empty an unfinished cell's folder; a training keeps its epoch checkpoints when its ``plan.json`` has the
    same ``fingerprint`` (returns True: it can resume from them)."""
    plan_file = cell_dir / PLAN
    same = False
    if plan_file.is_file():
        try:
            same = json.loads(plan_file.read_text()).get("fingerprint") == fingerprint
        except (OSError, ValueError):
            same = False
    keep = {"checkpoints"} if same and train else set()
    if cell_dir.is_dir():
        for child in cell_dir.iterdir():
            if child.name in keep:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    cell_dir.mkdir(parents=True, exist_ok=True)
    checkpoints = cell_dir / "checkpoints"
    return checkpoints.is_dir() and any(checkpoints.glob("*.pt"))


def run_cell(spec: CellSpec) -> dict:
    """Run one cell's bundle and mark it done; returns the ``done.json`` record.

    A finished cell (``done.json`` with this fingerprint) is returned as is. Anything else in the folder is removed
    first (training keeps its epoch checkpoints when the plan is unchanged, and resumes from the newest).
    """
    cell_dir = Path(spec.cell_dir)
    marker = cell_dir / DONE
    if marker.is_file():
        record = json.loads(marker.read_text())
        if record.get("fingerprint") == spec.fingerprint:
            return record
    if spec.threads:
        import torch

        torch.set_num_threads(int(spec.threads))
    resume = prepare(cell_dir, spec.fingerprint, spec.cell.kind == "train")
    write_json(cell_dir / PLAN, spec.plan_record())
    from custom.splits import write_datalist

    write_datalist(spec.datalist, cell_dir / "datalist.json")
    kind = spec.cell.kind
    overrides = {**spec.settings, **spec.paths}
    if kind == "train":
        overrides["resume"] = resume
    started, t0, cpu0 = now(), time.perf_counter(), time.process_time()
    if spec.shipped:
        return _use_shipped(spec, started)
    try:
        with _captured(cell_dir / LOG):
            from monai.bundle import ConfigWorkflow

            extra = {}
            if spec.reference_scans:
                extra["histogram_reference_scans"] = _histogram_reference(spec)

            config = list(spec.config_files)
            workflow = ConfigWorkflow(
                config_file=config if len(config) > 1 else config[0],
                meta_file=spec.meta_file,
                logging_file=False,
                workflow_type=spec.workflow_type,
                **overrides,
            )
            workflow.initialize()
            effective = _effective(workflow, kind)
            losses = _EpochLosses().attach(workflow.parser.get_parsed_content("train#trainer")) if (
                kind == "train") else None
            recorder = _policy_recorder(workflow) if kind == "eval" and spec.cell.role == "spottune" else None
            workflow.run()
            dataset = None
            if recorder is not None:  # which blocks the learned policy fine-tuned, over every evaluated slice
                extra["policy_usage"] = recorder.usage().as_dict()
                recorder.close()
            if kind == "train":
                dataset = workflow.parser.get_parsed_content("train#dataset")
                extra["train_slices"] = int(getattr(dataset, "n_slices", -1))
                extra["train_scans"] = len(spec.datalist.get("training", []))
                extra["epoch_losses"] = [round(v, 6) for v in losses.values]
            workflow.finalize()
            del workflow, dataset
            gc.collect()  # engines and handlers hold reference cycles: free the model and data before the next cell
        outputs = _check_outputs(spec)
    except BaseException:
        from custom.checkpoints import atomic_write_text

        atomic_write_text(cell_dir / ERROR, traceback.format_exc())
        raise
    shutil.rmtree(cell_dir / "checkpoints", ignore_errors=True)  # only needed to resume an unfinished run
    record = {
        "cell": spec.cell_record(),
        "fingerprint": spec.fingerprint,
        "profile": spec.profile,
        "bundle": spec.bundle,
        "config_files": [Path(f).name for f in spec.config_files],
        "overrides": overrides,
        "effective": effective,
        "seed": spec.seed,
        "split_seed": spec.split_seed,
        **extra,
        "outputs": outputs,
        "resumed": bool(resume),
        "started": started,
        "finished": now(),
        "seconds": round(time.perf_counter() - t0, 2),
        "cpu_seconds": round(time.process_time() - cpu0, 2),
        "device": _device_description(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "versions": versions(),
    }
    write_json(marker, record)  # last: the cell is finished only now
    return record


def _histogram_reference(spec: CellSpec) -> int:
    """A histmatch cell's source-domain intensity reference, from the source model's training scans preprocessed
    as the evaluation preprocesses (same spacing and orientation); returns the number of scans."""
    from custom.histogram import reference_from_scans

    options = {k: spec.settings[k] for k in ("spacing", "orientation") if k in spec.settings}
    reference_from_scans(list(spec.reference_scans), **options).save(spec.paths["histogram_reference"])
    return len(spec.reference_scans)


def _policy_recorder(workflow):
    from custom.spottune import PolicyRecorder

    return PolicyRecorder(workflow.parser.get_parsed_content("network"))


class _EpochLosses:
    """Mean training loss of every epoch (was the loss still falling when training stopped?)."""

    def __init__(self):
        self.values: list[float] = []
        self._sum, self._n = 0.0, 0

    def attach(self, trainer) -> _EpochLosses:
        from ignite.engine import Events

        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._epoch)
        return self

    def _iteration(self, engine) -> None:
        output = engine.state.output
        loss = output[0]["loss"] if isinstance(output, list) else output["loss"]
        self._sum, self._n = self._sum + float(loss), self._n + 1

    def _epoch(self, engine) -> None:
        self.values.append(self._sum / max(self._n, 1))
        self._sum, self._n = 0.0, 0


def _use_shipped(spec: CellSpec, started: str) -> dict:
    """A source-training cell the profile replaces by shipped weights: copy them in and mark the cell done."""
    cell_dir, shipped = Path(spec.cell_dir), spec.settings["shipped_weights"]
    target = Path(spec.paths["model_path"])
    from custom.checkpoints import atomic_write, sha256

    atomic_write(target, lambda tmp: shutil.copyfile(shipped, tmp))

    if sha256(target) != spec.settings["sha256"]:
        raise RuntimeError(f"{shipped}: changed while it was copied to {target}")
    record = {
        "cell": spec.cell_record(), "fingerprint": spec.fingerprint, "profile": spec.profile,
        "bundle": spec.bundle, "shipped_weights": shipped, "sha256": spec.settings["sha256"],
        "effective": {}, "seed": spec.seed, "split_seed": spec.split_seed, "outputs": {"model": target.name},
        "resumed": False, "started": started, "finished": now(), "seconds": 0.0, "cpu_seconds": 0.0,
        "device": "", "host": socket.gethostname(), "pid": os.getpid(), "versions": versions(),
    }
    write_json(cell_dir / DONE, record)
    return record


def _check_outputs(spec: CellSpec) -> dict:
    paths = spec.paths
    if spec.cell.kind == "train":
        model = Path(paths["model_path"])
        if not model.is_file():
            raise RuntimeError(f"{spec.cell.id}: training finished without writing {model}")
        out = {"model": model.name}
        if "adapter_path" in paths and Path(paths["adapter_path"]).is_file():
            out["adapter"] = Path(paths["adapter_path"]).name
        return out
    metrics = Path(paths["metrics_csv"])
    expected = {e["id"] for e in spec.datalist["test"]}
    rows = read_metrics(metrics)
    got = {r["id"] for r in rows}
    if got != expected:
        raise RuntimeError(f"{spec.cell.id}: {metrics} has scans {sorted(got)}, expected {sorted(expected)}")
    return {"metrics": metrics.name, "scans": len(rows)}


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        raise RuntimeError(f"{path}: no metrics written")
    with open(path) as f:
        return list(csv.DictReader(f))
