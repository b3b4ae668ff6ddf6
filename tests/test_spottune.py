"""SpotTUnet: forced policies equal the source U-Net, gradients reach only the fine-tuned copies and the policy, the
Gumbel-softmax is reproducible, and the bundle trains, evaluates and infers through `python -m monai.bundle run`."""

from __future__ import annotations

import csv
import re
import subprocess
import sys

import pytest
import torch

from custom.adapters import AdapterError, apply_adapter
from custom.networks import UNet2D
from custom.spottune import (
    PolicyRecorder,
    SpotTuneLoss,
    SpotTUNet,
    expand_source_state,
    gumbel_softmax_st,
    param_groups,
    plot_policy,
    policy_usage,
    prepare,
    split_state,
    volume_slices,
)
from tests.bundle_utils import FAST, SOURCE, SPOTTUNE, copy_bundle, datalist, tiny_dataset


def _source(seed: int = 0) -> UNet2D:
    torch.manual_seed(seed)
    net = UNet2D()
    with torch.no_grad():  # statistics and affine parameters away from their defaults, so copies matter
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


def _spottune(source: UNet2D) -> SpotTUNet:
    net = SpotTUNet()
    policy = {k: v for k, v in net.state_dict().items() if k.startswith("policy.")}
    net.load_state_dict({**expand_source_state(source.state_dict()), **policy}, strict=True)
    return net


def test_blocks_follow_the_freezing_names():
    net = SpotTUNet()
    assert len(net.blocks) == 33
    assert net.blocks[:2] == ["init_path.0", "init_path.2"]  # the paper's "first layers"
    assert {"down1.4", "down2.4", "down3.4", "shortcut0", "out_path.1"} <= set(net.blocks)


@pytest.mark.parametrize("mode", ["frozen", "tuned", "learned"])
def test_any_policy_with_untouched_copies_equals_the_source_exactly(mode):
    source = _source()
    net = _spottune(source).eval().set_policy(mode)
    x = torch.rand(3, 1, 48, 56)
    with torch.no_grad():
        assert torch.equal(net(x), source(x))


def test_forced_frozen_ignores_changed_tuned_copies_and_forced_tuned_uses_them():
    source = _source()
    net = _spottune(source).eval()
    with torch.no_grad():
        net.down2.tuned[4].conv_path[0].layer.weight.mul_(1.5)
        x = torch.rand(2, 1, 32, 32)
        assert torch.equal(net.set_policy("frozen")(x), source(x))
        assert not torch.equal(net.set_policy("tuned")(x), source(x))
        # one block forced: only down2.4 differs from the source model
        assert not torch.equal(net.set_policy("frozen", {"down2.4": 1})(x), source(x))
    with pytest.raises(ValueError, match="unknown block"):
        net.set_policy("frozen", {"down9.4": 1})


def test_gradients_reach_only_the_tuned_copies_and_the_policy():
    net = prepare(_spottune(_source())).train()
    loss_fn = SpotTuneLoss(net, k_reg=0.01)
    x, y = torch.rand(4, 1, 32, 32), (torch.rand(4, 1, 32, 32) > 0.5).float()
    torch.manual_seed(1)
    loss_fn(net(x), y).backward()
    grads = {n: p.grad for n, p in net.named_parameters()}
    assert all(g is None for n, g in grads.items() if ".frozen." in n)
    assert all(not p.requires_grad for n, p in net.named_parameters() if ".frozen." in n)
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if ".tuned." in n)
    assert grads["policy.head.weight"] is not None and grads["policy.head.weight"].abs().sum() > 0
    groups = param_groups(net, 1e-3, 1e-2)
    assert [g["lr"] for g in groups] == [1e-3, 1e-2]
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in net.parameters())


def test_k_reg_adds_the_mean_share_of_tuned_blocks():
    net = prepare(_spottune(_source())).train()
    x, y = torch.rand(2, 1, 32, 32), torch.ones(2, 1, 32, 32)
    torch.manual_seed(3)
    pred = net(x)
    usage = net.last_usage.detach().clone()
    total = SpotTuneLoss(net, k_reg=0.5)(pred, y)
    plain = torch.nn.functional.binary_cross_entropy_with_logits(pred, y)
    torch.testing.assert_close(total, plain + 0.5 * usage.mean())
    assert set(usage.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(RuntimeError, match="has not run a training forward"):
        SpotTuneLoss(net)(pred, y)  # the usage pays once


def test_gumbel_softmax_is_reproducible_under_a_seed_and_one_hot():
    logits = torch.randn(8, 33, 2, requires_grad=True)
    a = gumbel_softmax_st(logits, 0.1, generator=torch.Generator().manual_seed(7))
    b = gumbel_softmax_st(logits, 0.1, generator=torch.Generator().manual_seed(7))
    c = gumbel_softmax_st(logits, 0.1, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a.detach().round().sum(-1), torch.ones(8, 33))
    a[..., 1].sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # the network's own sampling draws from the global generator (seeded by set_determinism)
    net = prepare(_spottune(_source())).train()
    x = torch.rand(4, 1, 32, 32)
    torch.manual_seed(5)
    first = net.decide(x)[0]
    torch.manual_seed(5)
    assert torch.equal(net.decide(x)[0], first)


def test_inference_policy_is_deterministic_argmax():
    net = _spottune(_source()).eval()
    x = torch.rand(4, 1, 32, 32)
    hard, soft = net.decide(x)
    logits = net.policy(x)
    assert torch.equal(hard, (logits[..., 1] > logits[..., 0]).float()) and not soft.any()
    assert torch.equal(net(x), net(x))


def test_torchscript_matches_eager():
    net = _spottune(_source()).eval()
    x = torch.rand(2, 1, 40, 48)
    assert torch.equal(torch.jit.script(net)(x), net(x))


def test_adapter_holds_what_moved_and_the_policy(tmp_path):
    from custom.adapters import save_adapter

    source = _source()
    src_file = tmp_path / "source.pt"
    torch.save(source.state_dict(), src_file)
    net = _spottune(source)
    with torch.no_grad():
        net.down1.tuned[4].conv_path[1].layer.weight.add_(0.1)
        net.shortcut0.frozen.bias.zero_()  # not possible by training, but an adapter must carry any change
    adapter = save_adapter(net, src_file, tmp_path / "adapter.pt", "spottune")
    stored = torch.load(adapter, weights_only=True)
    assert stored["layout"] == "spottune"
    moved = {k for k in stored["state"] if not k.startswith("policy.")}
    assert moved == {"down1.tuned.4.conv_path.1.layer.weight", "shortcut0.frozen.bias"}
    rebuilt = apply_adapter(src_file, adapter)
    state = net.state_dict()
    assert set(rebuilt) == set(state) and all(torch.equal(rebuilt[k], state[k]) for k in state)
    assert set(split_state(rebuilt)) == {"frozen", "tuned", "policy"}
    other = tmp_path / "other.pt"
    torch.save(_source(seed=1).state_dict(), other)
    with pytest.raises(AdapterError, match="made for source weights with sha256"):
        apply_adapter(other, adapter)


def test_policy_usage_and_its_figure(tmp_path):
    net = _spottune(_source())
    net.set_policy("frozen", {"init_path.0": 1, "shortcut0": 1})
    usage = policy_usage(net, volume_slices(torch.rand(1, 32, 32, 5), batch_size=2))
    assert usage.n_slices == 5 and usage.blocks == tuple(net.blocks)
    assert usage.as_dict()["tuned_share"]["init_path.0"] == 1.0 and usage.tuned_share[1] == 0.0
    assert usage.mean == pytest.approx(2 / 33)
    png = plot_policy({5: usage, 24: usage}, tmp_path / "policy.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


# ---- the bundle, through the MONAI command line --------------------------------------------------------------

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("demo") / "data")


def _run(*args, cwd):
    cmd = [sys.executable, "-m", "monai.bundle", "run", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_bundle_trains_evaluates_and_infers(data, tmp_path):
    bundle = copy_bundle(SPOTTUNE, tmp_path)
    dl = datalist(data, tmp_path / "dl.json", train_domain="ge_3", test_domain="ge_3")
    out = tmp_path / "ft"
    fast = [a for k, v in FAST.items() for a in (f"--{k}", str(v).replace(" ", ""))]
    trained = _run("--config_file", bundle / "configs/train.yaml", "--datalist_file", dl, "--output_dir",
                   tmp_path / "run", "--model_path", out / "model.pt", "--adapter_path", out / "adapter.pt",
                   "--max_epochs", 2, "--lr_decay_epoch", 1, "--slice_interval", 4, "--precision", "fp32",
                   "--num_threads", 1, *fast, cwd=tmp_path)
    # before saving, the copies the policy never picks on the training scans' slices went back to frozen
    assert "slices of the training scans the policy runs the fine-tuned copies of" in trained.stdout + trained.stderr
    tuned = torch.load(out / "model.pt", weights_only=True)
    source = torch.load(bundle / "models/source_model.pt", weights_only=True)
    parts = split_state(tuned)
    # the frozen copies keep the source's parameters (their BatchNorm statistics adapt, as the authors')
    params = {n for n, _ in UNet2D().named_parameters()}
    assert all(torch.equal(parts["frozen"][k], source[k]) for k in params)
    assert any(not torch.equal(parts["tuned"][k], source[k]) for k in params)
    rebuilt = apply_adapter(bundle / "models/source_model.pt", out / "adapter.pt")
    assert all(torch.equal(rebuilt[k], tuned[k]) for k in tuned)
    # evaluate with the trained model, then inference of the test scans: deterministic masks
    _run("--config_file", f"['{bundle / 'configs/inference.yaml'}','{bundle / 'configs/evaluate.yaml'}']",
         "--datalist_file", dl, "--output_dir", tmp_path / "eval", "--model_path", out / "model.pt",
         "--spacing", "[4.0,3.8,3.8]", "--num_threads", 1, cwd=tmp_path)
    with open(tmp_path / "eval/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)
    scans = data / "Original"
    for name in ("a", "b"):
        _run("--config_file", bundle / "configs/inference.yaml", "--dataset_dir", scans, "--output_dir",
             tmp_path / name, "--model_path", out / "model.pt", "--spacing", "[4.0,3.8,3.8]", "--num_threads", 1,
             cwd=tmp_path)
    masks = sorted((tmp_path / "a").glob("*_brainmask.nii.gz"))
    assert len(masks) == len(list(scans.glob("*.nii.gz")))
    assert all(m.read_bytes() == (tmp_path / "b" / m.name).read_bytes() for m in masks)


def test_bundle_refuses_weights_of_another_network_in_one_line(data, tmp_path):
    bundle = copy_bundle(SPOTTUNE, tmp_path)
    bad = tmp_path / "bad.pt"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    dl = datalist(data, tmp_path / "dl.json")
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                           str(bundle / "configs/train.yaml"), "--datalist_file", str(dl), "--init_weights", str(bad),
                           "--max_epochs", "1"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {bad}: weights fit neither")


def test_bundle_starts_from_the_source_bundles_weights():
    assert (SPOTTUNE / "models/source_model.pt").read_bytes() == (SOURCE / "models/model.pt").read_bytes()


def test_policy_recorder_counts_what_policy_usage_counts():
    net = _spottune(_source())
    torch.manual_seed(0)
    for parameter in net.policy.parameters():  # a random policy: mixed choices
        parameter.data.normal_()
    volume = torch.rand(1, 32, 32, 6)
    expected = policy_usage(net, volume_slices(volume, batch_size=4))
    net.eval()
    with PolicyRecorder(net) as recorder, torch.no_grad():
        for batch in volume_slices(volume, batch_size=4):
            net(batch)
    assert recorder.usage() == expected and 0.0 < expected.mean < 1.0
    net(torch.rand(2, 1, 32, 32))  # detached: no longer counted
    assert recorder.usage().n_slices == 6


# ---- keeping only the fine-tuned copies the policy uses --------------------------------------------------------

def _trained_like(source: UNet2D) -> SpotTUNet:
    """Every fine-tuned copy moved (as after training), the policy picking per block, some blocks never."""
    net = _spottune(source)
    torch.manual_seed(3)
    with torch.no_grad():
        for name, value in net.state_dict().items():
            if ".tuned." in name and value.is_floating_point():
                value.add_(0.05 * torch.randn_like(value))
        net.policy.head.weight.zero_()
        logits = net.policy.head.bias.view(len(net.blocks), 2)
        logits.copy_(torch.tensor([0.0, 1.0]))  # fine-tuned copies everywhere ...
        logits[::3] = torch.tensor([1.0, 0.0])  # ... but in every third block
    return net.eval()


def test_dropping_unused_copies_keeps_the_outputs_and_shrinks_the_adapter(tmp_path):
    from custom.adapters import save_adapter
    from custom.spottune import DropUnusedCopies, unused_blocks

    source = _source()
    src_file = tmp_path / "source.pt"
    torch.save(source.state_dict(), src_file)
    net = _trained_like(source)
    volumes = [torch.rand(1, 32, 40, 4), torch.rand(1, 32, 40, 3)]
    before = [net(b).detach() for v in volumes for b in volume_slices(v)]
    unused = net.blocks[::3]
    full = save_adapter(net, src_file, tmp_path / "all.pt", "spottune")
    usage = DropUnusedCopies(net, [{"image": v} for v in volumes], preprocessing=lambda entry: entry)()
    assert usage.n_slices == 7 and unused_blocks(usage) == unused
    # the policy picks the same copies as before on these slices: the network computes exactly the same
    after = [net(b).detach() for v in volumes for b in volume_slices(v)]
    assert all(torch.equal(x, y) for x, y in zip(before, after, strict=True))
    # a dropped block now computes the same with either copy; a kept one does not
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(net.set_policy("tuned", {unused[1]: 0})(x), net.set_policy("tuned")(x))
    assert not torch.equal(net.set_policy("tuned", {net.blocks[1]: 0})(x), net.set_policy("tuned")(x))
    net.set_policy("learned")
    kept = save_adapter(net, src_file, tmp_path / "kept.pt", "spottune")
    stored = torch.load(kept, weights_only=True)["state"]
    # no parameter of a dropped copy is stored; every parameter of a kept, moved copy is
    copies = {b: [t for m in net.children() if hasattr(m, "copies") for _, t in m.copies(net.blocks.index(b))]
              for b in net.blocks}
    params = {b: {id(p) for t in copies[b] for p in t.parameters()} for b in net.blocks}
    names = {id(p): n for n, p in net.named_parameters()}
    assert not {names[i] for b in unused for i in params[b]} & set(stored)
    assert {names[i] for b in net.blocks if b not in unused for i in params[b]} <= set(stored)
    assert kept.stat().st_size < full.stat().st_size
    rebuilt = apply_adapter(src_file, kept)
    assert all(torch.equal(rebuilt[k], v) for k, v in net.state_dict().items())


def test_reset_tuned_refuses_unknown_blocks():
    with pytest.raises(ValueError, match="unknown block 'down9'"):
        SpotTUNet().reset_tuned(["down9"])


@pytest.mark.slow
def test_resumed_training_equals_an_uninterrupted_one(data, tmp_path):
    """Epoch checkpoints carry torch's random generators: after --resume the policy draws the same Gumbel noise."""
    import json

    bundle = copy_bundle(SPOTTUNE, tmp_path)
    dl = datalist(data, tmp_path / "dl.json", train_domain="ge_3", test_domain="ge_3")
    content = json.loads(dl.read_text())
    content["validation"] = []
    dl.write_text(json.dumps(content))

    def train(out, epochs, *extra):
        return _run("--config_file", bundle / "configs/train.yaml", "--datalist_file", dl, "--output_dir", out,
                    "--model_path", out / "model.pt", "--adapter_path", out / "adapter.pt", "--max_epochs", epochs,
                    "--lr_decay_epoch", 2, "--iterations_per_epoch", 3, "--batch_size", 4, "--slice_interval", 4,
                    "--spacing", "[4.0,3.8,3.8]", "--roi_size", "[32,32]", "--precision", "fp32",
                    "--num_threads", 1, *extra, cwd=tmp_path)

    train(tmp_path / "whole", 3)
    train(tmp_path / "split", 2)
    (tmp_path / "split/model.pt").unlink()
    resumed = train(tmp_path / "split", 3, "--resume", "true")
    assert "resuming from" in resumed.stdout + resumed.stderr
    a, b = (torch.load(tmp_path / run / "model.pt", weights_only=True) for run in ("whole", "split"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_multi_gpu_train_with_two_cpu_processes(data, tmp_path):
    """multi_gpu_train.yaml through torchrun (two gloo processes): the policy trains through DistributedDataParallel,
    both processes drop the same copies, one model and an adapter that rebuilds it are written."""
    bundle = copy_bundle(SPOTTUNE, tmp_path)
    dl = datalist(data, tmp_path / "dl.json", train_domain="ge_3", test_domain="ge_3")
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
           "-m", "monai.bundle", "run", "--config_file",
           str([str(bundle / "configs/train.yaml"), str(bundle / "configs/multi_gpu_train.yaml")]),
           "--datalist_file", str(dl), "--output_dir", str(out), "--model_path", str(out / "model.pt"),
           "--adapter_path", str(out / "adapter.pt"), "--max_epochs", "2", "--lr_decay_epoch", "1",
           "--slice_interval", "4", "--iterations_per_epoch", "4", "--batch_size", "2", "--spacing", "[4.0,3.8,3.8]",
           "--roi_size", "[32,32]", "--val_interval", "1", "--precision", "fp32", "--num_threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    dropped = re.findall(r"the other (\d+) are reset to the frozen copies \(([^)]*)\)", log)
    assert len(dropped) == 2 and dropped[0] == dropped[1]  # each process, the same blocks
    tuned = torch.load(out / "model.pt", weights_only=True)
    source = torch.load(bundle / "models/source_model.pt", weights_only=True)
    params = {n for n, _ in UNet2D().named_parameters()}
    assert all(torch.equal(split_state(tuned)["frozen"][k], source[k]) for k in params)
    rebuilt = apply_adapter(bundle / "models/source_model.pt", out / "adapter.pt")
    assert all(torch.equal(rebuilt[k], tuned[k]) for k in tuned)
