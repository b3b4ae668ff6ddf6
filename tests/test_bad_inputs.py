"""A corpus of bad inputs: each gets a one-line error naming the file and the problem, and leaves no output."""

from __future__ import annotations

import json

import pytest
import torch

from custom.checkpoints import load_state_dict
from custom.transforms import InputError, preprocessing
from tests.corpus import IMAGE_PROBLEMS, MASK_PROBLEMS, SPACING, bad_image, bad_mask, good_pair, head, save


@pytest.mark.parametrize("kind", sorted(IMAGE_PROBLEMS))
def test_bad_image_is_named_with_its_problem(tmp_path, kind):
    path = bad_image(tmp_path, kind)
    with pytest.raises(Exception) as info:
        preprocessing(keys=["image"], spacing=SPACING)({"image": str(path)})
    error = _own(info.value)
    assert isinstance(error, InputError)
    message = str(error)
    assert str(path) in message and IMAGE_PROBLEMS[kind] in message and "\n" not in message


def _own(exc):
    while exc is not None and not isinstance(exc, InputError):
        exc = exc.__cause__ or exc.__context__
    return exc


def test_singleton_fourth_axis_is_simply_handled(tmp_path):
    image, _ = head()
    path = save(tmp_path / "t1_4d.nii.gz", image[..., None])
    out = preprocessing(keys=["image"], spacing=SPACING)({"image": str(path)})["image"]
    assert out.ndim == 4 and out.shape[0] == 1


@pytest.mark.parametrize("kind", sorted(MASK_PROBLEMS))
def test_bad_mask_is_named_with_its_problem(tmp_path, kind):
    img, mask = bad_mask(tmp_path, kind)
    with pytest.raises(Exception) as info:
        preprocessing(keys=["image", "label"], spacing=SPACING)({"image": str(img), "label": str(mask)})
    message = str(_own(info.value))
    assert str(mask) in message and MASK_PROBLEMS[kind] in message


def test_good_pair_passes(tmp_path):
    img, mask = good_pair(tmp_path)
    out = preprocessing(keys=["image", "label"], spacing=SPACING)({"image": str(img), "label": str(mask)})
    assert float(out["image"].max()) == pytest.approx(1.0) and set(torch.unique(out["label"]).tolist()) == {0.0, 1.0}


@pytest.mark.parametrize("content", [b"", b"not a torch file", None])
def test_weights_are_loaded_as_tensors_only(tmp_path, content):
    path = tmp_path / "model.pt"
    if content is None:  # a pickle that would run code if unpickled without weights_only
        torch.save({"model": {"w": torch.zeros(1)}, "hook": print}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match="model.pt"):
        load_state_dict(path)


# ---- datalists and input folders ------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["id", "image"])
def test_duplicate_scan_in_a_datalist_list_is_refused(tmp_path, field):
    from custom.data import load_datalist

    img, mask = good_pair(tmp_path)
    other, other_mask = good_pair(tmp_path, "other")
    second = {"image": str(img if field == "image" else other), "label": str(other_mask),
              "id": "a" if field == "id" else "b"}
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"training": [{"image": str(img), "label": str(mask), "id": "a"}, second]}))
    with pytest.raises(InputError, match=f"datalist.json: duplicate {field} .* in 'training'"):
        load_datalist(str(path))


def test_same_scan_in_validation_and_test_is_allowed(tmp_path):
    """The in-domain reference evaluates the validation scans: the same scan in two lists is legitimate."""
    from custom.data import load_datalist

    img, mask = good_pair(tmp_path)
    entry = {"image": str(img), "label": str(mask), "id": "a"}
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"validation": [entry], "test": [entry]}))
    assert load_datalist(str(path))["test"][0]["id"] == "a"


def test_not_json_datalist(tmp_path):
    from custom.data import load_datalist

    path = tmp_path / "datalist.json"
    path.write_text("{training: ")
    with pytest.raises(InputError, match="datalist.json: not a JSON datalist"):
        load_datalist(str(path))


def test_volumes_whose_masks_would_share_a_name_are_refused(tmp_path):
    from custom.transforms import find_volumes

    image, _ = head()
    save(tmp_path / "a.nii.gz", image)
    (tmp_path / "sub").mkdir()
    save(tmp_path / "sub" / "a.nii.gz", image)  # another folder: its mask goes to sub/, no clash
    assert len(find_volumes(tmp_path)) == 2
    save(tmp_path / "a.nii", image)
    with pytest.raises(InputError, match="a.nii.gz: same name as .*a.nii; their masks would overwrite"):
        find_volumes(tmp_path)
