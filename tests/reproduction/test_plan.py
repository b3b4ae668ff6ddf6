"""custom.reproduction.plan and .spec: every cell's overrides, datalist and fingerprint, decided before any write."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from pathlib import Path

import pytest

from custom.reproduction.plan import plan
from custom.reproduction.selection import UsageError
from tests.reproduction.tiny import CELLS, TINY


def test_plan_writes_nothing_and_fixes_each_cells_overrides(tiny_data, tmp_path):
    out = tmp_path / "out"
    p = plan(TINY, tiny_data, out)
    assert not out.exists()
    assert [c.id for c in p.grid] == CELLS
    ft = p.specs["train/first/siemens_15_to_ge_3/5slices"]
    assert ft.bundle == "brain_extraction_first_layers"
    assert ft.settings["slice_interval"] == 48 and ft.settings["spacing"] == [4.0, 3.8, 3.8]
    assert ft.paths["init_weights"] == ft.paths["source_weights"]
    assert ft.paths["init_weights"].endswith("cells/train/baseline/siemens_15/model.pt")
    ev = p.specs["eval/last/siemens_15_to_ge_3/5slices"]
    assert ev.paths["model_path"].endswith("cells/train/last/siemens_15_to_ge_3/5slices/model.pt")
    assert [Path(f).name for f in ev.config_files] == ["inference.yaml", "evaluate.yaml"]
    assert len(ev.datalist["test"]) == 1 and ev.datalist["test"][0]["domain"] == "ge_3"
    base_eval = p.specs["eval/baseline/siemens_15/ge_3"]
    assert {e["domain"] for e in base_eval.datalist["test"]} == {"ge_3"} and len(base_eval.datalist["test"]) == 2
    own = p.specs["eval/baseline/siemens_15/siemens_15"].datalist
    assert own["test"] == own["validation"] and len(own["test"]) == 1 and own["test"][0]["domain"] == "siemens_15"
    assert own["test"][0]["id"] not in {e["id"] for e in own["training"]}
    # the same plan twice: the same fingerprints; other settings: others
    again = plan(TINY, tiny_data, out)
    assert {k: v.fingerprint for k, v in again.specs.items()} == {k: v.fingerprint for k, v in p.specs.items()}
    other = plan(replace(TINY, finetune={**TINY.finetune, "batch_size": 4}), tiny_data, out)
    base = "train/baseline/siemens_15"
    assert other.specs[base].fingerprint == p.specs[base].fingerprint
    assert other.specs[ft.cell.id].fingerprint != ft.fingerprint


def test_plan_rejects_impossible_splits(tiny_data, tmp_path):
    with pytest.raises(UsageError, match="n_target_scans"):
        plan(TINY, tiny_data, tmp_path / "out", budgets=(540,))  # 2 annotated scans of a 2-scan domain
    with pytest.raises(UsageError, match="does not exist"):
        plan(TINY, tmp_path / "nowhere", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cell_specs_pickle_and_plan_json_records_all_but_the_datalist(tiny_data, tmp_path):
    """Specs travel to spawned workers and Ray tasks by pickle; plan.json holds every field but the datalist."""
    p = plan(TINY, tiny_data, tmp_path / "out")
    for spec in p.specs.values():
        assert pickle.loads(pickle.dumps(spec)) == spec
    record = p.specs[CELLS[3]].plan_record()
    assert list(record) == ["cell", "bundle", "config_files", "meta_file", "workflow_type", "cell_dir", "settings",
                            "paths", "fingerprint", "profile", "seed", "split_seed", "threads"]
    assert record["cell"] == {"kind": "train", "role": "first", "source": "siemens_15", "target": "ge_3",
                              "n_slices": 5, "fold": None, "id": CELLS[3], "deps": [CELLS[0]]}
    assert json.loads(json.dumps(record))["config_files"] == list(p.specs[CELLS[3]].config_files)
