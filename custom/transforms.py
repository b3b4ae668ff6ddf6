"""The paper's preprocessing as MONAI dictionary transforms: the one definition every bundle uses.

`preprocessing(...)` = load -> check -> orient (RAS by default; ``orientation=None`` keeps the stored array order, as
the paper) -> resample to (1, 0.95, 0.95) mm (cubic for the image; for the mask linear by default or cubic as the
paper, then threshold at 0.5) -> clip to the volume's [1st, 99th] percentile and scale to [0, 1].
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    AsDiscreted,
    Compose,
    DivisiblePadd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    Orientationd,
    ScaleIntensityRangePercentilesd,
    Spacingd,
)

__all__ = [
    "ApplyMaskd", "InputError", "LikeInputd", "LoadVolumed", "ValidateVolumed", "checks", "find_volumes", "mirror_root",
    "mask_mode", "orientation_codes", "preprocessing", "source_name",
]

PAPER_SPACING = (1.0, 0.95, 0.95)
MASK_INTERPOLATIONS = {"linear": "bilinear", "cubic": 3}  # option -> MONAI Spacing mode (3: cubic spline)
STORED_ORIENTATION = ("", "none", "stored")  # orientation values (and None) that keep the stored array order
# The largest volume read: 512^3 voxels (0.5 GiB as float32; a 1 mm head is 176 x 256 x 256 = 11.5 M). Checked from
# the file's header before any voxel is read or decompressed, so a header claiming more (or a gzip bomb) is refused.
MAX_VOXELS = 512**3


def orientation_codes(orientation: str | None) -> str | None:
    """Axis codes to reorient to (``"RAS"``), or None to keep the array order as stored (None, "", "none", "stored")."""
    if orientation is None or str(orientation).strip().lower() in STORED_ORIENTATION:
        return None
    codes = str(orientation).strip().upper()
    if len(codes) != 3 or sorted(codes.replace("L", "R").replace("P", "A").replace("I", "S")) != ["A", "R", "S"]:
        raise ValueError(f"orientation must be three axis codes such as RAS or LPS, or none, got {orientation!r}")
    return codes


def mask_mode(mask_interpolation: str) -> str | int:
    """The MONAI resampling mode of a mask interpolation option: linear (bilinear) or cubic (spline order 3)."""
    key = str(mask_interpolation).strip().lower()
    if key not in MASK_INTERPOLATIONS:
        valid = ", ".join(MASK_INTERPOLATIONS)
        raise ValueError(f"mask_interpolation must be one of {valid}, got {mask_interpolation!r}")
    return MASK_INTERPOLATIONS[key]


class InputError(ValueError):
    """A volume that cannot be used; the message names the file and the problem in one line."""


def source_name(data: Mapping, key: Hashable) -> str:
    """The file a (Meta)tensor came from, for error messages."""
    value = data.get(key)
    meta = getattr(value, "meta", None) or {}
    name = meta.get("filename_or_obj") or data.get(f"{key}_path") or "<in-memory volume>"
    return str(name)


class ValidateVolumed(MapTransform):
    """Reject what would silently produce garbage; squeeze a singleton 4th axis.

    Checks each key: a 3D volume (channel-first ``(1, H, W, D)`` after loading), finite voxels, not constant; for
    ``label_key`` also binary and non-empty, and the same shape and geometry as ``image_key``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        image_key: str = "image",
        label_key: str | None = "label",
        atol_mm: float = 1e-3,
        spacing_range_mm: tuple[float, float] = (0.05, 20.0),
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.image_key, self.label_key = image_key, label_key
        self.atol_mm, self.spacing_range_mm = atol_mm, spacing_range_mm

    def _volume(self, d: dict, key: Hashable) -> torch.Tensor:
        x, name = d[key], source_name(d, key)
        # Channel-first after LoadImaged(ensure_channel_first=True): a 4D file arrives as (C=t, H, W, D).
        if x.ndim == 5 and x.shape[-1] == 1:
            x = x[..., 0]
        if x.ndim == 4 and x.shape[0] != 1:
            raise InputError(f"{name}: expected one 3D volume, got a 4D image with {x.shape[0]} volumes")
        if x.ndim != 4:
            spatial = max(x.ndim - 1, 0)
            raise InputError(f"{name}: expected a 3D volume, got {spatial}D data of shape {tuple(x.shape[1:])}")
        if min(x.shape[1:]) < 2:
            raise InputError(f"{name}: expected a 3D volume, got shape {tuple(x.shape[1:])}")
        if not torch.isfinite(torch.as_tensor(x)).all():
            raise InputError(f"{name}: contains NaN or infinite voxels")
        if isinstance(x, MetaTensor):
            spacing = np.asarray(x.pixdim, dtype=float)
            lo, hi = self.spacing_range_mm
            if not np.all((spacing >= lo) & (spacing <= hi)):
                raise InputError(f"{name}: implausible voxel spacing {tuple(np.round(spacing, 4))} mm")
            axes = np.asarray(x.affine, dtype=float)[:3, :3]
            if abs(np.linalg.det(axes)) <= 1e-6 * float(np.prod(np.linalg.norm(axes, axis=0))):
                raise InputError(f"{name}: singular affine (two voxel axes point the same way); cannot orient it")
        return x

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self._volume(d, key)
        if self.image_key in d:
            image = d[self.image_key]
            if float(image.max()) == float(image.min()):
                raise InputError(f"{source_name(d, self.image_key)}: the image is constant ({float(image.min())})")
        if self.label_key and self.label_key in d:
            self._check_label(d)
        return d

    def _check_label(self, d: dict) -> None:
        label, name = d[self.label_key], source_name(d, self.label_key)
        values = torch.unique(torch.as_tensor(label))
        if not bool(torch.all((values == 0) | (values == 1))):
            raise InputError(f"{name}: the mask is not binary (values {values[:6].tolist()}...)")
        if not bool((values == 1).any()):
            raise InputError(f"{name}: the mask is empty")
        if self.image_key in d:
            image = d[self.image_key]
            if tuple(image.shape[1:]) != tuple(label.shape[1:]):
                raise InputError(
                    f"{name}: mask shape {tuple(label.shape[1:])} differs from image shape "
                    f"{tuple(image.shape[1:])} ({source_name(d, self.image_key)})"
                )
            if isinstance(image, MetaTensor) and isinstance(label, MetaTensor):
                if not torch.allclose(image.affine.double(), label.affine.double(), atol=self.atol_mm):
                    raise InputError(
                        f"{name}: mask geometry (affine) differs from the image's ({source_name(d, self.image_key)})"
                    )


def header_shape(path: str | Path) -> tuple[int, ...] | None:
    """A volume file's shape from its header alone (NIfTI through nibabel, NRRD/MHA/MHD through ITK's image IO),
    without reading or decompressing its voxels; ``None`` where it cannot tell (DICOM series, unknown formats)."""
    name = str(path).lower()
    if name.endswith((".nii", ".nii.gz", ".hdr", ".img")):
        import nibabel as nib

        return tuple(int(n) for n in nib.load(str(path)).shape)  # lazy: header only
    if name.endswith((".nrrd", ".nhdr", ".mha", ".mhd")):
        import itk

        io = itk.ImageIOFactory.CreateImageIO(str(path), itk.CommonEnums.IOFileMode_ReadMode)
        if io is None:
            return None
        io.SetFileName(str(path))
        io.ReadImageInformation()
        return (*[int(io.GetDimensions(i)) for i in range(io.GetNumberOfDimensions())],
                int(io.GetNumberOfComponents()))
    return None


class LoadVolumed(LoadImaged):
    """``LoadImaged`` whose failures name the file: missing, truncated, corrupt, unreadable, or larger than
    ``max_voxels`` by its header (refused before any voxel is read, so a forged header or a gzip bomb costs no
    memory)."""

    def __init__(self, *args, max_voxels: int = MAX_VOXELS, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_voxels = int(max_voxels)

    def __call__(self, data, reader=None):
        for key in self.key_iterator(dict(data)):
            path = data[key]
            if isinstance(path, str | Path) and not Path(path).exists():
                raise InputError(f"{path}: file not found")
            if isinstance(path, str | Path) and Path(path).is_file():
                self._check_size(path)
        try:
            return super().__call__(data, reader)
        except Exception as e:
            names = [str(data[k]) for k in self.key_iterator(dict(data))]
            cause = e.__cause__ or e.__context__ or e
            detail = " ".join(str(cause).split())[:200] or type(cause).__name__
            raise InputError(f"{' / '.join(names)}: cannot read as a medical image ({detail})") from e

    def _check_size(self, path: str | Path) -> None:
        try:
            shape = header_shape(path)
        except Exception as e:  # noqa: BLE001 - an unreadable header: the reader below names the problem
            detail = " ".join(str(e).split())[:200] or type(e).__name__
            raise InputError(f"{path}: cannot read as a medical image ({detail})") from e
        voxels = int(np.prod(shape, dtype=np.float64)) if shape else 0
        if voxels > self.max_voxels:
            raise InputError(f"{path}: its header claims {' x '.join(map(str, shape))} = {voxels:,} voxels, more than "
                             f"the {self.max_voxels:,} this bundle reads (custom.transforms.MAX_VOXELS)")


class SafeSpacingd(Spacingd):
    """``Spacingd`` that leaves non-dict ``<key>_*`` entries alone: MONAI Label puts ``image_path`` (a str) in the
    data, and monai 1.6.1's ``Spacingd`` calls ``.update(meta)`` on every ``<key>_*`` entry of a NIfTI input."""

    def __call__(self, data, lazy=None):
        d = dict(data)
        prefixes = tuple(f"{k}_" for k in self.keys)
        hidden = {k: d.pop(k) for k in list(d)
                  if isinstance(k, str) and k.startswith(prefixes) and not isinstance(d[k], dict)}
        d = super().__call__(d, lazy=lazy)
        d.update(hidden)
        return d


class ApplyMaskd(MapTransform):
    """Skull-strip: ``output_key = image_key * (mask_key > 0)``, both already in the same geometry."""

    def __init__(self, image_key: str, mask_key: str, output_key: str = "stripped"):
        super().__init__([image_key, mask_key])
        self.image_key, self.mask_key, self.output_key = image_key, mask_key, output_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        image, mask = d[self.image_key], d[self.mask_key]
        if tuple(image.shape[1:]) != tuple(mask.shape[1:]):
            raise InputError(
                f"{source_name(d, self.image_key)}: mask shape {tuple(mask.shape[1:])} does not match the image"
            )
        stripped = image * (torch.as_tensor(mask) > 0).to(image.dtype)
        if isinstance(image, MetaTensor) and not isinstance(stripped, MetaTensor):
            stripped = MetaTensor(stripped, meta=image.meta)
        d[self.output_key] = stripped
        return d


class LikeInputd(MapTransform):
    """Give written NIfTI outputs the input file's own format: shape (a 4D single-volume input gives a 4D mask),
    header (qform/sform codes, units, description) and, for the skull-stripped image, its data type and scaling.

    Runs after ``SaveImaged(..., savepath_in_metadict=True)`` and rewrites each file in place (same folder). A mask
    (``mask_key``) is stored as uint8; ``stripped_key`` is recomputed from the input's stored values times the mask,
    so the voxels inside the brain are bit for bit the input's. Inputs that are not NIfTI files (DICOM series,
    NRRD, ...) keep MONAI's output as written.
    """

    def __init__(self, mask_key: str = "pred", stripped_key: str | None = "stripped", source_key: str = "image"):
        keys = [mask_key] + ([stripped_key] if stripped_key else [])
        super().__init__(keys, allow_missing_keys=True)
        self.mask_key, self.stripped_key, self.source_key = mask_key, stripped_key, source_key

    def __call__(self, data: Mapping) -> dict:
        import nibabel as nib

        d = dict(data)
        source = source_name(d, self.source_key)
        if not str(source).endswith((".nii", ".nii.gz")) or not Path(source).is_file():
            return d
        original = nib.load(source)
        mask_file = (getattr(d.get(self.mask_key), "meta", {}) or {}).get("saved_to")
        if not mask_file:
            return d
        from custom.storage import verify_written

        verify_written(mask_file)  # MONAI's writer may have cut it short without an error (a full disk)
        mask = np.asanyarray(nib.load(mask_file).dataobj).astype(np.uint8)
        if mask.size != int(np.prod(original.shape)):
            raise InputError(f"{source}: mask of shape {mask.shape} does not fit the input's {original.shape}")
        mask = mask.reshape(original.shape)
        _write_like(original, mask, np.uint8, mask_file)
        stripped_file = (getattr(d.get(self.stripped_key), "meta", {}) or {}).get("saved_to") if (
            self.stripped_key) else None
        if stripped_file:
            stored = np.asanyarray(original.dataobj.get_unscaled())
            _write_like(original, stored * mask.astype(stored.dtype), stored.dtype, stripped_file, keep_scaling=True)
        return d


def _write_like(original, array: np.ndarray, dtype, path: str, keep_scaling: bool = False) -> None:
    import nibabel as nib

    header = original.header.copy()
    header.set_data_dtype(dtype)
    image = type(original)(array, None, header=header)
    if not keep_scaling:
        image.header.set_slope_inter(1.0, 0.0)
    else:
        image.header.set_slope_inter(*original.header.get_slope_inter())
    from custom.checkpoints import atomic_write
    from custom.storage import verify_written

    suffix = ".nii.gz" if str(path).endswith(".gz") else ".nii"
    atomic_write(path, lambda tmp: nib.save(image, tmp), verify=verify_written, suffix=suffix)


def checks(keys: Sequence[str] = ("image", "label"), load: bool = True) -> list:
    """Read and validate: the first steps of the preprocessing, and alone a quick check of a dataset's scans."""
    keys = list(keys)
    steps: list = [LoadVolumed(keys, ensure_channel_first=True, image_only=True)] if load else []
    steps.append(ValidateVolumed(keys, image_key=keys[0], label_key=keys[1] if len(keys) > 1 else None))
    return steps


def preprocessing(
    keys: Sequence[str] = ("image", "label"),
    spacing: Sequence[float] = PAPER_SPACING,
    orientation: str | None = "RAS",
    percentiles: tuple[float, float] = (1.0, 99.0),
    mask_interpolation: str = "linear",
    load: bool = True,
    keep_original: str | None = None,
    divisible_by: int = 8,
    histogram_reference=None,
) -> Compose:
    """The paper's preprocessing for ``keys`` (the first is the image; a second, if any, is its brain mask).

    Args:
        spacing: target voxel size in mm (the paper: 1 x 0.95 x 0.95).
        orientation: axis codes to reorient to first, so the 2D model always slices along the same anatomical
            axis whatever the file's storage order; ``None`` (or ``"none"``) keeps the array order as stored, as
            the paper's code did (it slices the stored array along its last axis).
        mask_interpolation: how the mask is resampled before the 0.5 threshold: ``"linear"``, or ``"cubic"`` (the
            same spline as the image, as the paper's code).
        load: start by reading files (``False`` when the dict already holds tensors).
        keep_original: also keep the loaded, checked image under this key (e.g. to skull-strip it later).
        histogram_reference: a source-domain intensity reference (``custom.histogram``; a JSON file or the object):
            match the scaled image's foreground to it. Empty or None: off.
        divisible_by: centre-pad each slice (the first two axes) to a multiple of this, with 0 = the scaled image's
            minimum, so whole slices fit the U-Net; inverted with everything else.
    """
    keys = list(keys)
    image_key, label_key = keys[0], (keys[1] if len(keys) > 1 else None)
    orientation, label_mode = orientation_codes(orientation), mask_mode(mask_interpolation)
    steps = checks(keys, load)
    steps.append(EnsureTyped(keys, dtype=torch.float32, track_meta=True))
    if keep_original:
        from monai.transforms import CopyItemsd

        steps.append(CopyItemsd(keys=image_key, names=keep_original))
    if orientation:
        steps.append(Orientationd(keys, axcodes=orientation, labels=(("L", "R"), ("P", "A"), ("I", "S"))))
    steps.append(SafeSpacingd(image_key, pixdim=tuple(spacing), mode=3, padding_mode="nearest"))
    if label_key:
        steps.append(SafeSpacingd(label_key, pixdim=tuple(spacing), mode=label_mode, padding_mode="zeros"))
        steps.append(AsDiscreted(label_key, threshold=0.5))
    lower, upper = percentiles
    steps.append(
        ScaleIntensityRangePercentilesd(image_key, lower=lower, upper=upper, b_min=0.0, b_max=1.0, clip=True)
    )
    if histogram_reference is not None and str(histogram_reference).strip():
        from custom.histogram import HistogramMatchd

        steps.append(HistogramMatchd(image_key, histogram_reference))
    if divisible_by > 1:
        steps.append(DivisiblePadd(keys, k=(divisible_by, divisible_by, 1), mode="constant", method="symmetric"))
    return Compose(steps)


def _staging(part: str) -> bool:
    """A staging folder of ``custom.handlers.CommitOnCompletion`` (``.partial-<pid>``, or ``.<out>.partial-<pid>``
    beside the output folder in older versions): never input, even when a killed run left it in the input tree."""
    return part.startswith(".") and ".partial-" in part and part.rsplit("-", 1)[-1].isdigit()


def find_volumes(folder: str | Path, exclude: str | Path | None = None) -> list[dict]:
    """Every volume at ``folder``: NIfTI, NRRD, MHA/MHD files and DICOM series (one folder of .dcm each) below it;
    ``folder`` may also be one volume itself (a file, or a DICOM series folder).

    ``exclude``: the run's output folder. Below ``folder`` it is left out of the input (and staging folders are
    never input), so a rerun does not read earlier masks as scans; ``exclude`` equal to ``folder`` is refused
    (the masks would be mixed with the scans).
    """
    from custom.storage import OutputError, inside

    folder = Path(folder)
    suffixes = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")
    if folder.is_file() and folder.name.lower().endswith(suffixes):
        return [{"image": str(folder)}]
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder (or NIfTI, NRRD or MHA file)")
    if exclude and os.path.realpath(folder) == os.path.realpath(exclude):
        raise OutputError(f"{Path(exclude).absolute()}: output_dir is the input folder (dataset_dir); a rerun would "
                          "read the masks as scans: choose another output_dir")

    def wanted(p: Path) -> bool:
        parts = p.relative_to(folder).parts
        return not any(_staging(part) for part in parts) and not (exclude and inside(p, exclude))

    found = [p for p in folder.rglob("*") if wanted(p) and p.is_file()]
    files = sorted(p for p in found if p.name.lower().endswith(suffixes))
    dicom_dirs = sorted({p.parent for p in found if p.suffix.lower() == ".dcm"})
    items = [{"image": str(p)} for p in files] + [{"image": str(d)} for d in dicom_dirs]
    if not items:
        raise InputError(f"{folder}: no NIfTI, NRRD, MHA or DICOM volumes found")
    # outputs mirror the input folders, named as SaveImaged does (without .gz and one more extension):
    # a.nii and a.nii.gz side by side would write the same mask
    seen: dict[Path, Path] = {}
    for path in [*files, *dicom_dirs]:
        root, ext = os.path.splitext(path.name)
        stem = path.parent / (os.path.splitext(root)[0] if ext == ".gz" else root)
        if stem in seen:
            raise InputError(f"{path}: same name as {seen[stem]}; their masks would overwrite each other")
        seen[stem] = path
    return items


def mirror_root(dataset_dir: str | Path) -> str:
    """The folder whose layout the outputs mirror (``SaveImaged(data_root_dir=...)``): ``dataset_dir``, or its
    parent when ``dataset_dir`` is itself one volume (a file, or a folder of .dcm files), so that an output path
    never climbs out of ``output_dir``."""
    path = Path(dataset_dir)
    if path.is_file() or (path.is_dir() and any(p.suffix.lower() == ".dcm" for p in path.iterdir() if p.is_file())):
        return str(path.parent)
    return str(path)
