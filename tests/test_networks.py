"""The paper's U-Net: parameter count, names, shapes, TorchScript."""

import pytest
import torch

from custom.networks import UNet2D


def _count(net, prefixes=("",)):
    return sum(p.numel() for n, p in net.named_parameters() if n.startswith(prefixes))


def test_parameter_count_matches_the_paper():
    net = UNet2D()
    assert _count(net) == 2_434_771
    assert _count(net, ("init_path.0", "init_path.2")) == 4_816
    assert _count(net, ("out_path",)) == 627
    assert sum(b.numel() for n, b in net.named_buffers() if "running" in n) == 6_338


def test_paper_module_names():
    names = [n for n, _ in UNet2D().named_children()]
    assert names == ["init_path", "shortcut0", "down1", "shortcut1", "down2", "shortcut2", "down3", "up3", "up2", "up1",
                     "out_path"]
    params = dict(UNet2D().named_parameters())
    assert "init_path.0.weight" in params and "init_path.0.bias" not in params  # no conv bias
    assert "init_path.2.conv_path.0.bn.weight" in params and "init_path.2.conv_path.1.layer.weight" in params
    assert "shortcut0.bias" in params and "out_path.1.layer.bias" in params


@pytest.mark.parametrize("shape", [(2, 1, 64, 64), (1, 1, 40, 96), (3, 1, 8, 16)])
def test_any_multiple_of_eight(shape):
    out = UNet2D().eval()(torch.rand(shape))
    assert out.shape == (shape[0], 1, *shape[2:])


def test_rejects_sides_not_divisible_by_eight():
    with pytest.raises(ValueError, match="divisible by 8"):
        UNet2D()(torch.rand(1, 1, 60, 64))


def test_width_and_channels_configurable():
    net = UNet2D(in_channels=2, out_channels=3, n_filters=8)
    assert net(torch.rand(1, 2, 32, 32)).shape == (1, 3, 32, 32)
    assert _count(net) < _count(UNet2D())


def test_torchscript_matches_eager():
    net = UNet2D().eval()
    x = torch.rand(2, 1, 48, 64)
    scripted = torch.jit.script(net)
    torch.testing.assert_close(scripted(x), net(x))


def test_a_checkpoint_of_the_authors_network_loads_strictly():
    """State-dict names and shapes of the authors' UNet2D (DART20 code, dpipe blocks), kept as data."""
    import json
    from pathlib import Path

    authors = json.loads((Path(__file__).parent / "data" / "authors_unet2d_state_dict.json").read_text())["state_dict"]
    ours = UNet2D().state_dict()
    assert {k: list(v.shape) for k, v in ours.items()} == authors
    checkpoint = {k: torch.randn(shape) if shape else torch.tensor(7) for k, shape in authors.items()}
    net = UNet2D()
    net.load_state_dict(checkpoint, strict=True)
    key = "down2.4.conv_path.1.layer.weight"  # the authors' index 4: after their dropout slot at 3
    assert torch.equal(net.state_dict()[key], checkpoint[key])
