"""custom.demo_data.simulate and .scanners: masks aligned with the anatomy, each scanner's spacing, domain shift."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from custom.demo_data import DOMAIN_NAMES, DOMAINS
from custom.demo_data.simulate import simulate
from tests.demo_data.common import head_mask, normalise, read_scans


def test_masks_binary_nonempty_aligned_grid_insidehead(dataset):
    for domain, scans in read_scans(dataset).items():
        for image, mask, img in scans:
            assert image.dtype == np.int16 and image.min() >= 0
            assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}, domain
            assert mask.shape == image.shape
            volume_ml = mask.sum() * np.prod(img.header.get_zooms()[:3]) / 1000
            assert 900 < volume_ml < 2800, (domain, volume_ml)
            assert (mask.astype(bool) & head_mask(image)).sum() / mask.sum() > 0.97, domain
            # the brain is inside the field of view, not cut by it (except its inferior brainstem end)
            assert not mask[0].any() and not mask[-1].any() and not mask[:, 0].any() and not mask[:, -1].any()
            assert not mask[:, :, -1].any()


def test_spacing_per_domain(dataset):
    for domain, scans in read_scans(dataset).items():
        for _, _, img in scans:
            zooms = np.array(img.header.get_zooms()[:3], dtype=float)
            np.testing.assert_allclose(np.diag(img.affine)[:3], zooms, rtol=1e-5)
            assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
            assert zooms[0] == pytest.approx(2.66 if domain == "siemens_3" else 2.0, abs=1e-4), domain
            if domain == "philips_15":
                assert zooms[1] == pytest.approx(zooms[2]) and 1.778 - 1e-3 <= zooms[1] <= 2.0
            elif domain == "philips_3":
                assert zooms[1] == pytest.approx(zooms[2])
                assert min(abs(zooms[1] - 1.964), abs(zooms[1] - 2.0)) < 1e-3
            else:
                np.testing.assert_allclose(zooms[1:], [2.0, 2.0], atol=1e-5)


def test_full_resolution_spacing():
    image, mask, affine = simulate(DOMAINS[DOMAIN_NAMES.index("siemens_3")], "full",
                                       np.random.default_rng(0))
    np.testing.assert_allclose(np.diag(affine)[:3], [1.33, 1.0, 1.0])
    assert image.shape == mask.shape and 120 < image.shape[0] < 170 and 200 < image.shape[1] < 260


def test_domains_differ(dataset):
    """Scanner shift: the scalp-vs-brain order flips between domains and histograms differ."""
    ratio, hist = {}, {}
    for domain, scans in read_scans(dataset).items():
        rs, hs = [], []
        for image, mask, _ in scans:
            x, brain, head = normalise(image), mask.astype(bool), head_mask(image)
            scalp = head & ~ndi.binary_dilation(brain, iterations=4)
            rs.append(x[scalp].mean() / x[brain].mean())
            hs.append(np.histogram(x[head], bins=20, range=(0, 1))[0] / head.sum())
        ratio[domain], hist[domain] = np.mean(rs), np.mean(hs, axis=0)
    assert ratio["ge_15"] > 1.05  # scalp brighter than the brain on average
    assert ratio["philips_15"] < 0.45  # scalp much darker than the brain
    assert ratio["siemens_3"] < 0.75 * ratio["siemens_15"]
    tv = {(a, b): 0.5 * np.abs(hist[a] - hist[b]).sum() for a in DOMAIN_NAMES for b in DOMAIN_NAMES if a < b}
    assert max(tv.values()) > 0.35
    assert sum(v > 0.15 for v in tv.values()) >= 8, tv


def test_mask_follows_the_deformed_anatomy(dataset):
    """Cortex just inside the mask is brighter than CSF/skull just outside; a shifted mask loses that edge."""

    def edge_contrast(x: np.ndarray, m: np.ndarray) -> float:
        inner = m & ~ndi.binary_erosion(m)
        outer = ndi.binary_dilation(m) & ~m
        return x[inner].mean() / x[outer].mean()

    for domain, scans in read_scans(dataset).items():
        for image, mask, _ in scans:
            x, brain = normalise(image), mask.astype(bool)
            true = edge_contrast(x, brain)
            assert true > 1.08, domain
            for axis in range(3):
                for shift in (-3, 3):
                    assert edge_contrast(x, np.roll(brain, shift, axis=axis)) < true, (domain, axis, shift)
