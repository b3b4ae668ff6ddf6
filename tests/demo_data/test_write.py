"""custom.demo_data.write: CC359's layout and naming, the mosaic, determinism, overwriting, interruptions."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from custom.demo_data import DOMAIN_NAMES, make_demo_data, write
from tests.demo_data.common import N_SUBJECTS, NAME


def test_official_layout_and_naming(dataset):
    assert sorted(p.name for p in dataset.iterdir()) == ["Original", "Silver-standard", "mosaic.png"]
    images = sorted(p.name for p in (dataset / "Original").iterdir())
    masks = sorted(p.name for p in (dataset / "Silver-standard").iterdir())
    assert len(images) == 6 * N_SUBJECTS
    assert masks == [n.replace(".nii.gz", "_ss.nii.gz") for n in images]
    ids, per_domain = [], {d: 0 for d in DOMAIN_NAMES}
    for name in images:
        match = NAME.match(name)
        assert match, name
        ids.append(int(match[1]))
        per_domain[f"{match[2]}_{match[3]}"] += 1
        assert 20 <= int(match[4]) <= 80
    assert ids == list(range(1, 6 * N_SUBJECTS + 1))  # unique and consecutive across domains
    assert per_domain == {d: N_SUBJECTS for d in DOMAIN_NAMES}
    # no temporary folder is left next to the dataset
    assert [p.name for p in dataset.parent.iterdir()] == ["data"]


def test_mosaic_written(dataset):
    data = (dataset / "mosaic.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_deterministic_per_seed(tmp_path):
    a = make_demo_data(tmp_path / "a", n_subjects=1, seed=3, verbose=False)
    b = make_demo_data(tmp_path / "b", n_subjects=1, seed=3, workers=2, verbose=False)  # processes: same files
    c = make_demo_data(tmp_path / "c", n_subjects=1, seed=4, verbose=False)
    for sub in ("Original", "Silver-standard"):
        names_a = sorted(p.name for p in (a / sub).iterdir())
        assert names_a == sorted(p.name for p in (b / sub).iterdir())
        for name in names_a:
            assert (a / sub / name).read_bytes() == (b / sub / name).read_bytes(), name
    first_a = sorted((a / "Original").iterdir())[0]
    first_c = sorted((c / "Original").iterdir())[0]
    arr_a, arr_c = np.asarray(nib.load(first_a).dataobj), np.asarray(nib.load(first_c).dataobj)
    assert arr_a.shape != arr_c.shape or not np.array_equal(arr_a, arr_c)


def test_refuses_to_overwrite(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        make_demo_data(out, n_subjects=1, verbose=False)
    assert (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    make_demo_data(out, n_subjects=1, overwrite=True, verbose=False)
    assert not (out / "keep.txt").exists() and (out / "mosaic.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_empty_output_folder_is_used(tmp_path):
    (tmp_path / "data").mkdir()
    make_demo_data(tmp_path / "data", n_subjects=1, verbose=False)
    assert len(list((tmp_path / "data" / "Original").iterdir())) == 6


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(write, "_write_mosaic", boom)
    with pytest.raises(KeyboardInterrupt):
        make_demo_data(tmp_path / "data", n_subjects=1, verbose=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs", [{"n_subjects": 0}, {"n_subjects": 1.5}, {"resolution": "huge"}, {"seed": -1}, {"workers": -1}]
)
def test_bad_options_raise(tmp_path, kwargs):
    with pytest.raises(ValueError):
        make_demo_data(tmp_path / "data", verbose=False, **kwargs)
    assert list(tmp_path.iterdir()) == []
