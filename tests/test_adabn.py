"""AdaBN: only the BatchNorm statistics move, they are the cumulative batch averages, they round-trip as an adapter,
and the inference bundle's ``--adapt_bn_on`` / ``--bn_adapter`` work on a real command line."""

from __future__ import annotations

import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from custom.adabn import ADAPTER_NAME, BatchNormAdaptation, adapt_batchnorm, batchnorm_layers, save_bn_adapter
from custom.adapters import AdapterError, load_adapted
from custom.cc359 import index_dataset
from custom.checkpoints import load_into, sha256
from custom.networks import UNet2D
from tests.bundle_utils import FAST, SOURCE, tiny_dataset


def _volumes(seed=0, n=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 32, 24, 9, generator=g) * 3 + 2 for _ in range(n)]  # far from the init's (0, 1) stats


def test_adabn_changes_only_batchnorm_buffers():
    torch.manual_seed(0)
    net = UNet2D()
    params = {n: p.detach().clone() for n, p in net.named_parameters()}
    before = {n: b.clone() for n, b in net.named_buffers()}
    momenta = {n: m.momentum for n, m in batchnorm_layers(net).items()}
    adapt_batchnorm(net, _volumes(), batch_size=4)
    assert all(torch.equal(p, params[n]) for n, p in net.named_parameters())
    stats = [n for n in before if n.endswith(("running_mean", "running_var"))]
    assert len(stats) == 2 * len(batchnorm_layers(net)) > 0
    assert all(not torch.equal(before[n], dict(net.named_buffers())[n]) for n in stats)
    assert set(before) == set(stats) | {n for n in before if n.endswith("num_batches_tracked")}
    assert {n: m.momentum for n, m in batchnorm_layers(net).items()} == momenta
    assert not net.training
    assert all(not p.requires_grad or p.grad is None for p in net.parameters())


def test_statistics_are_the_cumulative_average_over_all_slices():
    net = nn.Sequential(nn.BatchNorm2d(1))
    volume = torch.arange(2 * 3 * 10, dtype=torch.float32).reshape(1, 2, 3, 10)  # 10 slices of 2 x 3
    adapt_batchnorm(net, [{"image": volume}], batch_size=4)  # batches of 4, 4, 2 slices
    slices = volume.movedim(-1, 0)
    batches = [slices[0:4], slices[4:8], slices[8:10]]
    bn = net[0]
    assert torch.allclose(bn.running_mean, torch.stack([b.mean() for b in batches]).mean().reshape(1))
    assert torch.allclose(bn.running_var, torch.stack([b.var(unbiased=True) for b in batches]).mean().reshape(1))
    assert int(bn.num_batches_tracked) == 3


def test_a_lone_last_slice_joins_the_batch_before_it():
    net = nn.Sequential(nn.BatchNorm2d(1))
    adapt_batchnorm(net, [torch.rand(1, 1, 1, 5)], batch_size=4)  # 1x1 slices: a batch of 1 could not normalise
    assert int(net[0].num_batches_tracked) == 1


def test_no_volumes_or_no_batchnorm_is_an_error():
    with pytest.raises(ValueError, match="no slices"):
        adapt_batchnorm(UNet2D(), [])
    with pytest.raises(ValueError, match="no BatchNorm"):
        adapt_batchnorm(nn.Conv2d(1, 1, 1), _volumes())


def test_adapter_round_trips_and_holds_only_batchnorm_buffers(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "model.pt"
    torch.save(UNet2D().state_dict(), weights)
    net = load_into(UNet2D(), weights)
    adapt_batchnorm(net, _volumes(), batch_size=4)
    adapter = save_bn_adapter(net, weights, tmp_path / "adabn.pt")
    saved = torch.load(adapter, weights_only=True)
    assert saved["strategy"] == "adabn" and saved["source_sha256"] == sha256(weights)
    bn_names = {f"{n}.{b}" for n in batchnorm_layers(net) for b in ("running_mean", "running_var",
                                                                   "num_batches_tracked")}
    assert set(saved["state"]) == bn_names
    assert adapter.stat().st_size < 50_000
    reuse = BatchNormAdaptation(adapter=adapter)
    for loaded in (load_adapted(UNet2D(), weights, adapter), reuse(load_into(UNet2D(), weights), weights)):
        assert all(torch.equal(v, net.state_dict()[k]) for k, v in loaded.state_dict().items())
    other = tmp_path / "other.pt"
    torch.save(UNet2D().state_dict(), other)
    with pytest.raises(AdapterError, match="made for source weights with sha256"):
        reuse(load_into(UNet2D(), other), other)
    with pytest.raises(AdapterError, match="not both"):
        BatchNormAdaptation(adapt_on=tmp_path, adapter=adapter)
    untouched = load_into(UNet2D(), weights)
    assert BatchNormAdaptation()(untouched, weights) is untouched
    assert all(torch.equal(v, torch.load(weights)[k]) for k, v in untouched.state_dict().items())


# ---- the inference bundle's command line --------------------------------------------------------------------

def _run(tmp_path, *args):
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(SOURCE / "configs/inference.yaml"),
           "--spacing", str(FAST["spacing"]).replace(" ", ""), "--precision", "fp32", "--num_threads", "1", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("adabn")
    scans = [s for s in index_dataset(tiny_dataset(root / "data")) if s.domain == "ge_3"]
    (root / "target").mkdir()
    (root / "unlabeled").mkdir()
    shutil.copy(scans[0].image, root / "target" / "scan.nii.gz")
    for i, s in enumerate(scans):
        shutil.copy(s.image, root / "unlabeled" / f"u{i}.nii.gz")
    return root


def test_adapt_bn_on_writes_a_reusable_adapter(folders, tmp_path):
    adapted = _run(tmp_path, "--dataset_dir", str(folders / "target"), "--output_dir", str(tmp_path / "a"),
                   "--adapt_bn_on", str(folders / "unlabeled"))
    assert adapted.returncode == 0, adapted.stderr[-3000:]
    adapter = tmp_path / "a" / ADAPTER_NAME
    saved = torch.load(adapter, weights_only=True)
    assert saved["source_sha256"] == sha256(SOURCE / "models/model.pt")
    source = torch.load(SOURCE / "models/model.pt", weights_only=True)
    assert not torch.equal(saved["state"]["down3.0.running_mean"], source["down3.0.running_mean"])
    assert "AdaBN: re-estimated" in adapted.stdout + adapted.stderr

    reused = _run(tmp_path, "--dataset_dir", str(folders / "target"), "--output_dir", str(tmp_path / "b"),
                  "--bn_adapter", str(adapter))
    assert reused.returncode == 0, reused.stderr[-3000:]
    mask = lambda out: np.asarray(nib.load(out / "scan_brainmask.nii.gz").dataobj)  # noqa: E731
    assert np.array_equal(mask(tmp_path / "a"), mask(tmp_path / "b"))
    assert not (tmp_path / "b" / ADAPTER_NAME).exists()  # nothing new to share


@pytest.mark.parametrize("problem", ["missing", "empty", "no_volumes"])
def test_a_bad_unlabeled_folder_is_one_line_and_writes_nothing(problem, folders, tmp_path):
    bad = tmp_path / "unlabeled"
    if problem != "missing":
        bad.mkdir()
    if problem == "no_volumes":
        (bad / "notes.txt").write_text("not a scan")
    out = tmp_path / "out"
    proc = _run(tmp_path, "--dataset_dir", str(folders / "target"), "--output_dir", str(out), "--adapt_bn_on", str(bad))
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {bad}: ") and last.endswith("(the --adapt_bn_on folder of unlabeled scans)")
    assert "Traceback" not in proc.stdout + proc.stderr and " - ERROR - " not in proc.stdout + proc.stderr
    assert not out.exists()


def test_adapt_on_a_list_of_scans_equals_adapting_on_their_folder(folders, tmp_path):
    from custom.transforms import InputError, preprocessing

    steps = preprocessing(keys=["image"], spacing=FAST["spacing"])
    files = sorted(str(p) for p in (folders / "unlabeled").glob("*.nii.gz"))

    def adapted(adapt_on):
        torch.manual_seed(0)
        return BatchNormAdaptation(adapt_on, preprocessing=steps)(UNet2D(), "unused.pt").state_dict()

    by_folder, by_list = adapted(str(folders / "unlabeled")), adapted(files)
    assert all(torch.equal(by_folder[k], by_list[k]) for k in by_folder)
    missing = str(tmp_path / "gone.nii.gz")
    with pytest.raises(InputError, match=f"^{missing}: no such scan \\(the --adapt_bn_on unlabeled scans\\)$"):
        adapted([*files, missing])
