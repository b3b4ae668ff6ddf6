"""custom.data.preprocessed_dataset: preprocessed scans kept on disk and reused only while nothing they depend on
changed (the entry, its files, the deterministic transforms)."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from custom.data import file_state_hash, preprocessed_dataset
from custom.transforms import InputError, preprocessing


def _scan(folder, name="head.nii.gz"):
    rng = np.random.default_rng(0)
    image = rng.random((20, 24, 16)).astype(np.float32) * 100
    label = np.zeros((20, 24, 16), np.uint8)
    label[5:15, 6:18, 4:12] = 1
    nib.save(nib.Nifti1Image(image, np.diag([1.5, 1.5, 2.0, 1.0])), folder / name)
    nib.save(nib.Nifti1Image(label, np.diag([1.5, 1.5, 2.0, 1.0])), folder / f"mask_{name}")
    return {"image": str(folder / name), "label": str(folder / f"mask_{name}"), "id": "head"}


def _entries(cache):
    return sorted(p.name for p in cache.glob("*.pt"))


def test_a_second_dataset_reuses_the_cached_scan(tmp_path):
    entry, cache = _scan(tmp_path), tmp_path / "cache"
    first = preprocessed_dataset([entry], preprocessing(spacing=(3.0, 3.0, 3.0)), str(cache))[0]
    (cached,) = _entries(cache)
    stamp = (cache / cached).stat().st_mtime_ns
    # a new pipeline object, as the next bundle run builds it
    again = preprocessed_dataset([entry], preprocessing(spacing=(3.0, 3.0, 3.0)), str(cache))[0]
    assert _entries(cache) == [cached] and (cache / cached).stat().st_mtime_ns == stamp  # read, not rewritten
    for key in ("image", "label"):
        assert isinstance(again[key], MetaTensor)
        torch.testing.assert_close(again[key].as_tensor(), first[key].as_tensor(), rtol=0, atol=0)
        # what the predictions are inverted with
        assert [op["class"] for op in again[key].applied_operations] == [
            op["class"] for op in first[key].applied_operations]
        np.testing.assert_array_equal(again[key].affine, first[key].affine)
    uncached = preprocessed_dataset([entry], preprocessing(spacing=(3.0, 3.0, 3.0)))[0]
    torch.testing.assert_close(uncached["image"].as_tensor(), again["image"].as_tensor(), rtol=0, atol=0)


def test_other_preprocessing_or_a_replaced_file_is_preprocessed_again(tmp_path):
    entry, cache = _scan(tmp_path), tmp_path / "cache"
    preprocessed_dataset([entry], preprocessing(spacing=(3.0, 3.0, 3.0)), str(cache))[0]
    preprocessed_dataset([entry], preprocessing(spacing=(2.0, 2.0, 2.0)), str(cache))[0]
    assert len(_entries(cache)) == 2  # the spacing is part of the key
    before = file_state_hash(entry)
    stat = os.stat(entry["image"])
    os.utime(entry["image"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the file replaced in place
    assert file_state_hash(entry) != before
    out = preprocessed_dataset([entry], preprocessing(spacing=(3.0, 3.0, 3.0)), str(cache))[0]
    assert len(_entries(cache)) == 3 and isinstance(out["image"], MetaTensor)


def test_without_a_cache_folder_nothing_is_written(tmp_path):
    entry = _scan(tmp_path)
    before = set(tmp_path.rglob("*"))
    item = preprocessed_dataset([entry], preprocessing(spacing=(3.0, 3.0, 3.0)), "")[0]
    assert isinstance(item["image"], MetaTensor) and set(tmp_path.rglob("*")) == before


def test_a_file_for_a_cache_folder_is_refused_in_one_line(tmp_path):
    entry, cache = _scan(tmp_path), tmp_path / "cache"
    cache.write_text("not a folder")
    with pytest.raises(InputError, match=r"cache: the preprocessing cache must be a folder"):
        preprocessed_dataset([entry], preprocessing(), str(cache))
    assert cache.read_text() == "not a folder"
