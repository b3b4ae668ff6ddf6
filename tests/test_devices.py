"""Devices: ``--compile true`` (torch.compile) on CPU with plain weight names, data-parallel validation shares, and
the GPU-only paths (cupy, cuCIM) that fall back to the CPU without the ``gpu`` extra."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import nibabel as nib
import pytest
import torch

from tests.bundle_utils import SOURCE, copy_bundle, run_workflow
from tests.corpus import SPACING, good_pair


@pytest.mark.slow
def test_compile_option_trains_and_infers_with_plain_weight_names(tmp_path):
    """--compile true: the engines run torch.compile'd networks; model.pt and checkpoints keep plain names."""
    from torch._dynamo.eval_frame import OptimizedModule

    bundle = copy_bundle(SOURCE, tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    pairs = [good_pair(data, name) for name in ("a", "b")]
    datalist = tmp_path / "datalist.json"
    entry = lambda p: {"image": str(p[0]), "label": str(p[1])}  # noqa: E731
    datalist.write_text(json.dumps({"training": [entry(pairs[0])], "validation": [entry(pairs[1])]}))
    model = tmp_path / "model.pt"
    train = run_workflow([bundle / "configs/train.yaml"], bundle, "train", datalist_file=str(datalist),
                         output_dir=str(tmp_path / "run"), model_path=str(model), compile=True, max_epochs=1,
                         val_interval=1, iterations_per_epoch=1, batch_size=2, roi_size=[32, 32],
                         spacing=list(SPACING), precision="fp32", num_threads=1)
    trainer = train.parser.get_parsed_content("train#trainer")
    evaluator = train.parser.get_parsed_content("validate#evaluator")
    assert isinstance(trainer.network, OptimizedModule) and isinstance(evaluator.network, OptimizedModule)
    assert 0.0 <= evaluator.state.metrics["val_surface_dice"] <= 1.0  # validation ran through the compiled network
    plain = set(train.parser.get_parsed_content("network_def").state_dict())
    assert set(torch.load(model, weights_only=True)) == plain
    checkpoint = torch.load(next((tmp_path / "run/checkpoints").glob("checkpoint_epoch=*.pt")), weights_only=True)
    assert set(checkpoint["model"]) == plain

    out = tmp_path / "masks"
    infer = run_workflow([bundle / "configs/inference.yaml"], bundle, "infer", dataset_dir=str(pairs[0][0]),
                         output_dir=str(out), model_path=str(model), compile="true", spacing=list(SPACING),
                         precision="fp32", num_threads=1)
    assert isinstance(infer.parser.get_parsed_content("evaluator").network, OptimizedModule)
    mask = nib.load(out / "a_image_brainmask.nii.gz")
    assert mask.shape == nib.load(pairs[0][0]).shape


@pytest.mark.parametrize("config", ["train.yaml", "inference.yaml"])
def test_compile_is_off_by_default(config):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(SOURCE / "configs" / config))
    assert parser["compile"] is False
    engines = ["train#trainer", "validate#evaluator"] if config == "train.yaml" else ["evaluator"]
    assert all(parser[f"{e}#compile"] == "$custom.options.flag(@compile)" for e in engines)


# ---- data-parallel validation --------------------------------------------------------------------------------

@pytest.mark.parametrize("n_scans, shares", [(3, [[0, 2], [1]]), (4, [[0, 2], [1, 3]]), (1, None)])
def test_validation_sampler_shares_the_scans_without_repeats(n_scans, shares):
    """Two processes: scans r, r + 2, ... each, nothing repeated; fewer scans than processes: all on each."""
    from custom.data import validation_sampler

    dataset = list(range(n_scans))
    samplers = [validation_sampler(dataset, num_replicas=2, rank=r) for r in (0, 1)]
    if shares is None:
        assert samplers == [None, None]
    else:
        assert [list(s) for s in samplers] == shares
    assert validation_sampler(dataset) is None  # no process group: one process validates everything


def test_multi_gpu_train_shares_validation_between_processes():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(SOURCE / "configs" / f) for f in ("train.yaml", "multi_gpu_train.yaml")])
    assert parser["validate#dataloader#sampler"] == "@validate#sampler"
    assert parser["validate#sampler"] == "$custom.data.validation_sampler(@validate#dataset)"


# ---- without the gpu extra (cupy, cuCIM) ---------------------------------------------------------------------

GPU_EXTRA_MODULES = ("cupy", "cucim", "cucim.core", "cucim.core.operations", "cucim.core.operations.morphology")


def _masks():
    target = torch.zeros(20, 24, 16, dtype=torch.bool)
    target[4:15, 5:19, 3:12] = True
    pred = torch.roll(target, shifts=(1, -2, 1), dims=(0, 1, 2))
    pred[10:13, 8:10, 5:7] = False
    return pred, target


def test_cuda_masks_without_cucim_take_the_cpu_distance_transform(monkeypatch):
    """With cupy and cuCIM missing (simulated), surface Dice of CUDA masks runs the CPU path; with them, the GPU."""
    from custom import metrics

    cuda_masks = SimpleNamespace(device=torch.device("cuda"))
    for name in GPU_EXTRA_MODULES:
        monkeypatch.setitem(sys.modules, name, None)  # `import cupy` now raises ImportError
    assert metrics._has_cucim() is False
    assert metrics._gpu_distance_transform(cuda_masks) is False
    monkeypatch.setattr(metrics, "_has_cucim", lambda: True)
    assert metrics._gpu_distance_transform(cuda_masks) is True
    assert metrics._gpu_distance_transform(torch.zeros(2, dtype=torch.bool)) is False  # CPU masks: always the CPU


def test_gpu_distance_transform_branch_gives_the_cpu_value(monkeypatch):
    """The GPU branch forced on CPU masks (MONAI's transform, scipy underneath) gives the CPU branch's value."""
    from custom import metrics

    pred, target = _masks()
    spacing = (1.2, 0.9, 2.0)
    cpu = metrics.surface_dice(pred, target, spacing, tolerance=1.0)
    calls = []

    def forced(features):
        calls.append(features.shape)
        return True

    monkeypatch.setattr(metrics, "_gpu_distance_transform", forced)
    gpu_branch = metrics.surface_dice(pred, target, spacing, tolerance=1.0)
    assert len(calls) == 2  # both directions took the branch
    assert 0.0 < cpu < 1.0 and gpu_branch == pytest.approx(cpu, abs=1e-9)


@pytest.mark.parametrize("configs, key", [
    (["inference.yaml"], "postprocessing"),
    (["inference.yaml", "evaluate.yaml"], "postprocessing"),
    (["train.yaml"], "validate#postprocessing"),
    (["train.yaml"], "postprocessing"),
])
def test_every_inversion_runs_on_the_cpu(configs, key):
    """A cubic-spline inversion of a CUDA tensor would need cupy: in every postprocessing of every bundle, each
    Invertd comes right after a ToDeviced of the same key to the CPU."""
    from monai.bundle import ConfigParser

    from tests.bundle_utils import ALL_BUNDLES

    for bundle in ALL_BUNDLES:
        parser = ConfigParser()
        parser.read_config([str(bundle / "configs" / c) for c in configs])
        chain = parser[key]
        while isinstance(chain, str) and chain.startswith("@"):  # validate#postprocessing: "@postprocessing"
            chain = parser[chain[1:]]
        steps = chain["transforms"]
        for i, step in enumerate(steps):
            if step["_target_"] == "Invertd":
                before = steps[i - 1]
                assert i > 0 and before["_target_"] == "ToDeviced" and before["device"] == "cpu", bundle.name
                assert before["keys"] == step["keys"], bundle.name
        assert key != "postprocessing" or configs != ["inference.yaml"] or \
            any(s["_target_"] == "Invertd" for s in steps)  # inference does invert (the check above is not vacuous)
