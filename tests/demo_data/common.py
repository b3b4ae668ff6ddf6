"""What the demo-data tests share: the file-name pattern, the subjects per domain, and reading scans back."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from custom.demo_data import DOMAIN_NAMES

NAME = re.compile(r"^CC(\d{4})_(siemens|ge|philips)_(15|3)_(\d{2})_([MF])\.nii\.gz$")
N_SUBJECTS = 2


def read_scans(root: Path) -> dict[str, list[tuple[np.ndarray, np.ndarray, nib.Nifti1Image]]]:
    out: dict[str, list] = {d: [] for d in DOMAIN_NAMES}
    for path in sorted((root / "Original").iterdir()):
        match = NAME.match(path.name)
        assert match, path.name
        image = nib.load(path)
        mask = nib.load(root / "Silver-standard" / path.name.replace(".nii.gz", "_ss.nii.gz"))
        out[f"{match[2]}_{match[3]}"].append((np.asarray(image.dataobj), np.asarray(mask.dataobj), image))
    return out


def normalise(image: np.ndarray) -> np.ndarray:
    """The protocol's intensity preprocessing: clip to the [1, 99] percentiles, min-max to [0, 1]."""
    lo, hi = np.percentile(image, [1, 99])
    return (np.clip(image.astype(np.float64), lo, hi) - lo) / (hi - lo)


def head_mask(image: np.ndarray) -> np.ndarray:
    head = image > 0.1 * np.percentile(image, 99)
    labels, _ = ndi.label(head)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return ndi.binary_fill_holes(labels == sizes.argmax())
