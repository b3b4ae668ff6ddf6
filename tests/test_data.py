"""custom.data.SliceDataset: the candidate slices of each scan cached once, crops reproducible per (seed, epoch, i)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from custom.data import SliceDataset
from custom.splits import candidate_slices


def _scans(depths=(10, 7)):
    """Volumes (C, H, W, D) whose every voxel of slice z holds 1000 * scan + z: a crop tells where it came from."""
    out = []
    for s, depth in enumerate(depths):
        image = np.broadcast_to(1000.0 * s + np.arange(depth, dtype=np.float32), (1, 12, 16, depth)).copy()
        label = (image > 1000.0 * s + 2).astype(np.uint8)
        out.append({"image": image, "label": label})
    return out


def _dataset(**kwargs):
    options = {"slice_interval": 3, "roi_size": (12, 16), "samples_per_epoch": 40, "seed": 7} | kwargs
    return SliceDataset(_scans(), transform=lambda item: item, **options)


def test_only_the_candidate_slices_are_cached_and_drawn():
    ds = _dataset()
    assert ds.n_slices == len(candidate_slices(10, 3)) + len(candidate_slices(7, 3))
    allowed = {1000.0 * s + z for s, depth in enumerate((10, 7)) for z in candidate_slices(depth, 3)}
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (1, 12, 16) and item["label"].dtype == torch.float32
        values = set(item["image"].unique().tolist())
        assert len(values) == 1 and values <= allowed  # one whole candidate slice (the crop is the slice here)
        assert item["label"].unique().tolist() == [float(values.pop() % 1000 > 2)]


def test_items_are_a_function_of_seed_epoch_and_index():
    a, b = _dataset(), _dataset()
    draws = lambda ds: [ds[i]["image"][0, 0, 0].item() for i in range(len(ds))]  # noqa: E731
    assert draws(a) == draws(b)
    b.set_epoch(1)
    assert draws(a) != draws(b)  # another epoch, other draws ...
    a.set_epoch(1)
    assert draws(a) == draws(b)  # ... the same for a resumed run
    assert draws(_dataset(seed=8)) != draws(_dataset())


def test_crops_and_pads_to_roi_size():
    ds = _dataset(roi_size=(8, 24))
    item = ds[0]
    assert item["image"].shape == (1, 8, 24)
    assert (item["label"][:, :, :4] == 0).all() and (item["label"][:, :, -4:] == 0).all()  # padded with background


@pytest.mark.parametrize("kwargs, message", [
    ({"slice_interval": 0}, "slice_interval must be >= 1"),
    ({"crop_mode": "corner"}, "crop_mode must be one of random, centre_if_small"),
    ({"slice_interval": 50}, "slices offer none at slice interval 50"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _dataset(**kwargs)
    with pytest.raises(ValueError, match="the training datalist is empty"):
        SliceDataset([], transform=lambda item: item)
