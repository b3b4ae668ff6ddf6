"""custom.metrics: surface_dice against DeepMind's surface-distance, dice, the MONAI metric and handler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import surface_distance
import torch
from monai.data import DataLoader, MetaTensor
from monai.engines import SupervisedEvaluator
from monai.handlers import IgniteMetricHandler, from_engine
from scipy import ndimage

from custom.metrics import BinarySurfaceDiceMetric, SurfaceDice, dice, surface_dice

TOLERANCES = (0.0, 0.5, 1.0, 2.0, 3.0)
SPACINGS_3D = ((1.0, 1.0, 1.0), (1.33, 1.0, 1.0), (0.5, 2.0, 0.9))
SPACINGS_2D = ((1.0, 1.0), (1.33, 1.0), (0.5, 2.0))


@pytest.fixture
def reference(monkeypatch):
    """DeepMind's surface Dice with the arguments in its own order (ground truth first).

    The package still spells ``np.Inf`` (gone in NumPy 2) for a mask without surface; alias it for the test.
    """
    if not hasattr(np, "Inf"):
        monkeypatch.setattr(np, "Inf", np.inf, raising=False)

    def compute(pred, target, spacing, tolerance):
        distances = surface_distance.compute_surface_distances(
            np.asarray(target, bool), np.asarray(pred, bool), spacing
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            return float(surface_distance.compute_surface_dice_at_tolerance(distances, tolerance))

    return compute


def assert_same(actual: float, expected: float, atol: float = 1e-6):
    if math.isnan(expected):
        assert math.isnan(actual), actual
    else:
        assert actual == pytest.approx(expected, abs=atol)


# ----------------------------------------------------------------------------------------------------------
# mask generators
# ----------------------------------------------------------------------------------------------------------


def blob(rng, shape, sigma=1.5):
    """Thresholded smoothed noise: irregular blobs, often touching the array border."""
    return ndimage.gaussian_filter(rng.standard_normal(shape), sigma) > rng.normal(0.0, 0.15)


def thin(rng, shape):
    """1-voxel structures: a line along a random axis, a one-voxel-thick plane, and isolated voxels."""
    m = np.zeros(shape, bool)
    axis = int(rng.integers(len(shape)))
    line = [int(rng.integers(s)) for s in shape]
    line[axis] = slice(None)
    m[tuple(line)] = True
    plane = [slice(None)] * len(shape)
    plane_axis = int(rng.integers(len(shape)))
    plane[plane_axis] = int(rng.integers(shape[plane_axis]))
    m[tuple(plane)] |= rng.random(m[tuple(plane)].shape) < 0.5
    m |= rng.random(shape) < 0.01
    return m


def random_pairs(ndim, seed, count=6):
    rng = np.random.default_rng(seed)
    for i in range(count):
        shape = tuple(int(s) for s in rng.integers(3, 18 if ndim == 3 else 40, size=ndim))
        kind = i % 3
        if kind == 0:  # two noisy versions of one blob
            base = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5)
            a = base > 0
            b = base + 0.3 * ndimage.gaussian_filter(rng.standard_normal(shape), 1.0) > 0.05
        elif kind == 1:  # unrelated blobs
            a, b = blob(rng, shape), blob(rng, shape, sigma=1.0)
        else:  # thin structures against a blob or another thin structure
            a, b = thin(rng, shape), (thin(rng, shape) if rng.random() < 0.5 else blob(rng, shape))
        yield a, b


# ----------------------------------------------------------------------------------------------------------
# surface_dice: parity with the reference
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed, spacing", list(enumerate(SPACINGS_3D + SPACINGS_2D)))
def test_parity_random(reference, seed, spacing):
    checked = 0
    for a, b in random_pairs(len(spacing), seed=seed):
        for tol in TOLERANCES:
            expected = reference(a, b, spacing, tol)
            assert_same(surface_dice(a, b, spacing, tol), expected)
            checked += not math.isnan(expected)
    assert checked >= 20


def test_parity_dense_noise_and_border(reference):
    """Salt-and-pepper masks (nearly every voxel on a surface) and masks filling whole faces of the array."""
    rng = np.random.default_rng(7)
    for spacing in ((0.5, 2.0, 0.9), (1.33, 1.0)):
        shape = (9, 11, 7)[: len(spacing)]
        a, b = rng.random(shape) < 0.3, rng.random(shape) < 0.6
        full = np.ones(shape, bool)
        half = full.copy()
        half[: shape[0] // 2] = False
        for x, y in ((a, b), (full, b), (half, a), (full, half)):
            for tol in TOLERANCES:
                assert_same(surface_dice(x, y, spacing, tol), reference(x, y, spacing, tol))


def test_parity_large_tolerances_and_odd_values(reference):
    rng = np.random.default_rng(3)
    a, b = blob(rng, (16, 14, 12)), blob(rng, (16, 14, 12))
    for tol in (0.25, 0.9, 1.33, math.sqrt(2), 4.5, 10.0, math.inf):
        assert_same(surface_dice(a, b, (0.9, 0.9, 0.9), tol), reference(a, b, (0.9, 0.9, 0.9), tol))


def test_identical_masks_give_one():
    rng = np.random.default_rng(0)
    for shape, spacing in (((12, 13, 9), (1.33, 1.0, 1.0)), ((20, 17), (0.5, 2.0))):
        m = blob(rng, shape)
        for tol in TOLERANCES:
            assert surface_dice(m, m, spacing, tol) == pytest.approx(1.0, abs=1e-12)


def test_empty_masks(reference):
    m = np.zeros((8, 9, 10), bool)
    m[2:5, 3:7, 1:4] = True
    empty = np.zeros_like(m)
    assert surface_dice(m, empty, (1.0, 1.0, 1.0)) == 0.0
    assert surface_dice(empty, m, (1.33, 1.0, 1.0), 2.0) == 0.0
    assert reference(m, empty, (1.0, 1.0, 1.0), 1.0) == 0.0
    assert math.isnan(surface_dice(empty, empty, (1.0, 1.0, 1.0)))
    assert math.isnan(reference(empty, empty, (1.0, 1.0, 1.0), 1.0))
    assert math.isnan(surface_dice(np.zeros((4, 4)), np.zeros((4, 4)), (1.0, 1.0)))


def test_input_types_and_symmetry():
    rng = np.random.default_rng(1)
    a, b = blob(rng, (10, 12, 9)), blob(rng, (10, 12, 9))
    spacing = (0.5, 2.0, 0.9)
    expected = surface_dice(a, b, spacing, 1.0)
    variants = [
        (a.astype(np.uint8), b.astype(np.int64)),
        (a.astype(np.float32) * 0.7, b.astype(np.float64)),
        (torch.from_numpy(a), torch.from_numpy(b)),
        (torch.from_numpy(a).float(), torch.from_numpy(b).to(torch.int32)),
        (MetaTensor(torch.from_numpy(a)), b),
        (a[::-1, :, :][::-1], b),  # negative-stride view
    ]
    for x, y in variants:
        assert surface_dice(x, y, spacing, 1.0) == pytest.approx(expected, abs=1e-12)
    assert surface_dice(b, a, spacing, 1.0) == pytest.approx(expected, abs=1e-12)
    assert surface_dice(a, b, np.array(spacing), 1.0) == pytest.approx(expected, abs=1e-12)
    spacing_t = torch.tensor(spacing, dtype=torch.float64)
    assert surface_dice(a, b, spacing_t, 1.0) == pytest.approx(expected, abs=1e-12)


def test_spacing_matters():
    rng = np.random.default_rng(2)
    a, b = blob(rng, (12, 12, 12)), blob(rng, (12, 12, 12))
    assert surface_dice(a, b, (1.0, 1.0, 1.0), 1.0) != pytest.approx(surface_dice(a, b, (3.0, 1.0, 1.0), 1.0))


@pytest.mark.parametrize(
    "pred, target, spacing, tolerance, match",
    [
        (np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), (1, 1, 1), 1.0, "same shape"),
        (np.zeros(5), np.zeros(5), (1,), 1.0, "2D or 3D"),
        (np.zeros((2, 3, 4, 5)), np.zeros((2, 3, 4, 5)), (1, 1, 1, 1), 1.0, "2D or 3D"),
        (np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), (1, 1), 1.0, "one value per axis"),
        (np.zeros((4, 4)), np.zeros((4, 4)), (1, 1, 1), 1.0, "one value per axis"),
        (np.zeros((4, 4)), np.zeros((4, 4)), 1.0, 1.0, "one value per axis"),
        (np.zeros((4, 4)), np.zeros((4, 4)), (1, 0), 1.0, "positive and finite"),
        (np.zeros((4, 4)), np.zeros((4, 4)), (1, -2), 1.0, "positive and finite"),
        (np.zeros((4, 4)), np.zeros((4, 4)), (1, math.inf), 1.0, "positive and finite"),
        (np.zeros((4, 4)), np.zeros((4, 4)), (1, math.nan), 1.0, "positive and finite"),
        (np.zeros((4, 4)), np.zeros((4, 4)), ("a", 1), 1.0, "spacing"),
        (np.zeros((4, 4)), np.zeros((4, 4)), (1, 1), -1.0, "tolerance"),
        (np.zeros((4, 4)), np.zeros((4, 4)), (1, 1), math.nan, "tolerance"),
        (np.array([["a", "b"]]), np.zeros((1, 2)), (1, 1), 1.0, "numeric or bool"),
    ],
)
def test_surface_dice_invalid_inputs(pred, target, spacing, tolerance, match):
    with pytest.raises(ValueError, match=match):
        surface_dice(pred, target, spacing, tolerance)


# ----------------------------------------------------------------------------------------------------------
# dice
# ----------------------------------------------------------------------------------------------------------


def test_dice_by_hand():
    a = np.zeros((4, 5), bool)
    b = np.zeros((4, 5), bool)
    a[0, :4] = True  # 4 voxels
    b[0, 2:] = True  # 3 voxels, 2 shared
    assert dice(a, b) == pytest.approx(2 * 2 / (4 + 3))
    assert dice(torch.from_numpy(a).float(), b.astype(np.int16)) == pytest.approx(4 / 7)
    assert dice(a, a) == 1.0
    assert dice(a, np.zeros_like(a)) == 0.0
    assert math.isnan(dice(np.zeros((3, 3)), np.zeros((3, 3))))
    vol = np.random.default_rng(0).random((5, 6, 7, 2)) > 0.5  # any dimensionality
    assert dice(vol, ~vol) == 0.0
    with pytest.raises(ValueError, match="same shape"):
        dice(np.zeros((3, 3)), np.zeros((3, 4)))


# ----------------------------------------------------------------------------------------------------------
# BinarySurfaceDiceMetric and the SurfaceDice handler
# ----------------------------------------------------------------------------------------------------------


def affine_for(spacing):
    """An oblique-free affine with the given voxel size, plus a rotation of axes 1-2 for good measure."""
    a = torch.eye(4, dtype=torch.float64)
    a[0, 0] = spacing[0]
    c, s = math.cos(0.3), math.sin(0.3)
    a[1:3, 1:3] = torch.tensor([[c, -s], [s, c]], dtype=torch.float64) @ torch.diag(
        torch.tensor(spacing[1:], dtype=torch.float64)
    )
    a[:3, 3] = torch.tensor([-10.0, 4.0, 2.5])
    return a


@pytest.fixture(scope="module")
def volumes():
    rng = np.random.default_rng(11)
    base = ndimage.gaussian_filter(rng.standard_normal((14, 12, 10)), 2.0)
    pred = base > 0
    label = base + 0.4 * ndimage.gaussian_filter(rng.standard_normal(base.shape), 1.0) > 0.05
    return pred, label


def as_meta(mask, spacing):
    return MetaTensor(torch.from_numpy(mask[None].astype(np.float32)), affine=affine_for(spacing))


SPACING_A, SPACING_B = (1.0, 1.0, 1.0), (2.0, 0.7, 1.5)


def test_metric_reads_spacing_per_item(volumes):
    pred, label = volumes
    want = [surface_dice(pred, label, sp, 1.0) for sp in (SPACING_A, SPACING_B)]
    assert want[0] != pytest.approx(want[1], abs=1e-3)  # same arrays, two spacings, two answers

    # decollated lists of (1, H, W, D) MetaTensors
    metric = BinarySurfaceDiceMetric(tolerance=1.0)
    got = metric(
        [as_meta(pred, SPACING_A), as_meta(pred, SPACING_B)],
        [as_meta(label, SPACING_A), as_meta(label, SPACING_B)],
    )
    assert got.shape == (2, 1)
    assert got[:, 0].tolist() == pytest.approx(want, abs=1e-6)
    assert metric.aggregate().item() == pytest.approx(sum(want) / 2, abs=1e-6)

    # a collated (B, 1, H, W, D) MetaTensor whose affine is batched
    from monai.data import list_data_collate

    batch = list_data_collate(
        [{"pred": as_meta(pred, sp), "label": as_meta(label, sp)} for sp in (SPACING_B, SPACING_A)]
    )
    got = BinarySurfaceDiceMetric(tolerance=1.0)(batch["pred"], batch["label"])
    assert got[:, 0].tolist() == pytest.approx(want[::-1], abs=1e-6)

    # the label carries only MetaTensor's default identity affine: the prediction's affine is used
    bare_label = MetaTensor(torch.from_numpy(label[None]))
    got = BinarySurfaceDiceMetric(tolerance=1.0)([as_meta(pred, SPACING_B)], [bare_label])
    assert got.item() == pytest.approx(want[1], abs=1e-6)

    # only the label carries metadata: still read from it
    got = BinarySurfaceDiceMetric(tolerance=1.0)([torch.from_numpy(pred[None])], [as_meta(label, SPACING_B)])
    assert got.item() == pytest.approx(want[1], abs=1e-6)


def test_metric_pixdim_when_affine_is_default(volumes):
    pred, label = volumes
    nifti_pixdim = torch.tensor([1.0, *SPACING_B, 1.0, 1.0, 1.0, 1.0])
    y = MetaTensor(torch.from_numpy(label[None]), meta={"pixdim": nifti_pixdim})
    got = BinarySurfaceDiceMetric(tolerance=2.0)([torch.from_numpy(pred[None])], [y])
    assert got.item() == pytest.approx(surface_dice(pred, label, SPACING_B, 2.0), abs=1e-6)
    y = MetaTensor(torch.from_numpy(label[None]), meta={"pixdim": list(SPACING_B)})
    got = BinarySurfaceDiceMetric(tolerance=2.0)([torch.from_numpy(pred[None])], [y])
    assert got.item() == pytest.approx(surface_dice(pred, label, SPACING_B, 2.0), abs=1e-6)


def test_metric_nan_handling_and_reductions(volumes):
    pred, label = volumes
    empty = np.zeros_like(pred)
    metric = BinarySurfaceDiceMetric(tolerance=1.0, get_not_nans=True)
    metric(
        [as_meta(pred, SPACING_A), as_meta(empty, SPACING_A)],
        [as_meta(label, SPACING_A), as_meta(empty, SPACING_A)],
    )
    metric([as_meta(empty, SPACING_B)], [as_meta(label, SPACING_B)])
    values = metric.get_buffer()[:, 0]
    assert math.isnan(values[1].item()) and values[2].item() == 0.0
    mean, not_nans = metric.aggregate()
    assert not_nans.item() == 2
    assert mean.item() == pytest.approx((values[0].item() + 0.0) / 2, abs=1e-6)
    assert metric.aggregate(reduction="sum")[0].item() == pytest.approx(values[0].item(), abs=1e-6)
    metric.reset()
    assert metric.get_buffer() is None


def test_metric_invalid_inputs(volumes):
    pred, label = volumes
    plain = torch.from_numpy(pred[None, None])
    with pytest.raises(ValueError, match="MetaTensor"):
        BinarySurfaceDiceMetric()(plain, plain)
    two_channels = MetaTensor(torch.zeros(1, 2, 4, 4, 4))
    with pytest.raises(ValueError, match="one channel"):
        BinarySurfaceDiceMetric()(two_channels, two_channels)
    with pytest.raises(ValueError, match="same shape"):
        BinarySurfaceDiceMetric()(MetaTensor(torch.zeros(1, 1, 4, 4, 4)), MetaTensor(torch.zeros(1, 1, 4, 4, 5)))
    with pytest.raises(ValueError, match="tolerance"):
        BinarySurfaceDiceMetric(tolerance=-1)


class _Volumes(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


@pytest.mark.parametrize("use_generic_handler", [False, True])
def test_supervised_evaluator(volumes, use_generic_handler):
    """Identity network (the "image" is the prediction); three volumes, batches of two, one spacing each."""
    pred, label = volumes
    spacings = (SPACING_A, SPACING_B, (0.8, 1.2, 1.0))
    items = [{"image": as_meta(pred, sp), "label": as_meta(label, sp)} for sp in spacings]
    want = [surface_dice(pred, label, sp, 1.5) for sp in spacings]

    if use_generic_handler:
        handler = IgniteMetricHandler(
            metric_fn=BinarySurfaceDiceMetric(tolerance=1.5), output_transform=from_engine(["pred", "label"])
        )
    else:
        to_pair = from_engine(["pred", "label"])
        handler = SurfaceDice(tolerance=1.5, output_transform=to_pair, save_details=True)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(_Volumes(items), batch_size=2, num_workers=0),
        network=torch.nn.Identity(),
        key_val_metric={"val_surface_dice": handler},
    )
    evaluator.run()
    assert evaluator.state.metrics["val_surface_dice"] == pytest.approx(sum(want) / 3, abs=1e-6)
    details = evaluator.state.metric_details["val_surface_dice"]
    assert details.shape == (3, 1)
    assert details[:, 0].tolist() == pytest.approx(want, abs=1e-6)


# ----------------------------------------------------------------------------------------------------------
# CUDA
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_cuda_tensors_match_cpu(volumes):
    pred, label = volumes
    cuda = torch.device("cuda")
    for spacing in (SPACING_A, SPACING_B):
        for tol in TOLERANCES:
            expected = surface_dice(pred, label, spacing, tol)
            p, t = torch.from_numpy(pred).to(cuda), torch.from_numpy(label).to(cuda)
            got = surface_dice(p, t, spacing, tol)
            assert got == pytest.approx(expected, abs=1e-6)
    # mixed devices and the metric on CUDA MetaTensors
    assert surface_dice(torch.from_numpy(pred).to(cuda), label, SPACING_B) == pytest.approx(
        surface_dice(pred, label, SPACING_B), abs=1e-6
    )
    metric = BinarySurfaceDiceMetric(tolerance=1.0)
    got = metric([as_meta(pred, SPACING_B).to(cuda)], [as_meta(label, SPACING_B).to(cuda)])
    assert got.device.type == "cuda"
    assert got.item() == pytest.approx(surface_dice(pred, label, SPACING_B), abs=1e-6)
    assert dice(torch.from_numpy(pred).to(cuda), label) == pytest.approx(dice(pred, label))
