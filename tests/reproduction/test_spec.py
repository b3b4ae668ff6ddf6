"""custom.reproduction.spec: a cell's fingerprint names what the cell is made of, not where the checkout, the data or
the output folder lie."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

from custom.reproduction.plan import plan
from custom.reproduction.records import DONE
from custom.reproduction.spec import BUNDLES
from tests.reproduction.tiny import TINY

BASELINE = "train/baseline/siemens_15"  # the profile's shipped weights stand in for it
ADABN = "eval/adabn/siemens_15_to_ge_3"  # its settings name the target's scans (adapt_bn_on)


def _make_place(root: Path, tiny_data, weights: bytes) -> Path:
    """A checkout of its own (the bundles, shipped source weights), a copy of the data, room for the outputs."""
    resources = root / "checkout" / "custom" / "resources"
    resources.mkdir(parents=True)
    (resources / "source.pt").write_bytes(weights)
    (root / "checkout" / "bundles").symlink_to(BUNDLES, target_is_directory=True)
    shutil.copytree(tiny_data, root / "data")
    return root


def _plan(root: Path):
    profile = replace(TINY, strategies=("first", "adabn"),
                      source_models={"siemens_15": str(root / "checkout" / "custom" / "resources" / "source.pt")})
    return plan(profile, root / "data", root / "out", bundles_dir=root / "checkout" / "bundles")


def _fingerprints(p) -> dict[str, str]:
    return {cell_id: spec.fingerprint for cell_id, spec in p.specs.items()}


def test_the_same_cells_in_two_places_have_the_same_fingerprints(tiny_data, tmp_path):
    a = _plan(_make_place(tmp_path / "a", tiny_data, b"weights"))
    b = _plan(_make_place(tmp_path / "elsewhere" / "b", tiny_data, b"weights"))
    # the settings do name each place's files (the runs need them) ...
    assert a.specs[BASELINE].settings["shipped_weights"] != b.specs[BASELINE].settings["shipped_weights"]
    assert a.specs[ADABN].settings["adapt_bn_on"] != b.specs[ADABN].settings["adapt_bn_on"]
    # ... the fingerprints do not
    assert set(a.specs) >= {BASELINE, ADABN, "train/first/siemens_15_to_ge_3/5slices"}
    assert _fingerprints(a) == _fingerprints(b)


def test_a_moved_checkout_keeps_its_finished_cells(tiny_data, tmp_path):
    before = _plan(_make_place(tmp_path / "a", tiny_data, b"weights"))
    for spec in before.specs.values():  # every cell finished
        Path(spec.cell_dir).mkdir(parents=True)
        (Path(spec.cell_dir) / DONE).write_text(json.dumps({"fingerprint": spec.fingerprint}))
    shutil.move(tmp_path / "a", tmp_path / "moved")
    after = _plan(tmp_path / "moved")  # refuses an output folder of finished cells made otherwise
    assert all(after.is_done(cell_id) for cell_id in after.specs)


def test_other_weights_content_changes_the_fingerprint(tiny_data, tmp_path):
    a = _plan(_make_place(tmp_path / "a", tiny_data, b"weights"))
    b = _plan(_make_place(tmp_path / "b", tiny_data, b"other weights"))
    assert a.specs[BASELINE].fingerprint != b.specs[BASELINE].fingerprint
    assert a.specs[BASELINE].settings["sha256"] != b.specs[BASELINE].settings["sha256"]


def test_evaluations_share_one_preprocessing_cache_that_the_fingerprint_ignores(tiny_data, tmp_path):
    root = _make_place(tmp_path / "a", tiny_data, b"weights")
    cached = _plan(root)
    profile = replace(TINY, strategies=("first", "adabn"),
                      source_models={"siemens_15": str(root / "checkout" / "custom" / "resources" / "source.pt")})
    uncached = plan(profile, root / "data", root / "out", bundles_dir=root / "checkout" / "bundles",
                    cache_preprocessing=False)
    for cell_id, spec in cached.specs.items():
        expected = str(root / "out" / "cache" / "preprocessed") if spec.cell.kind == "eval" else None
        assert spec.paths.get("cache_dir") == expected, cell_id
        assert "cache_dir" not in uncached.specs[cell_id].paths
    assert _fingerprints(cached) == _fingerprints(uncached)  # the same results either way
