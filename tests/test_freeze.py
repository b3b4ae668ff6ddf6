"""Which parameters each fine-tuning strategy trains, and what happens to frozen BatchNorm statistics."""

import logging

import pytest
import torch
from monai.networks.nets import UNet

from custom.freeze import (
    block_depths,
    blocks,
    freeze,
    prefix_strategy,
    strategy_name,
    trainable_parameter_count,
    trainable_prefixes,
)
from custom.networks import UNet2D

UNET_BLOCKS = ["init_path", "down1", "down2", "down3", "up3", "shortcut2", "up2", "shortcut1", "up1", "shortcut0",
               "out_path"]
# each block's parameter count, from its layers (kernel sizes x channels), independent of the network's code
BLOCK_PARAMS = {
    "init_path": 1 * 16 * 9 + 3 * 2 * (2 * 16 + 16 * 16 * 9),
    "shortcut0": 16 * 16 + 16,
    "down1": 2 * 16 + 16 * 32 * 4 + 3 * 2 * (2 * 32 + 32 * 32 * 9),
    "shortcut1": 32 * 32 + 32,
    "down2": 2 * 32 + 32 * 64 * 4 + 3 * 2 * (2 * 64 + 64 * 64 * 9),
    "shortcut2": 64 * 64 + 64,
    "down3": 2 * 64 + 64 * 128 * 4 + 3 * 2 * (2 * 128 + 128 * 128 * 9),
    "up3": 3 * 2 * (2 * 128 + 128 * 128 * 9) + 2 * 128 + 128 * 64 * 4,
    "up2": 3 * 2 * (2 * 64 + 64 * 64 * 9) + 2 * 64 + 64 * 32 * 4,
    "up1": 3 * 2 * (2 * 32 + 32 * 32 * 9) + 2 * 32 + 32 * 16 * 4,
    "out_path": 2 * (2 * 16 + 16 * 16) + (2 * 16 + 16 + 1) + 2,
}


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
    with pytest.raises(ValueError, match="unknown fine-tuning strategy 'middle'"):
        freeze(UNet2D(), "middle")
    with pytest.raises(ValueError, match=r"'encoder.0' \(no parameter of UNet2D.*init_path"):
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


# ---- strategies by block name ---------------------------------------------------------------------------------

def test_blocks_are_the_top_level_modules_in_forward_order():
    net = UNet2D()
    assert blocks(net) == UNET_BLOCKS
    assert blocks() == UNET_BLOCKS  # default: the paper's network
    assert set(blocks(net)) == {name for name, _ in net.named_children()}
    assert block_depths(net) == {name: i for i, name in enumerate(UNET_BLOCKS)}
    assert net.training  # tracing the order leaves the mode as it was


@pytest.mark.parametrize("block", UNET_BLOCKS)
def test_each_block_trains_exactly_its_own_parameters(block):
    net = freeze(UNet2D(), block)
    assert _trainable(net) == {n for n, _ in net.named_parameters() if n.split(".")[0] == block}
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == BLOCK_PARAMS[block]
    assert trainable_parameter_count(UNet2D(), block) == BLOCK_PARAMS[block]


def test_block_sets_are_disjoint_and_cover_every_parameter():
    sets = {b: _trainable(freeze(UNet2D(), b)) for b in blocks()}
    every = {n for n, _ in UNet2D().named_parameters()}
    assert set.union(*sets.values()) == every
    assert sum(len(s) for s in sets.values()) == len(every)  # no name in two blocks
    counts = [trainable_parameter_count(None, b) for b in blocks()]
    assert sum(counts) == 2_434_771 == sum(BLOCK_PARAMS.values())
    assert {"shortcut0.weight", "shortcut1.bias", "shortcut2.weight"} <= every - sets["down1"] - sets["up1"]


@pytest.mark.parametrize("strategy", ["down1,down2", " down1 , down2 ", ("down1", "down2"), ["down1", "down2"]])
def test_comma_separated_lists_and_tuples_of_blocks(strategy):
    net = freeze(UNet2D(), strategy)
    assert _trainable(net) == {n for n, _ in net.named_parameters() if n.split(".")[0] in ("down1", "down2")}
    assert strategy_name(strategy) == "down1,down2"
    assert trainable_parameter_count(net, strategy) == BLOCK_PARAMS["down1"] + BLOCK_PARAMS["down2"]


def test_fixed_names_mix_with_blocks_and_keep_their_meaning():
    assert trainable_prefixes("first,out_path") == ("init_path.0", "init_path.2", "out_path")
    assert trainable_parameter_count(None, "first") == 4_816
    assert trainable_parameter_count(None, "last") == trainable_parameter_count(None, "out_path") == 627
    assert trainable_parameter_count(None, "full") == 2_434_771


def test_prefix_strategies_are_the_first_k_blocks():
    assert prefix_strategy(1) == "init_path"
    assert prefix_strategy(3) == "init_path,down1,down2"
    assert prefix_strategy(len(UNET_BLOCKS)) == ",".join(UNET_BLOCKS)
    counts = [trainable_parameter_count(None, prefix_strategy(k)) for k in range(1, len(UNET_BLOCKS) + 1)]
    assert counts == sorted(counts) and counts[-1] == 2_434_771
    for bad in (0, len(UNET_BLOCKS) + 1):
        with pytest.raises(ValueError, match="k must be between 1 and 11"):
            prefix_strategy(bad)


@pytest.mark.parametrize("strategy", ["down4", "down1,dwon2", ("init_path", "bottleneck"), " , "])
def test_unknown_block_names_list_the_valid_ones(strategy):
    with pytest.raises(ValueError) as err:
        freeze(UNet2D(), strategy)
    message = str(err.value)
    if strategy_name(strategy):
        assert "unknown fine-tuning strategy" in message
        assert "first, last, full" in message and ", ".join(UNET_BLOCKS) in message
        assert "'down1'" not in message and "'init_path'" not in message  # only the bad names are quoted
    else:
        assert "at least one" in message
