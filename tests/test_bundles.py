"""Model-zoo checks for all four bundles, and their train / evaluate / inference workflows on tiny real data."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export, verify_net_in_out

from custom.adapters import AdapterError, apply_adapter
from tests.bundle_utils import (
    ALL_BUNDLES,
    CHECKED_BUNDLES,
    FAST,
    FINETUNE,
    SCHEMA,
    SOURCE,
    SPOTTUNE,
    copy_bundle,
    datalist,
    run_workflow,
    tiny_dataset,
)
from tests.bundle_utils import (
    BUNDLES as BUNDLES_DIR,
)

REQUIRED = [
    "LICENSE", "configs/metadata.json", "configs/train.yaml", "configs/evaluate.yaml", "configs/inference.yaml",
    "configs/multi_gpu_train.yaml", "configs/logging.conf", "docs/README.md", "models/model.pt",
]
IDS = [b.name for b in CHECKED_BUNDLES]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("demo") / "data")


@pytest.fixture(scope="module")
def trained_source(tmp_path_factory, data):
    """A source model trained by the source bundle's own train workflow (2 epochs, coarse)."""
    work = tmp_path_factory.mktemp("source")
    bundle = copy_bundle(SOURCE, work)
    dl = datalist(data, work / "one2all.json", n_train=1)
    workflow = run_workflow([bundle / "configs/train.yaml"], bundle, "train", dataset_dir=str(data),
                            datalist_file=str(dl), output_dir=str(work / "run"), max_epochs=2, val_interval=1, **FAST)
    return {"bundle": bundle, "model": bundle / "models/model.pt", "run": work / "run", "workflow": workflow,
            "datalist": dl}


# ---- model-zoo static checks --------------------------------------------------------------------------------

@pytest.mark.parametrize("bundle", CHECKED_BUNDLES, ids=IDS)
def test_required_files(bundle):
    missing = [f for f in REQUIRED if not (bundle / f).is_file()]
    assert not missing


@pytest.mark.parametrize("bundle", CHECKED_BUNDLES, ids=IDS)
def test_version_has_a_changelog_entry(bundle):
    meta = json.loads((bundle / "configs/metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    versions = [tuple(int(x) for x in v.split(".")) for v in meta["changelog"]]
    assert tuple(int(x) for x in meta["version"].split(".")) == max(versions)
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "brain"}
    assert set(meta["network_data_format"]["inputs"]) == {"image"}


@pytest.mark.parametrize("bundle", CHECKED_BUNDLES, ids=IDS)
def test_verify_metadata_offline(bundle):
    out = subprocess.run([sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file",
                          str(bundle / "configs/metadata.json"), "--filepath", str(SCHEMA)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "metadata is verified with no error" in out.stdout + out.stderr


@pytest.mark.parametrize("bundle", CHECKED_BUNDLES, ids=IDS)
def test_verify_net_in_out(bundle):
    verify_net_in_out(net_id="network_def", meta_file=str(bundle / "configs/metadata.json"),
                      config_file=str(bundle / "configs/inference.yaml"), n=4, device="cpu", bundle_root=str(bundle))


@pytest.mark.parametrize("bundle", CHECKED_BUNDLES, ids=IDS)
def test_ckpt_export_torchscript_matches_eager(bundle, tmp_path):
    ts = tmp_path / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(ts), ckpt_file=str(bundle / "models/model.pt"),
                meta_file=str(bundle / "configs/metadata.json"), config_file=str(bundle / "configs/inference.yaml"),
                bundle_root=str(bundle))
    scripted = torch.jit.load(str(ts))
    net = ConfigParser.load_config_file(str(bundle / "configs/inference.yaml"))["network_def"]
    eager = ConfigParser({"n": net}).get_parsed_content("n")
    eager.load_state_dict(torch.load(bundle / "models/model.pt", weights_only=True))
    x = torch.rand(2, 1, 64, 72)
    torch.testing.assert_close(scripted.eval()(x), eager.eval()(x))


# ---- one definition of each thing -------------------------------------------------------------------------

def _parsed(bundle, config, key, **override):
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / config))
    parser.update({"bundle_root": str(bundle), **override})
    return parser.get_parsed_content(key)


def test_all_bundles_build_identical_networks_and_preprocessing(data):
    image = sorted((data / "Original").glob("*.nii.gz"))[0]
    reference_state, reference_image = None, None
    for bundle in ALL_BUNDLES:  # the SpotTUnet bundle holds two copies and a policy (tests/test_spottune.py)
        for config in ("train.yaml", "inference.yaml"):
            torch.manual_seed(0)
            net = _parsed(bundle, config, "network_def")
            state = {k: v.shape for k, v in net.state_dict().items()}
            pre = _parsed(bundle, config, "preprocessing", spacing=FAST["spacing"])
            out = pre({"image": str(image), "label": str(image).replace("Original", "Silver-standard").replace(
                ".nii.gz", "_ss.nii.gz")} if config == "train.yaml" else {"image": str(image)})["image"]
            if reference_state is None:
                reference_state, reference_image = state, out
            assert state == reference_state, f"{bundle.name}/{config}"
            torch.testing.assert_close(out.as_tensor(), reference_image.as_tensor())


@pytest.mark.parametrize("bundle", [*FINETUNE.values(), SPOTTUNE], ids=lambda b: b.name)
def test_n_target_scans_is_the_budgets_scans_and_picks_the_training_scans(bundle, data):
    assert _parsed(bundle, "train.yaml", "n_target_scans") == 1  # the default 24 slices: 1 scan, every 12th slice
    assert _parsed(bundle, "train.yaml", "n_target_scans", n_slices=540) == 2
    dl = _parsed(bundle, "train.yaml", "datalist", dataset_dir=str(data), n_target_scans=1, slice_interval=3)
    assert len(dl["training"]) == 1 and {e["domain"] for e in dl["training"]} == {"ge_3"}
    assert dl["slice_interval"] == 3


@pytest.mark.parametrize("config, workflow_type", [("train.yaml", "train"), ("inference.yaml", "infer")])
@pytest.mark.parametrize("num_threads, expected", [(1, 1), (0, 2)])
def test_num_threads_option(config, workflow_type, num_threads, expected):
    """--num_threads N sets torch's CPU threads before anything runs; 0 leaves torch's setting alone."""
    from monai.bundle import ConfigWorkflow

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        workflow = ConfigWorkflow(config_file=str(SOURCE / "configs" / config), workflow_type=workflow_type,
                                  meta_file=str(SOURCE / "configs/metadata.json"), logging_file=False,
                                  bundle_root=str(SOURCE), num_threads=num_threads)
        workflow.initialize()
        assert torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(before)


def test_bundles_are_generated_files_without_links():
    """Every shared file is a real, up-to-date copy of its one definition (scripts/sync_bundles.py)."""
    from scripts import sync_bundles

    assert not [p for p in BUNDLES_DIR.rglob("*") if p.is_symlink()]
    assert sync_bundles.stale() == []
    for bundle in FINETUNE.values():
        assert (bundle / "models/source_model.pt").read_bytes() == (SOURCE / "models/model.pt").read_bytes()


def test_finetune_bundles_differ_only_in_strategy():
    texts = {k: (b / "configs/train.yaml").read_text().splitlines() for k, b in FINETUNE.items()}
    for strategy, lines in texts.items():
        diff = [(a, b) for a, b in zip(texts["first"], lines, strict=True) if a != b]
        expected = [] if strategy == "first" else [("strategy: first", f"strategy: {strategy}")]
        assert diff == expected


# ---- the workflows ------------------------------------------------------------------------------------------

def test_source_train_workflow(trained_source):
    state = torch.load(trained_source["model"], weights_only=True)
    assert "init_path.0.weight" in state
    assert list(trained_source["run"].glob("checkpoints/checkpoint_epoch=2.pt"))
    metrics = trained_source["workflow"].parser.get_parsed_content("validate#evaluator").state.metrics
    assert 0.0 <= metrics["val_surface_dice"] <= 1.0 and 0.0 <= metrics["val_dice"] <= 1.0


def test_inference_workflow_keeps_the_input_geometry(trained_source, data, tmp_path):
    bundle = trained_source["bundle"]
    inputs = tmp_path / "in"
    inputs.mkdir()
    for f in sorted((data / "Original").glob("*siemens_3*"))[:1] + sorted((data / "Original").glob("*ge_15*"))[:1]:
        (inputs / f.name).symlink_to(f)
    out = tmp_path / "out"
    run_workflow([bundle / "configs/inference.yaml"], bundle, "infer", dataset_dir=str(inputs),
                 output_dir=str(out), spacing=FAST["spacing"], save_stripped=True)
    for f in inputs.iterdir():
        stem = f.name[: -len(".nii.gz")]
        src, mask = nib.load(f), nib.load(out / f"{stem}_brainmask.nii.gz")
        stripped = nib.load(out / f"{stem}_stripped.nii.gz")
        assert mask.shape == src.shape and np.allclose(mask.affine, src.affine, atol=1e-4)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}
        m = np.asarray(mask.dataobj) > 0
        np.testing.assert_allclose(np.asarray(stripped.dataobj)[~m], 0)
        np.testing.assert_allclose(np.asarray(stripped.dataobj)[m], src.get_fdata()[m], rtol=1e-5)


def test_evaluate_workflow_writes_per_scan_metrics(trained_source, data, tmp_path):
    bundle = trained_source["bundle"]
    out = tmp_path / "eval"
    run_workflow([bundle / "configs/inference.yaml", bundle / "configs/evaluate.yaml"], bundle, "infer",
                 dataset_dir=str(data), datalist_file=str(trained_source["datalist"]), datalist_key="test",
                 output_dir=str(out), spacing=FAST["spacing"], save_masks=True)
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r["domain"] for r in rows] == ["ge_3", "ge_3"]
    assert all(0.0 <= float(r["surface_dice"]) <= 1.0 and 0.0 <= float(r["dice"]) <= 1.0 for r in rows)
    assert len(list(out.glob("*_brainmask.nii.gz"))) == 2


def test_evaluate_with_a_preprocessing_cache_gives_the_same_metrics_and_masks(trained_source, data, tmp_path):
    """--cache_dir: the first run fills it, the second reads it; both equal a run without it."""
    bundle = trained_source["bundle"]
    files = [bundle / "configs/inference.yaml", bundle / "configs/evaluate.yaml"]
    common = {"datalist_file": str(trained_source["datalist"]), "datalist_key": "test", "spacing": FAST["spacing"],
              "save_masks": True}
    cache = tmp_path / "cache"
    runs = {}
    for name, extra in (("plain", {}), ("filling", {"cache_dir": str(cache)}), ("reading", {"cache_dir": str(cache)})):
        run_workflow(files, bundle, "infer", output_dir=str(tmp_path / name), **common, **extra)
        runs[name] = tmp_path / name
        if name == "filling":
            stamps = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.pt")}
            assert len(stamps) == 2  # the two test scans
    assert {p.name: p.stat().st_mtime_ns for p in cache.glob("*.pt")} == stamps  # read, not written again
    metrics = {name: (out / "metrics.csv").read_text() for name, out in runs.items()}
    assert metrics["filling"] == metrics["plain"] and metrics["reading"] == metrics["plain"]
    for mask in sorted(runs["plain"].glob("*_brainmask.nii.gz")):
        expected = np.asarray(nib.load(mask).dataobj)
        for name in ("filling", "reading"):
            np.testing.assert_array_equal(np.asarray(nib.load(runs[name] / mask.name).dataobj), expected)


def test_evaluate_masks_of_equal_file_names_do_not_clash(trained_source, data, tmp_path):
    """Two scans named alike in different folders: --save_masks mirrors their folders instead of overwriting."""
    bundle = trained_source["bundle"]
    scans = json.loads(trained_source["datalist"].read_text())["test"][:2]
    for site, scan in zip(("site_a", "site_b"), scans, strict=True):
        for key in ("image", "label"):
            link = tmp_path / site / key / "scan.nii.gz"
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(scan[key])
            scan[key] = str(link)
    dl = tmp_path / "datalist.json"
    dl.write_text(json.dumps({"test": scans}))
    out = tmp_path / "eval"
    run_workflow([bundle / "configs/inference.yaml", bundle / "configs/evaluate.yaml"], bundle, "infer",
                 datalist_file=str(dl), output_dir=str(out), spacing=FAST["spacing"], save_masks=True)
    masks = sorted(str(p.relative_to(out)) for p in out.rglob("*_brainmask.nii.gz"))
    assert masks == ["site_a/image/scan_brainmask.nii.gz", "site_b/image/scan_brainmask.nii.gz"]


@pytest.mark.parametrize("bundle", CHECKED_BUNDLES, ids=IDS)
def test_inversion_never_sees_a_gpu_tensor(bundle):
    """MONAI inverts a cubic resampling of a CUDA tensor with cupy (not a dependency): the prediction moves to the
    CPU right before Invertd, so on a GPU server (MONAI Label too) that branch cannot be reached."""
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs/inference.yaml"))
    steps = parser["postprocessing"]["transforms"]
    names = [t["_target_"] for t in steps]
    before = steps[names.index("Invertd") - 1]
    assert before["_target_"] == "ToDeviced" and before["keys"] == "pred" and before["device"] == "cpu"
    assert names.count("Invertd") == 1


@pytest.mark.parametrize("bundle", CHECKED_BUNDLES, ids=IDS)
def test_tracking_mlflow_adds_monais_own_handlers(bundle, tmp_path):
    """``--tracking mlflow`` (MONAI's bundle runner) wires MLflow into training and validation, under output_dir."""
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(config_file=str(bundle / "configs/train.yaml"), workflow_type="train",
                              tracking="mlflow", bundle_root=str(bundle), output_dir=str(tmp_path / "run"))
    targets = lambda key: [h.get("_target_") for h in workflow.parser[key] if isinstance(h, dict)]  # noqa: E731
    assert targets("train#handlers").count("MLFlowHandler") == 1
    assert targets("validate#handlers").count("MLFlowHandler") == 1
    assert workflow.parser.get_parsed_content("tracking_uri").endswith(f"{tmp_path}/run/mlruns.db")


def _finetune(strategy, trained_source, data, tmp_path, **extra):
    bundle = copy_bundle(FINETUNE[strategy], tmp_path)
    model, adapter = tmp_path / "ft" / "model.pt", tmp_path / "ft" / "adapter.pt"
    run_workflow([bundle / "configs/train.yaml"], bundle, "train", dataset_dir=str(data),
                 datalist_file=str(trained_source["datalist"]), output_dir=str(tmp_path / "run"),
                 model_path=str(model), adapter_path=str(adapter), source_weights=str(trained_source["model"]),
                 init_weights=str(trained_source["model"]), max_epochs=1, lr_decay_epoch=1, slice_interval=4,
                 **{**FAST, **extra})
    return torch.load(model, weights_only=True), adapter


EXPECTED = {"first": ("init_path.0.", "init_path.2."), "last": ("out_path.",), "full": ("",)}


@pytest.mark.parametrize("strategy", ["first", "last", "full"])
def test_finetune_changes_exactly_the_strategys_parameters(strategy, trained_source, data, tmp_path):
    tuned, adapter = _finetune(strategy, trained_source, data, tmp_path)
    source = torch.load(trained_source["model"], weights_only=True)
    from custom.networks import UNet2D

    params = {n for n, _ in UNet2D().named_parameters()}
    changed = {k for k in params if not torch.equal(tuned[k], source[k])}
    should = {k for k in params if k.startswith(EXPECTED[strategy])}
    # biases whose every path leads into a BatchNorm get a zero gradient (BatchNorm removes the mean)
    into_batchnorm = {"out_path.1.layer.bias", "shortcut0.bias", "shortcut1.bias", "shortcut2.bias"}
    assert changed <= should
    assert should - changed <= into_batchnorm
    # BatchNorm statistics move everywhere by default (the paper: frozen layers still adapt their statistics)
    assert not torch.equal(tuned["down3.0.running_mean"], source["down3.0.running_mean"])
    # source + adapter == fine-tuned, bit for bit
    rebuilt = apply_adapter(trained_source["model"], adapter)
    assert all(torch.equal(rebuilt[k], tuned[k]) for k in tuned)
    if strategy == "first":
        assert adapter.stat().st_size < 100_000


def test_finetuning_starts_from_the_source_weights_unless_told_otherwise(trained_source, data, tmp_path):
    """The bundle's own (shipped) model.pt is NOT where a run starts; --init_weights picks another start."""
    bundle = copy_bundle(FINETUNE["last"], tmp_path)
    own = torch.load(bundle / "models/model.pt", weights_only=True)
    source = torch.load(trained_source["model"], weights_only=True)
    assert not torch.equal(own["init_path.0.weight"], source["init_path.0.weight"])
    for start, expected in ((None, source), (bundle / "models/model.pt", own)):
        out = tmp_path / ("default" if start is None else "continued")
        extra = {} if start is None else {"init_weights": str(start)}
        run_workflow([bundle / "configs/train.yaml"], bundle, "train", dataset_dir=str(data),
                     datalist_file=str(trained_source["datalist"]), output_dir=str(out),
                     model_path=str(out / "model.pt"), adapter_path=str(out / "adapter.pt"),
                     source_weights=str(trained_source["model"]), max_epochs=1, lr_decay_epoch=1, slice_interval=4,
                     **FAST, **extra)
        tuned = torch.load(out / "model.pt", weights_only=True)
        # "last" trains only out_path: every weight before it is the starting model's, untouched
        assert torch.equal(tuned["init_path.0.weight"], expected["init_path.0.weight"])
        assert torch.equal(tuned["up1.4.weight"], expected["up1.4.weight"])


def test_a_finetuning_bundle_copied_alone_trains_evaluates_and_infers(trained_source, data, tmp_path):
    bundle = copy_bundle(FINETUNE["last"], tmp_path / "alone")  # no sibling source bundle anywhere near it
    source = torch.load(bundle / "models/source_model.pt", weights_only=True)
    run_workflow([bundle / "configs/train.yaml"], bundle, "train", dataset_dir=str(data),
                 datalist_file=str(trained_source["datalist"]), output_dir=str(tmp_path / "run"), max_epochs=1,
                 lr_decay_epoch=1, slice_interval=4, **FAST)
    tuned = torch.load(bundle / "models/model.pt", weights_only=True)
    assert torch.equal(tuned["init_path.0.weight"], source["init_path.0.weight"])
    assert not torch.equal(tuned["out_path.1.layer.weight"], source["out_path.1.layer.weight"])
    run_workflow([bundle / "configs/inference.yaml", bundle / "configs/evaluate.yaml"], bundle, "infer",
                 datalist_file=str(trained_source["datalist"]), output_dir=str(tmp_path / "eval"),
                 spacing=FAST["spacing"])
    assert (tmp_path / "eval/metrics.csv").read_text().count("\n") == 1 + 2  # header + the 2 ge_3 test scans


def test_freeze_bn_stats_keeps_frozen_statistics(trained_source, data, tmp_path):
    tuned, _ = _finetune("last", trained_source, data, tmp_path, freeze_bn_stats=True)
    source = torch.load(trained_source["model"], weights_only=True)
    assert torch.equal(tuned["down3.0.running_mean"], source["down3.0.running_mean"])
    assert not torch.equal(tuned["out_path.2.running_mean"], source["out_path.2.running_mean"])


def test_adapter_refuses_other_source_weights(trained_source, data, tmp_path):
    _, adapter = _finetune("first", trained_source, data, tmp_path)
    other = tmp_path / "other.pt"
    state = torch.load(trained_source["model"], weights_only=True)
    state["shortcut0.bias"] = state["shortcut0.bias"] + 1
    torch.save(state, other)
    with pytest.raises(AdapterError, match="made for source weights with sha256"):
        apply_adapter(other, adapter)


@pytest.mark.slow
def test_multi_gpu_train_with_two_cpu_processes(trained_source, data, tmp_path):
    """multi_gpu_train.yaml through torchrun: two gloo processes, one final model, an adapter, synced weights;
    validation every epoch on 3 scans shared unevenly (2 + 1) between the processes."""
    bundle = copy_bundle(FINETUNE["first"], tmp_path)
    out = tmp_path / "ddp"
    dl = json.loads(trained_source["datalist"].read_text())
    dl["validation"] = dl["validation"] + dl["test"]
    assert len(dl["validation"]) == 3
    datalist_file = tmp_path / "ddp_datalist.json"
    datalist_file.write_text(json.dumps(dl))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
           "-m", "monai.bundle", "run", "--config_file",
           str([str(bundle / "configs/train.yaml"), str(bundle / "configs/multi_gpu_train.yaml")]),
           "--dataset_dir", str(data), "--datalist_file", str(datalist_file), "--output_dir", str(out),
           "--model_path", str(out / "model.pt"), "--adapter_path", str(out / "adapter.pt"),
           "--source_weights", str(trained_source["model"]), "--init_weights", str(trained_source["model"]),
           "--max_epochs", "2", "--lr_decay_epoch", "1", "--slice_interval", "4", "--iterations_per_epoch", "4",
           "--batch_size", "2", "--spacing", "[4.0,3.8,3.8]", "--roi_size", "[32,32]", "--val_interval", "1",
           "--precision", "fp32"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank, share in ((0, 2), (1, 1)):  # each process validated its own share of the scans
        assert f"validation: process {rank} of 2 validates {share} of the 3 scans" in proc.stdout + proc.stderr
    # validation ran after every epoch (all processes took part) and logged once, from the first process
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logged, writers = {}, 0
    for events in out.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if "val_surface_dice" in acc.Tags()["scalars"]:
            writers += 1
            logged.update({e.step: e.value for e in acc.Scalars("val_surface_dice")})
    assert sorted(logged) == [1, 2] and writers == 1
    # ... and its value is the single-process one: the final weights on the same validation scans
    single = tmp_path / "single.json"
    single.write_text(json.dumps({"test": dl["validation"]}))
    run_workflow([bundle / "configs/inference.yaml", bundle / "configs/evaluate.yaml"], bundle, "infer",
                 datalist_file=str(single), output_dir=str(tmp_path / "single"), model_path=str(out / "model.pt"),
                 spacing=FAST["spacing"], precision="fp32")
    with open(tmp_path / "single/metrics.csv") as f:
        expected = [float(r["surface_dice"]) for r in csv.DictReader(f)]
    assert len(expected) == 3
    assert logged[2] == pytest.approx(sum(expected) / len(expected), abs=1e-6)
    tuned = torch.load(out / "model.pt", weights_only=True)
    source = torch.load(trained_source["model"], weights_only=True)
    assert not torch.equal(tuned["init_path.0.weight"], source["init_path.0.weight"])
    assert torch.equal(tuned["down2.4.conv_path.0.layer.weight"], source["down2.4.conv_path.0.layer.weight"])
    assert all(torch.equal(v, t) for v, t in zip(apply_adapter(trained_source["model"], out / "adapter.pt").values(),
                                                  tuned.values(), strict=True))
