"""Precision: bf16 autocast only where the device runs it natively, fp32 results either way."""

import pytest
import torch
from monai.inferers import SimpleInferer

from custom import precision
from custom.inference import SliceBatchInferer
from custom.networks import UNet2D


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_follows_the_cpu(monkeypatch, native, expected):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert precision.resolve("auto", "cpu") == expected


def test_explicit_choices_win_over_the_hardware(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.resolve("bf16", "cpu") == torch.bfloat16
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.resolve("fp32", "cpu") == torch.float32


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, got 'fp16'"):
        precision.resolve("fp16", "cpu")


def test_autocast_inferer_gives_fp32_logits_close_to_fp32():
    torch.manual_seed(0)
    net = UNet2D(n_filters=4).eval()
    x = torch.rand(2, 1, 32, 40, 8)
    inner = SliceBatchInferer(spatial_dim=2, batch_size=4)
    with torch.no_grad():
        full = precision.AutocastInferer(inner, torch.float32)(x, net)
        half = precision.AutocastInferer(inner, torch.bfloat16)(x, net)
    assert full.dtype == half.dtype == torch.float32
    assert full.shape == half.shape == (2, 1, 32, 40, 8)
    assert not torch.equal(full, half)  # bf16 really ran
    assert (torch.sign(full) == torch.sign(half)).float().mean() > 0.99
    assert torch.allclose(full, half, atol=0.1 * full.abs().max().item())


def test_fp32_is_a_plain_call():
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    x = torch.rand(1, 1, 8, 8)
    assert torch.equal(precision.AutocastInferer(SimpleInferer(), torch.float32)(x, net), net(x))
