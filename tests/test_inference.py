"""custom.inference.SliceBatchInferer: every slice along the chosen axis through the 2D network, whole, in batches."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor

from custom.inference import SliceBatchInferer


class _Recorder(torch.nn.Module):
    """A 2D "network" that records its batch sizes and returns a per-slice fingerprint (slice sum + channel)."""

    def __init__(self):
        super().__init__()
        self.batches: list[int] = []

    def forward(self, x):
        assert x.ndim == 4
        self.batches.append(x.shape[0])
        return torch.cat([x, x.sum(dim=(1, 2, 3), keepdim=True).expand_as(x)], dim=1)


@pytest.mark.parametrize("spatial_dim", [0, 1, 2])
def test_every_slice_along_the_axis_goes_through_whole_and_comes_back_in_place(spatial_dim):
    volume = torch.rand(2, 1, 8, 16, 24)
    net = _Recorder()
    out = SliceBatchInferer(spatial_dim=spatial_dim, batch_size=5)(volume, net)
    assert out.shape == (2, 2, 8, 16, 24)
    torch.testing.assert_close(out[:, :1], volume)  # each slice back where it came from
    sums = volume.sum(dim=tuple(d for d in (1, 2, 3, 4) if d != 2 + spatial_dim), keepdim=True)
    torch.testing.assert_close(out[:, 1:], sums.expand_as(volume))  # ... and seen whole: its own sum
    n = 2 * volume.shape[2 + spatial_dim]
    assert net.batches == [5] * (n // 5) + ([n % 5] if n % 5 else [])


def test_meta_tensor_keeps_its_metadata_and_bad_shapes_are_refused():
    volume = MetaTensor(torch.rand(1, 1, 8, 8, 3), meta={"filename_or_obj": "head.nii.gz"})
    out = SliceBatchInferer()(volume, torch.nn.Identity())
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "head.nii.gz"
    with pytest.raises(ValueError, match=r"expects \(B, C, H, W, D\) volumes"):
        SliceBatchInferer()(torch.rand(1, 8, 8, 3), torch.nn.Identity())
    with pytest.raises(ValueError, match="spatial_dim must be 0, 1 or 2"):
        SliceBatchInferer(spatial_dim=3)


def test_cpu_passes_hold_at_most_cpu_pixels_and_give_the_same_outputs():
    volume = torch.rand(1, 1, 16, 8, 10)  # ten 16 x 8 slices (128 pixels each)
    by_pixels, by_count = _Recorder(), _Recorder()
    out = SliceBatchInferer(batch_size=32, cpu_pixels=300)(volume, by_pixels)
    assert by_pixels.batches == [2, 2, 2, 2, 2]  # 300 // 128
    torch.testing.assert_close(out, SliceBatchInferer(batch_size=32, cpu_pixels=None)(volume, by_count))
    assert by_count.batches == [10]
    tiny = _Recorder()
    SliceBatchInferer(batch_size=4, cpu_pixels=10)(volume, tiny)
    assert tiny.batches == [1] * 10  # never fewer than one slice
    roomy = _Recorder()
    SliceBatchInferer(batch_size=4, cpu_pixels=10**6)(volume, roomy)
    assert roomy.batches == [4, 4, 2]  # never more than batch_size
    inferer = SliceBatchInferer(batch_size=32, cpu_pixels=300)
    assert inferer.slices_per_pass((16, 8), torch.device("cuda")) == 32  # a GPU takes batch_size
    with pytest.raises(ValueError, match="must be positive"):
        SliceBatchInferer(cpu_pixels=0)


def test_a_unet_gives_the_same_logits_whatever_the_batching():
    from custom.networks import UNet2D

    torch.manual_seed(0)
    net = UNet2D(1, 1, 8).eval()
    volume = torch.rand(1, 1, 32, 24, 12)
    with torch.no_grad():
        small = SliceBatchInferer(batch_size=32, cpu_pixels=32 * 24 * 2)(volume, net)
        whole = SliceBatchInferer(batch_size=32, cpu_pixels=None)(volume, net)
    torch.testing.assert_close(small, whole, rtol=1e-5, atol=1e-5)
