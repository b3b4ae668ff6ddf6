"""The six simulated scanners: CC359's domain names, each with its own contrast, noise, bias, spacing and coverage.

They differ the way real scanners do: a piecewise-linear intensity response over the source's tissue range
(``RESPONSE_KNOTS``) followed by a gamma curve (``ge_15``: flat brain contrast, very bright scalp; ``philips_15``:
scalp darker than white matter), a gain on tissue far outside the brain, a smooth bias field (stronger at 3 T, with
centre brightening), Rician noise, the stored int16 range, CC359's voxel spacings, the field of view and neck
coverage, and an anisotropic Gaussian point-spread function (wider in-plane at 1.5 T).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DOMAINS", "DOMAIN_NAMES", "RESOLUTIONS", "RESPONSE_KNOTS", "Domain"]

# voxel size factor: "small" doubles every domain's spacing (about 2 mm voxels), "full" is CC359's ~1 mm
RESOLUTIONS = {"small": 2.0, "full": 1.0}

# Source intensities are expressed relative to white matter (u = 1); these are the knots of the per-domain
# response curve: background, dark CSF, CSF, grey-white partial volume, grey matter, white matter, then
# brighter-than-brain tissue up to the fat in the scalp (u ~ 2).
RESPONSE_KNOTS = (0.0, 0.12, 0.3, 0.55, 0.75, 1.0, 1.3, 1.7, 2.2)


@dataclass(frozen=True)
class Domain:
    """One simulated scanner. Lengths in mm at full resolution; ``spacing`` x, y, z."""

    name: str
    spacing: tuple[float, float, float]
    response: tuple[float, ...]  # output at RESPONSE_KNOTS (white matter = 1)
    gamma: float  # applied after the response curve
    scalp_gain: float  # extra gain on tissue far (> ~9 mm) from the brain
    noise: float  # Rician sigma as a fraction of the white-matter signal
    bias: float  # std of the smooth random log bias field
    centre_brightening: float  # 3 T dielectric effect: + this at the centre, 0 at the FOV edge
    psf_mm: tuple[float, float, float]  # Gaussian blur sigma per axis
    fov_mm: tuple[float, float]  # extent along x and y
    top_margin_mm: float  # background above the head
    inferior_crop_mm: float  # < 0: more neck below the source's lowest slice; > 0: inferior head cut away
    white_level: int  # stored value of white matter (int16 dynamic range)
    inplane_spacings: tuple[float, ...] = ()  # if set: y = z spacing drawn per subject from these


DOMAINS: tuple[Domain, ...] = (
    Domain(
        name="siemens_15", spacing=(1.0, 1.0, 1.0),
        response=(0.0, 0.10, 0.30, 0.55, 0.74, 1.0, 1.20, 1.40, 1.55), gamma=1.0,
        scalp_gain=1.0, noise=0.035, bias=0.07, centre_brightening=0.0, psf_mm=(0.5, 0.7, 0.7),
        fov_mm=(196.0, 236.0), top_margin_mm=12.0, inferior_crop_mm=-16.0, white_level=500,
    ),
    Domain(
        name="siemens_3", spacing=(1.33, 1.0, 1.0),
        response=(0.0, 0.04, 0.14, 0.40, 0.60, 1.0, 1.05, 1.00, 0.95), gamma=1.25,
        scalp_gain=0.75, noise=0.02, bias=0.22, centre_brightening=0.3, psf_mm=(0.4, 0.3, 0.3),
        fov_mm=(200.0, 240.0), top_margin_mm=14.0, inferior_crop_mm=-8.0, white_level=900,
    ),
    Domain(
        name="ge_15", spacing=(1.0, 1.0, 1.0),
        response=(0.0, 0.28, 0.48, 0.68, 0.80, 1.0, 1.70, 2.70, 3.30), gamma=0.7,
        scalp_gain=1.7, noise=0.05, bias=0.08, centre_brightening=0.0, psf_mm=(0.8, 1.3, 1.3),
        fov_mm=(208.0, 248.0), top_margin_mm=18.0, inferior_crop_mm=-32.0, white_level=2400,
    ),
    Domain(
        name="ge_3", spacing=(1.0, 1.0, 1.0),
        response=(0.0, 0.08, 0.22, 0.48, 0.68, 1.0, 1.25, 1.45, 1.60), gamma=1.1,
        scalp_gain=0.9, noise=0.025, bias=0.2, centre_brightening=0.25, psf_mm=(0.4, 0.4, 0.4),
        fov_mm=(200.0, 236.0), top_margin_mm=12.0, inferior_crop_mm=-24.0, white_level=1500,
    ),
    Domain(
        name="philips_15", spacing=(1.0, 0.94, 0.94),
        response=(0.0, 0.18, 0.36, 0.62, 0.80, 1.0, 0.95, 0.85, 0.80), gamma=1.4,
        scalp_gain=0.5, noise=0.045, bias=0.07, centre_brightening=0.0, psf_mm=(0.6, 1.1, 1.1),
        fov_mm=(192.0, 230.0), top_margin_mm=12.0, inferior_crop_mm=4.0, white_level=300,
        inplane_spacings=(0.889, 0.9, 0.92, 0.9375, 0.95, 0.96, 0.98, 1.0),
    ),
    Domain(
        name="philips_3", spacing=(1.0, 1.0, 1.0),
        response=(0.0, 0.06, 0.18, 0.45, 0.66, 1.0, 1.60, 2.50, 3.00), gamma=0.55,
        scalp_gain=1.5, noise=0.03, bias=0.22, centre_brightening=0.2, psf_mm=(0.3, 0.5, 0.5),
        fov_mm=(196.0, 232.0), top_margin_mm=12.0, inferior_crop_mm=0.0, white_level=700,
        inplane_spacings=(0.982, 1.0),
    ),
)
DOMAIN_NAMES = tuple(d.name for d in DOMAINS)
