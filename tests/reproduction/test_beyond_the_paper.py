"""The strategies beyond the paper in the grid: the layer-wise sweep, SpotTUnet and the label-free AdaBN and
histogram matching, run end to end on tiny data with their tables and figures."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import pytest

from custom.freeze import block_depths, blocks, trainable_parameter_count
from custom.reproduction.grid import (
    LABEL_FREE,
    Cell,
    all_strategies,
    build_grid,
    freeze_strategy,
    is_finetuning,
    sweep_strategies,
)
from custom.reproduction.plan import plan
from custom.reproduction.run import run
from custom.reproduction.selection import UsageError, resolve_selection
from tests.reproduction.tiny import TINY

BEYOND = replace(TINY, spottune=TINY.finetune, strategies=("first", "spottune", "adabn", "histmatch", "down1",
                                                             "upto_down1"))


def test_sweep_strategies_are_the_blocks_and_their_prefixes():
    names = blocks()
    assert sweep_strategies()[: len(names)] == tuple(names)
    assert sweep_strategies()[len(names):] == tuple(f"upto_{b}" for b in names[1:-1])
    assert freeze_strategy("down2") == "down2"
    assert freeze_strategy("upto_down2") == "init_path,down1,down2"
    with pytest.raises(ValueError, match="unknown block 'down9'"):
        freeze_strategy("upto_down9")
    assert not is_finetuning("adabn") and is_finetuning("spottune") and is_finetuning("down1")


def test_selection_and_grid_of_the_new_strategies():
    sel = resolve_selection(TINY, strategies="first", sweep=True)
    assert sel.strategies == ("first", *sweep_strategies())
    assert resolve_selection(TINY, sweep=True).strategies == sweep_strategies()
    with pytest.raises(UsageError, match="unknown strategy 'down9'.*upto_down1"):
        resolve_selection(TINY, strategies="down9")
    with pytest.raises(UsageError, match="--sweep must be true or false"):
        resolve_selection(TINY, sweep="yes")
    grid = build_grid(["siemens_15"], ["ge_3"], BEYOND.strategies, (5, 24))
    label_free = [c for c in grid if c.role in LABEL_FREE]
    assert [c.id for c in label_free] == ["eval/adabn/siemens_15_to_ge_3", "eval/histmatch/siemens_15_to_ge_3"]
    assert all(c.deps == ("train/baseline/siemens_15",) for c in label_free)
    assert Cell("train", "upto_down1", "siemens_15", "ge_3", 24) in grid
    assert sum(c.role == "spottune" for c in grid) == 4  # a training and an evaluation per budget
    assert set(all_strategies()) >= {"first", "last", "full", "spottune", "adabn", "histmatch", *sweep_strategies()}


def test_beyond_the_paper_end_to_end(tiny_data, tmp_path):
    out = tmp_path / "run"
    p = plan(BEYOND, tiny_data, out)
    bundles = {c.id: p.specs[c.id].bundle for c in p.grid}
    assert bundles["train/spottune/siemens_15_to_ge_3/5slices"] == "brain_extraction_spottune"
    assert bundles["train/down1/siemens_15_to_ge_3/5slices"] == "brain_extraction_full"
    assert bundles["eval/adabn/siemens_15_to_ge_3"] == "brain_extraction_source"
    adabn = p.specs["eval/adabn/siemens_15_to_ge_3"]
    assert adabn.settings["adapt_bn_on"] == [e["image"] for e in adabn.datalist["test"]]
    assert adabn.paths["model_path"].endswith("cells/train/baseline/siemens_15/model.pt")
    histmatch = p.specs["eval/histmatch/siemens_15_to_ge_3"]
    assert histmatch.reference_scans == tuple(e["image"] for e in histmatch.datalist["training"])

    outcome, text = run(p, progress=False, threads=1)
    assert not outcome.failed and not outcome.blocked, outcome

    def record(cell_id):
        return json.loads((out / "cells" / cell_id / "done.json").read_text())

    assert record("train/down1/siemens_15_to_ge_3/5slices")["effective"]["strategy"] == "down1"
    assert record("train/upto_down1/siemens_15_to_ge_3/5slices")["effective"]["strategy"] == "init_path,down1"
    assert (out / "cells/eval/adabn/siemens_15_to_ge_3/adabn_adapter.pt").is_file()
    assert record("eval/histmatch/siemens_15_to_ge_3")["histogram_reference_scans"] == len(histmatch.reference_scans)
    reference = json.loads((out / "cells/eval/histmatch/siemens_15_to_ge_3/histogram_reference.json").read_text())
    assert reference["format"].startswith("brain-extraction-histogram")
    usage = record("eval/spottune/siemens_15_to_ge_3/5slices")["policy_usage"]
    assert usage["n_slices"] > 0 and list(usage["tuned_share"])[0] == "init_path.0"
    assert all(0.0 <= v <= 1.0 for v in usage["tuned_share"].values())

    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    adabn_rows = [r for r in rows if r["strategy"] == "adabn"]
    assert adabn_rows and all(r["n_slices"] == "" for r in adabn_rows)  # one evaluation per pair, no budget
    base_ids = {r["id"] for r in rows if r["strategy"] == "baseline" and r["target"] == "ge_3"}
    assert {r["id"] for r in adabn_rows} == base_ids

    means = text[text.index("## Mean surface Dice"):text.index("## Wins")]
    for name in ("AdaBN (no annotations)", "histogram matching (no annotations)", "SpotTUnet (learned blocks)",
                 "block down1", "blocks init_path..down1"):
        line = next(line for line in means.splitlines() if line.startswith(f"| {name} |"))
        assert float(line.split("|")[2]) >= 0.0  # a number at the 5-slice budget, not a dash
    assert "## Layer-wise sweep" in text and "## SpotTUnet: the blocks its policy fine-tunes" in text

    with open(out / "sweep.csv", newline="") as f:
        sweep = {r["strategy"]: r for r in csv.DictReader(f)}
    assert set(sweep) == {"down1", "upto_down1"}
    assert int(sweep["down1"]["depth"]) == block_depths()["down1"] == int(sweep["upto_down1"]["depth"])
    assert int(sweep["down1"]["trainable_parameters"]) == trainable_parameter_count(None, "down1")
    assert int(sweep["upto_down1"]["trainable_parameters"]) == trainable_parameter_count(None, "init_path,down1")
    assert 0.0 <= float(sweep["down1"]["sdice_5"]) <= 1.0
    for name in ("sweep.png", "spottune_policy.png", "sdice_vs_slices.png"):
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 2000
