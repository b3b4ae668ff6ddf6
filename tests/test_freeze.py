"""Which parameters each fine-tuning strategy trains, and what happens to frozen BatchNorm statistics."""

import logging

import pytest
import torch
from monai.networks.nets import UNet

from custom.freeze import freeze
from custom.networks import UNet2D


def _trainable(net):
    return {n for n, p in net.named_parameters() if p.requires_grad}


def test_first_layers_are_the_input_conv_and_first_residual_block():
    net = freeze(UNet2D(), "first")
    names = _trainable(net)
    assert names and all(n.startswith(("init_path.0.", "init_path.2.")) for n in names)
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == 4_816
    assert not any(n.startswith("init_path.3") for n in names)


def test_last_layers_are_the_output_path():
    net = freeze(UNet2D(), "last")
    assert all(n.startswith("out_path.") for n in _trainable(net))
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == 627


def test_full_trains_everything_and_returns_the_same_object():
    net = UNet2D()
    assert freeze(net, "full") is net
    assert _trainable(net) == {n for n, _ in net.named_parameters()}


def test_refreezing_changes_the_set():
    net = freeze(UNet2D(), "first")
    freeze(net, "last")
    assert all(n.startswith("out_path.") for n in _trainable(net))


def test_prefix_is_a_module_boundary():
    net = freeze(UNet2D(), ["up1.3"])  # must not also match up1.30...
    assert _trainable(net) == {n for n, _ in net.named_parameters() if n.startswith("up1.3.")}


def test_pattern_list_on_a_monai_unet():
    net = UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=(4, 8, 16), strides=(2, 2))
    first = next(iter(dict(net.named_children())))  # "model"
    freeze(net, [f"{first}.0"])
    names = _trainable(net)
    assert names and all(n.startswith(f"{first}.0.") for n in names)
    assert len(names) < len(list(net.parameters()))


def test_unknown_strategy_and_unmatched_pattern_raise():
    with pytest.raises(ValueError, match="unknown fine-tuning strategy"):
        freeze(UNet2D(), "middle")
    with pytest.raises(ValueError, match=r"match no parameter.*init_path"):
        freeze(UNet2D(), ["encoder.0"])
    with pytest.raises(ValueError, match="at least one"):
        freeze(UNet2D(), [])


def test_logs_trainable_counts(caplog):
    with caplog.at_level(logging.INFO, logger="custom.freeze"):
        freeze(UNet2D(), "first")
    assert "4816 of 2434771 parameters trainable" in caplog.text


def _bn_stats_after_a_train_step(freeze_bn_stats):
    torch.manual_seed(0)
    net = freeze(UNet2D(), "last", freeze_bn_stats=freeze_bn_stats)
    before = {n: b.clone() for n, b in net.named_buffers() if "running_mean" in n}
    net.train()
    net(torch.rand(2, 1, 32, 32) * 5 + 3)
    after = dict(net.named_buffers())
    return {n: not torch.equal(before[n], after[n]) for n in before}


def test_frozen_batchnorm_statistics_update_by_default_as_in_the_paper():
    moved = _bn_stats_after_a_train_step(freeze_bn_stats=False)
    assert moved["init_path.2.conv_path.0.bn.running_mean"]  # frozen layer, stats still move
    assert moved["out_path.0.conv_path.0.bn.running_mean"]


def test_freeze_bn_stats_keeps_frozen_statistics_fixed():
    moved = _bn_stats_after_a_train_step(freeze_bn_stats=True)
    assert not moved["init_path.2.conv_path.0.bn.running_mean"]
    assert not moved["down1.0.running_mean"]
    assert moved["out_path.0.conv_path.0.bn.running_mean"]  # trainable layer: normal train-mode BatchNorm
