"""Small ignite handlers the bundle configs attach to MONAI engines."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import torch
from ignite.engine import Engine, Events

from custom.checkpoints import atomic_save, atomic_write_text, latest

__all__ = [
    "BroadcastBuffers", "CommitOnCompletion", "EpochCheckpoint", "FinalModelSaver", "GlobalRngState", "PerScanCSV",
    "SetEpoch",
    "VolumeProgress", "provenance_path", "provenance_record", "resume",
]

logger = logging.getLogger(__name__)
STAGING_PREFIX = ".partial-"  # CommitOnCompletion's staging folder inside output_dir: .partial-<pid>


def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class SetEpoch:
    """Tell a dataset which epoch starts, so its random draws depend on (seed, epoch, index) only."""

    def __init__(self, dataset):
        self.dataset = dataset

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self.dataset.set_epoch(e.state.epoch))


class BroadcastBuffers:
    """After every epoch, give every process the first process's buffers (BatchNorm running statistics).

    Data-parallel training keeps the parameters equal, but each process's last forward pass updates its own
    BatchNorm statistics. Attached before validation, this makes every process validate, and the first process save,
    the same network.
    """

    def __init__(self, network: torch.nn.Module):
        self.network = network

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            for buffer in self.network.buffers():
                dist.broadcast(buffer, src=0)


class VolumeProgress:
    """One log line per volume of an inference or evaluation run (name, seconds, and the volume's metric when
    ``metric`` is an attached MONAI metric handler), plus a progress bar when stderr is a terminal."""

    def __init__(self, metric=None, metric_name: str = "surface Dice"):
        self.metric, self.metric_name = metric, metric_name
        self._bar, self._t0 = None, 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._open)
        engine.add_event_handler(Events.GET_BATCH_STARTED, self._start)  # loading and preprocessing count too
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._done)
        engine.add_event_handler(Events.COMPLETED, self._close)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._close)

    def _open(self, engine: Engine) -> None:
        import sys

        from monai.utils import optional_import

        tqdm, has_tqdm = optional_import("tqdm", name="tqdm")  # a bar only where tqdm is installed
        if has_tqdm and sys.stderr.isatty():
            self._bar = tqdm(total=engine.state.epoch_length, unit="volume", file=sys.stderr, leave=False)

    def _start(self, engine: Engine) -> None:
        self._t0 = time.perf_counter()

    def _done(self, engine: Engine) -> None:
        seconds = time.perf_counter() - self._t0
        batch = engine.state.batch  # decollated by MONAI's engines: a list of per-volume dicts
        item = batch[0] if isinstance(batch, list | tuple) and batch else batch
        meta = getattr(item.get("image"), "meta", {}) if isinstance(item, dict) else {}
        name = meta.get("filename_or_obj") or "<volume>"
        name = name[0] if isinstance(name, list | tuple) else name
        text = f"volume {engine.state.iteration}/{engine.state.epoch_length}: {name} ({seconds:.2f} s"
        buffer = self.metric.metric_fn.get_buffer() if self.metric is not None else None
        if isinstance(buffer, torch.Tensor) and buffer.numel():
            text += f", {self.metric_name} {float(buffer.reshape(-1)[-1]):.4f}"
        logger.info(text + ")")
        if self._bar is not None:
            self._bar.update(1)

    def _close(self, engine: Engine, *_) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class EpochCheckpoint:
    """Save ``objects`` plus the engine's own state after every epoch (the newest only), for ``resume``.

    Written atomically (temporary file, then rename): a run killed while saving keeps its previous checkpoint
    intact instead of leaving a truncated newest one that ``resume`` would choke on. Only rank 0 writes.
    """

    def __init__(self, folder: str, objects: dict):
        self.folder, self.objects = Path(folder), objects

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if _rank() > 0:
            return
        state = {name: getattr(obj, "module", obj).state_dict() for name, obj in self.objects.items()}
        path = atomic_save({**state, "trainer": engine.state_dict()},
                           self.folder / f"checkpoint_epoch={engine.state.epoch}.pt")
        for old in [*self.folder.glob("checkpoint_epoch=*.pt"), *self.folder.glob(".checkpoint_epoch=*")]:
            if old != path:
                old.unlink(missing_ok=True)  # older epochs, and temporary files of a killed save


class GlobalRngState:
    """torch's global random generators (CPU and every CUDA device) as a checkpoint object: with it in
    ``EpochCheckpoint``'s objects a resumed run draws the same random numbers as an uninterrupted one (the
    SpotTUnet policy's Gumbel noise comes from them)."""

    def state_dict(self) -> dict:
        state = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["cpu"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def resume(trainer: Engine, folder: str, objects: dict, enabled: bool = True) -> str | None:
    """Continue ``trainer`` from the newest epoch checkpoint in ``folder`` (model, optimizer, scheduler, engine).

    Attached from the config's ``run`` section: as a handler it would reference the trainer that lists it.
    """
    path = latest(folder) if enabled else None
    if path:
        from monai.handlers import CheckpointLoader

        CheckpointLoader(load_path=path, load_dict={**objects, "trainer": trainer}, map_location="cpu").attach(trainer)
        logger.info("resuming from %s", path)
    return path


class FinalModelSaver:
    """Save the network's state dict atomically when training COMPLETES (never after a crash).

    With ``provenance`` (what the run was made from: datalist, recipe, strategy, initial weights), also write
    ``<model>.provenance.json`` beside it: that dict with file paths and the datalist replaced by their sha256, plus
    the model's own sha256, the epochs run and the finishing time. Exports read it (``custom.packaging``).
    """

    def __init__(self, network: torch.nn.Module, path: str, provenance: dict | None = None):
        self.network, self.path, self.provenance = network, path, provenance

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        net = getattr(self.network, "module", self.network)  # unwrap DistributedDataParallel
        if _rank() > 0:
            return
        atomic_save({k: v.detach().cpu() for k, v in net.state_dict().items()}, self.path)
        logger.info("saved the final model to %s", self.path)
        if self.provenance is not None:
            record = provenance_record(self.provenance, self.path, engine)
            atomic_write_text(provenance_path(self.path), json.dumps(record, indent=2, default=str) + "\n")


def provenance_path(model_path: str | Path) -> Path:
    """``models/model.pt`` -> ``models/model.provenance.json``."""
    return Path(model_path).with_suffix(".provenance.json")


def provenance_record(provenance: dict, model_path: str | Path, engine: Engine | None = None) -> dict:
    import hashlib
    from datetime import datetime, timezone

    from custom.checkpoints import sha256

    def describe(value):
        if isinstance(value, str | Path) and Path(value).is_file():
            return {"file": Path(value).name, "sha256": sha256(value)}
        return value

    record = {k: describe(v) for k, v in provenance.items() if k != "datalist"}
    if "datalist" in provenance:
        text = json.dumps(provenance["datalist"], sort_keys=True, default=str)
        parts = provenance["datalist"] if isinstance(provenance["datalist"], dict) else {}
        record["datalist"] = {"sha256": hashlib.sha256(text.encode()).hexdigest(),
                              "scans": {k: len(v) for k, v in parts.items() if isinstance(v, list)}}
    if engine is not None:
        record["epochs_run"] = engine.state.epoch
        record["iterations_run"] = engine.state.iteration
    record["model_sha256"] = sha256(model_path)
    record["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return record


class PerScanCSV:
    """One CSV row per evaluated scan: the datalist fields ``keys`` and each metric's per-scan value.

    Reads the metric handlers' ``save_details`` output (``engine.state.metric_details``); written atomically at
    the end of the run, so an interrupted evaluation leaves no partial table.
    """

    def __init__(self, path: str, metrics: tuple[str, ...] = ("surface_dice", "dice"), keys=("id", "domain")):
        self.path, self.metrics, self.keys = Path(path), tuple(metrics), tuple(keys)
        self._rows: list[dict] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self._rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _collect(self, engine: Engine) -> None:
        batch = engine.state.batch
        items = batch if isinstance(batch, list) else [batch]
        for item in items:
            row = {}
            for key in self.keys:
                value = item.get(key, "") if isinstance(item, dict) else ""
                row[key] = value[0] if isinstance(value, list | tuple) and len(value) == 1 else value
            if "id" in self.keys and not row.get("id"):
                meta = getattr(item.get("image"), "meta", {}) if isinstance(item, dict) else {}
                row["id"] = Path(str(meta.get("filename_or_obj", ""))).name
            self._rows.append(row)

    def _write(self, engine: Engine) -> None:
        details = engine.state.metric_details
        for name in self.metrics:
            values = torch.as_tensor(details[name]).reshape(len(self._rows), -1)[:, 0].tolist()
            for row, value in zip(self._rows, values, strict=True):
                row[name] = "" if math.isnan(value) else f"{value:.6f}"
        with io.StringIO(newline="") as f:
            writer = csv.DictWriter(f, fieldnames=[*self.keys, *self.metrics])
            writer.writeheader()
            writer.writerows(self._rows)
            atomic_write_text(self.path, f.getvalue())
        logger.info("wrote per-scan metrics of %d scans to %s", len(self._rows), self.path)


class CommitOnCompletion:
    """A run's files appear in ``output_dir`` only once the whole run has succeeded and every file reads back.

    Constructing it checks ``output_dir`` (not a file, writable: ``custom.storage.check_output_dir``), so a folder
    that cannot take the results stops the run in one line before any work. Writers (``SaveImaged``) write into
    ``staging``, a hidden folder INSIDE ``output_dir`` (``.partial-<pid>``: same file system, so ``output_dir`` may be
    a mount point or sit in a read-only parent). When the engine COMPLETES, every staged file is read back
    (``custom.storage.verify_written``: a full disk that cut a mask short fails the run), then renamed into place
    one by one; when it raises, the staging folder is removed, and ``output_dir`` too if this run created it, so
    ``output_dir`` is left exactly as it was: a bad 7th volume leaves neither six new masks nor an overwritten earlier
    result. List it FIRST among the handlers: the first EXCEPTION_RAISED handler to re-raise is the last one ignite
    calls.
    """

    PREFIX = STAGING_PREFIX

    def __init__(self, output_dir: str):
        from custom.storage import check_output_dir

        out = Path(output_dir).absolute()
        self.output_dir = out
        self._existed = check_output_dir(out)
        self.staging = str(out / f"{STAGING_PREFIX}{os.getpid()}")

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self.commit)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self.discard)

    def commit(self, engine: Engine | None = None) -> None:
        from custom.storage import verify_written

        staging = Path(self.staging)
        if staging.is_dir():
            staged = sorted(p for p in staging.rglob("*") if p.is_file())
            for path in staged:  # all of them first: a bad file commits nothing
                verify_written(path)
            for path in staged:
                target = self.output_dir / path.relative_to(staging)
                target.parent.mkdir(parents=True, exist_ok=True)
                # a move, not a write: each staged file is complete and checked, and a rename within the output
                # folder commits it without copying it again (as atomic_write would)
                os.replace(path, target)
            shutil.rmtree(staging)
        self._sweep_stale()

    def discard(self, engine: Engine, error: Exception) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        self._sweep_stale()
        if not self._existed:
            try:
                self.output_dir.rmdir()  # created by this run's writers, and empty again
            except OSError:
                pass
        raise error

    def _sweep_stale(self) -> None:
        """Remove the staging folders of earlier runs that were killed (their process is gone)."""
        stale = [*self.output_dir.glob(f"{STAGING_PREFIX}*"),
                 *self.output_dir.parent.glob(f".{self.output_dir.name}.partial-*")]  # older versions: beside it
        for folder in stale:
            pid = folder.name.rsplit("-", 1)[-1]
            if folder.is_dir() and pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
