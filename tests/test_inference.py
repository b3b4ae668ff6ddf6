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
