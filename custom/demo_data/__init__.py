"""A small six-scanner demo dataset made from real anatomy, in CC359's official layout.

Every subject is the Colin27 head (``custom/resources``, see its NOTICE) deformed, rescaled and re-posed
(``simulate``), rendered by one of six simulated scanners named after CC359's domains (``scanners``), and written
(``write``) as::

    <output_dir>/Original/CC0001_siemens_15_58_F.nii.gz            int16 image
    <output_dir>/Silver-standard/CC0001_siemens_15_58_F_ss.nii.gz  uint8 0/1 brain mask
    <output_dir>/mosaic.png                                         one axial slice per domain + mask contour

Ids are consecutive over the domains (siemens_15, siemens_3, ge_15, ge_3, philips_15, philips_3); age (20-80) and
sex are drawn at random. ``resolution="small"`` (the default) doubles every domain's spacing, about 2 mm voxels;
``"full"`` keeps CC359's ~1 mm. The same seed gives bit-identical files with any number of worker processes: each
(domain, subject) draws from its own stream ``(seed, domain index, subject index)``.

Usage::

    brain-extraction-demo-data --output_dir demo_data --n_subjects 8 --seed 0 --resolution small
    python -c "from custom.demo_data import make_demo_data; make_demo_data('demo_data', overwrite=True)"
"""

from custom.demo_data.scanners import DOMAIN_NAMES, DOMAINS
from custom.demo_data.write import make_demo_data

__all__ = ["DOMAINS", "DOMAIN_NAMES", "make_demo_data"]
