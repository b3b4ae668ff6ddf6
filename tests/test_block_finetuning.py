"""Fine-tuning single blocks of the U-Net by name: the adapter holds exactly their parameters, and the bundles'
command line takes ``--strategy down1,down2``."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from custom.adapters import apply_adapter, save_adapter
from custom.checkpoints import load_into
from custom.freeze import freeze
from custom.networks import UNet2D
from tests.bundle_utils import FAST, FINETUNE, copy_bundle, datalist, tiny_dataset


def _params(strategy_blocks: tuple[str, ...]) -> set[str]:
    return {n for n, _ in UNet2D().named_parameters() if n.split(".")[0] in strategy_blocks}


@pytest.mark.parametrize("strategy", ["down2", "shortcut1,up1", "init_path,down1,down2"])
def test_adapter_holds_exactly_the_blocks_parameters(strategy, tmp_path):
    torch.manual_seed(0)
    source = tmp_path / "source.pt"
    torch.save(UNet2D().state_dict(), source)
    net = freeze(load_into(UNet2D(), source), strategy)
    with torch.no_grad():  # a stand-in for training: only trainable parameters move
        for p in net.parameters():
            if p.requires_grad:
                p.add_(0.01)
    net.train()
    net(torch.rand(2, 1, 16, 16))  # BatchNorm statistics move everywhere (the paper's default)
    adapter = save_adapter(net, source, tmp_path / "adapter.pt", strategy)
    saved = torch.load(adapter, weights_only=True)
    params = {n for n, _ in net.named_parameters()}
    assert set(saved["state"]) & params == _params(tuple(strategy.split(",")))
    assert saved["strategy"] == strategy
    rebuilt = apply_adapter(source, adapter)
    assert all(torch.equal(rebuilt[k], v) for k, v in net.state_dict().items())


@pytest.mark.slow
def test_bundle_command_line_finetunes_a_comma_separated_list_of_blocks(tmp_path):
    data = tiny_dataset(tmp_path / "data")
    bundle = copy_bundle(FINETUNE["first"], tmp_path)
    dl = datalist(data, tmp_path / "datalist.json")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs/train.yaml"),
           "--datalist_file", str(dl), "--output_dir", str(out / "run"), "--model_path", str(out / "model.pt"),
           "--adapter_path", str(out / "adapter.pt"), "--strategy", "down1,down2", "--max_epochs", "1",
           "--lr_decay_epoch", "1", "--slice_interval", "4",
           "--iterations_per_epoch", str(FAST["iterations_per_epoch"]),
           "--batch_size", str(FAST["batch_size"]), "--spacing", str(FAST["spacing"]).replace(" ", ""),
           "--roi_size", str(FAST["roi_size"]).replace(" ", ""), "--precision", "fp32", "--num_threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    source = torch.load(bundle / "models/source_model.pt", weights_only=True)
    tuned = torch.load(out / "model.pt", weights_only=True)
    params = {n for n, _ in UNet2D().named_parameters()}
    changed = {k for k in params if not torch.equal(tuned[k], source[k])}
    assert changed and changed <= _params(("down1", "down2"))
    adapter = torch.load(out / "adapter.pt", weights_only=True)
    assert set(adapter["state"]) & params == _params(("down1", "down2"))
    assert adapter["strategy"] == "down1,down2"
    assert f"{57_760 + 230_208} of 2434771 parameters trainable" in proc.stdout + proc.stderr

    bad = subprocess.run([*cmd[:cmd.index("--strategy") + 1], "down1,dwon2"], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert bad.returncode == 2, bad.stderr[-2000:]
    last = bad.stderr.strip().splitlines()[-1]
    assert last.startswith("error: unknown fine-tuning strategy 'dwon2'") and "init_path, down1" in last
    assert "Traceback" not in bad.stdout + bad.stderr and " - ERROR - " not in bad.stdout + bad.stderr
    assert not (out / "bad").exists()
