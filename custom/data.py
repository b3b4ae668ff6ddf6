"""Training batches from cached 2D slices: each volume is preprocessed once, then training only reads memory."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import Dataset, PersistentDataset, load_decathlon_datalist
from monai.data.utils import pickle_hashing
from torch.utils.data import Dataset as TorchDataset

from custom.cc359 import index_dataset
from custom.options import renamed_keyword
from custom.splits import candidate_slices, one2all, one2one
from custom.transforms import InputError

__all__ = [
    "CROP_MODES", "SliceDataset", "crop_or_pad", "file_state_hash", "load_datalist", "one2all_datalist",
    "one2one_datalist", "preprocessed_dataset", "validation_sampler",
]

DATALIST_KEYS = ("training", "validation", "test")


def load_datalist(path: str, required: Sequence[str] = ()) -> dict:
    """A JSON datalist as written by ``custom.splits``; relative paths resolve against the file's folder.

    ``required`` names the lists this run needs non-empty (``training`` to train, ``test`` to evaluate). A list
    under another name (``testing``, ``train``, ...), an entry without ``image`` (or, in a labelled list, without
    ``label``) or the same scan twice in one list is refused with one line naming the file and the key.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: datalist not found")
    with open(path) as f:
        try:
            raw = json.load(f)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: not a JSON datalist ({e})") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: not a JSON datalist (expected an object with {', '.join(DATALIST_KEYS)})")
    unknown = [k for k, v in raw.items() if k not in DATALIST_KEYS and isinstance(v, list)]
    if unknown:
        raise InputError(f"{path}: unknown list {unknown[0]!r} (a datalist's lists are {', '.join(DATALIST_KEYS)})")
    for key in DATALIST_KEYS:
        entries = raw.get(key) or []
        if not isinstance(entries, list):
            raise InputError(f"{path}: {key!r} must be a list of {{image, label}} entries")
        for i, entry in enumerate(entries):
            fields = ("image", "label") if key in required or key != "test" else ("image",)
            missing = [f for f in fields if not isinstance(entry, dict) or not entry.get(f)]
            if missing:
                raise InputError(f"{path}: entry {i} of {key!r} has no {missing[0]!r}")
    for key in required:
        if not raw.get(key):
            raise InputError(f"{path}: {key!r} is missing or empty (this run needs its scans)")
    base = Path(path).resolve().parent
    out = {k: v for k, v in raw.items() if k not in DATALIST_KEYS}
    for key in DATALIST_KEYS:
        out[key] = load_decathlon_datalist(path, data_list_key=key, base_dir=base) if raw.get(key) else []
    # the same scan twice in one list would silently weigh it double (or count it twice in a test)
    for key in DATALIST_KEYS:
        seen: set[tuple[str, str]] = set()
        for item in out[key]:
            for field in ("id", "image"):
                if field in item and (field, str(item[field])) in seen:
                    raise InputError(f"{path}: duplicate {field} {item[field]} in {key!r}")
                seen.add((field, str(item.get(field))))
    return out


def one2all_datalist(dataset_dir: str, source: str) -> dict:
    """The paper's baseline split of a CC359-like folder: train on ``source``, test on the other domains."""
    return one2all(index_dataset(dataset_dir), source)


@renamed_keyword("n_add_ids")
def one2one_datalist(dataset_dir: str, source: str, target: str, n_target_scans: int, slice_interval: int) -> dict:
    """The paper's fine-tuning split: ``n_target_scans`` annotated ``target`` scans to train on, the rest to test."""
    return one2one(index_dataset(dataset_dir), source, target, n_target_scans, slice_interval)

logger = logging.getLogger(__name__)


CROP_MODES = ("random", "centre_if_small")


def file_state_hash(item: dict) -> bytes:
    """A datalist entry's cache key: its values, and the size and modification time of every file it names, so a
    file replaced in place is preprocessed again."""
    state = {}
    for key, value in sorted(item.items(), key=lambda kv: str(kv[0])):
        path = Path(value) if isinstance(value, str) and value else None
        if path is not None and path.is_file():
            stat = path.stat()
            value = (value, stat.st_size, stat.st_mtime_ns)
        state[str(key)] = value
    return pickle_hashing(state)


def preprocessed_dataset(data: Sequence[dict], transform: Callable, cache_dir: str | None = None) -> Dataset:
    """``data`` through ``transform``; with ``cache_dir``, each result is kept there (``monai.data.PersistentDataset``)
    and reused while the entry, its files' size and time and the deterministic transforms are the same.

    The cached volumes keep their metadata and applied operations (the predictions are inverted with them), which
    ``torch.load`` reads only as full pickles: use a cache folder only this project writes.
    """
    if not cache_dir:
        return Dataset(data, transform)
    if Path(cache_dir).exists() and not Path(cache_dir).is_dir():
        raise InputError(f"{cache_dir}: the preprocessing cache must be a folder, this is a file")
    return PersistentDataset(data, transform, cache_dir=cache_dir, hash_func=file_state_hash,
                             hash_transform=pickle_hashing, track_meta=True, weights_only=False)


def crop_or_pad(
    image: np.ndarray, label: np.ndarray, size: Sequence[int], rng: np.random.Generator, mode: str = "random"
):
    """A ``size`` window of a (C, H, W) slice (the image padded with its minimum, the mask with 0).

    ``mode="random"``: a random window along each side longer than ``size``; shorter sides are centre-padded.
    ``mode="centre_if_small"`` (the paper's code, dpipe's ``sample_center_uniformly`` + ``crop_to_box``): if any
    side is shorter than ``size`` the window is centred on the slice on BOTH axes (start ``n // 2 - size // 2``,
    negative = padding), else it is random as above.
    """
    if mode not in CROP_MODES:
        raise ValueError(f"crop mode must be one of {', '.join(CROP_MODES)}, got {mode!r}")
    sides = [(image.shape[axis], target) for axis, target in zip((1, 2), size, strict=True)]
    if mode == "centre_if_small" and any(n < target for n, target in sides):
        # dpipe's crop_to_box: cut the part of the centred box inside the slice, then pad with ITS minimum
        box = [(n // 2 - target // 2, n // 2 - target // 2 + target) for n, target in sides]
        window = (slice(None), *(slice(max(a, 0), min(b, n)) for (a, b), (n, _) in zip(box, sides, strict=True)))
        out_img, out_lbl = image[window], label[window]
        pad = [(0, 0)] + [(max(0, -a), max(0, b - n)) for (a, b), (n, _) in zip(box, sides, strict=True)]
        return np.pad(out_img, pad, constant_values=out_img.min()), np.pad(out_lbl, pad, constant_values=0)
    out_img, out_lbl = image, label
    for axis, (n, target) in zip((1, 2), sides, strict=True):
        if n < target:
            before = (target - n) // 2
            pad = [(0, 0)] * 3
            pad[axis] = (before, target - n - before)
            out_img = np.pad(out_img, pad, constant_values=out_img.min())
            out_lbl = np.pad(out_lbl, pad, constant_values=0)
        elif n > target:
            start = int(rng.integers(n - target + 1))
            index = [slice(None)] * 3
            index[axis] = slice(start, start + target)
            out_img, out_lbl = out_img[tuple(index)], out_lbl[tuple(index)]
    return out_img, out_lbl


class SliceDataset(TorchDataset):
    """Random 2D training crops from the candidate slices of preprocessed volumes.

    Item ``i`` of epoch ``e`` is drawn from a generator seeded by ``(seed, e, i)``: a run resumed from an epoch
    checkpoint sees exactly the batches an uninterrupted run would. As the paper: a random training scan, a
    random candidate slice along the last axis (every ``slice_interval``-th: ``floor(n_z / k)`` of them), a
    random ``roi_size`` crop.

    Args:
        data: a datalist (``{"image": ..., "label": ...}`` dicts) - the id MONAI Label overrides.
        transform: the preprocessing applied once per volume.
        slice_interval: ``k``; the scan offers slices ``0, k, 2k, ...``.
        roi_size: crop size (the paper: 256 x 256).
        crop_mode: ``"random"`` or ``"centre_if_small"`` (the paper's code), see `crop_or_pad`.
        samples_per_epoch: iterations x batch size.
        cache_dir: keep preprocessed volumes on disk across runs (`preprocessed_dataset`).
    """

    def __init__(
        self,
        data: Sequence[dict],
        transform: Callable,
        slice_interval: int = 1,
        roi_size: Sequence[int] = (256, 256),
        samples_per_epoch: int = 3200,
        seed: int = 0,
        image_key: str = "image",
        label_key: str = "label",
        cache_dir: str | None = None,
        crop_mode: str = "random",
    ):
        if crop_mode not in CROP_MODES:
            raise ValueError(f"SliceDataset: crop_mode must be one of {', '.join(CROP_MODES)}, got {crop_mode!r}")
        self.crop_mode = crop_mode
        if not data:
            raise ValueError("SliceDataset: the training datalist is empty")
        if slice_interval < 1:
            raise ValueError(f"SliceDataset: slice_interval must be >= 1, got {slice_interval}")
        self.roi_size, self.samples_per_epoch = tuple(roi_size), int(samples_per_epoch)
        self.seed, self.epoch = int(seed), 0
        volumes = preprocessed_dataset(data, transform, cache_dir)
        self.images: list[np.ndarray] = []  # per scan: (n_candidates, 1, H, W) float32
        self.labels: list[np.ndarray] = []  # per scan: (n_candidates, 1, H, W) uint8
        for item in volumes:
            image, label = np.asarray(item[image_key]), np.asarray(item[label_key])
            picks = candidate_slices(image.shape[-1], slice_interval)
            if not picks:
                name = data[len(self.images)][image_key]
                raise ValueError(f"{name}: {image.shape[-1]} slices offer none at slice interval {slice_interval}")
            self.images.append(np.ascontiguousarray(np.moveaxis(image[..., picks], -1, 0), dtype=np.float32))
            self.labels.append(np.ascontiguousarray(np.moveaxis(label[..., picks], -1, 0), dtype=np.uint8))
        logger.info("cached %d training slices from %d scans (slice interval %d)",
                    self.n_slices, len(self.images), slice_interval)

    @property
    def n_slices(self) -> int:
        return sum(len(x) for x in self.images)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng((self.seed, self.epoch, int(index)))
        scan = int(rng.integers(len(self.images)))
        pick = int(rng.integers(len(self.images[scan])))
        image, label = crop_or_pad(self.images[scan][pick], self.labels[scan][pick], self.roi_size, rng,
                                   self.crop_mode)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)),
            "label": torch.from_numpy(np.ascontiguousarray(label, dtype=np.float32)),
        }


def validation_sampler(dataset, num_replicas: int | None = None, rank: int | None = None):
    """This process's share of the validation scans in data-parallel training (``None``: all of them).

    Process ``r`` of ``N`` validates scans ``r, r + N, ...`` (MONAI's ``DistributedSampler`` with uneven shares,
    nothing repeated), so the per-scan metrics gathered from all processes are exactly one process's. With fewer
    scans than processes, or outside a process group, every process validates every scan: a process with no scan
    would never join the gather, and N copies of each value leave the mean unchanged.
    """
    from monai.data import DistributedSampler

    dist = torch.distributed
    if num_replicas is None:
        if not (dist.is_available() and dist.is_initialized()):
            return None
        num_replicas = dist.get_world_size()
    if rank is None:
        rank = dist.get_rank()
    if num_replicas < 2 or len(dataset) < num_replicas:
        return None
    sampler = DistributedSampler(dataset, even_divisible=False, num_replicas=num_replicas, rank=rank, shuffle=False)
    logger.info("validation: process %d of %d validates %d of the %d scans", rank, num_replicas, len(sampler),
                len(dataset))
    return sampler
