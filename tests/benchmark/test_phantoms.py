"""The synthetic data (custom.benchmark.phantoms): reproducible, brain-like, and written as the bundle reads it."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from custom.benchmark.phantoms import brain_mask_pair, head_phantom, write_training_data
from custom.benchmark.settings import resolve_settings

SHAPE, SPACING = (24, 32, 32), (1.2, 0.9375, 0.9375)


def test_mask_pair_is_a_seeded_imperfect_copy():
    pred, target = brain_mask_pair(SHAPE, SPACING, seed=1)
    again = brain_mask_pair(SHAPE, SPACING, seed=1)
    assert np.array_equal(pred, again[0]) and np.array_equal(target, again[1])
    assert pred.shape == target.shape == SHAPE and pred.dtype == target.dtype == bool
    overlap = np.count_nonzero(pred & target) / np.count_nonzero(target)
    assert 0.5 < overlap < 1.0 and not np.array_equal(pred, brain_mask_pair(SHAPE, SPACING, seed=2)[0])


def test_head_phantom_has_a_brain_inside_a_brighter_skull():
    image, brain = head_phantom(SHAPE, (1.0, 1.0, 1.0), seed=0)
    assert image.dtype == np.float32 and image.min() >= 0.0 and brain.any() and not brain.all()
    assert 0.4 < image[brain].mean() < 0.9 and image.max() > image[brain].mean()


def test_training_data_is_a_datalist_of_nifti_pairs(tmp_path):
    s = resolve_settings(device="cpu", quick=True, roi=16)
    datalist = json.loads(write_training_data(tmp_path, s).read_text())
    assert [e["id"] for e in datalist["training"]] == ["head0", "head1"]
    for entry in datalist["training"]:
        image, label = nib.load(entry["image"]), nib.load(entry["label"])
        assert image.shape == label.shape == (24, 24, s.train_slices)
        assert np.allclose(image.header.get_zooms(), (1.0, 0.95, 0.95))
        assert set(np.unique(np.asarray(label.dataobj))) == {0, 1}
