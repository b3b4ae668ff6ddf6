"""MONAI Label serves a minimal 2D bundle: start the server, run one inference, upload one label.

Runs in the MONAI Label environment (.venv-label/, from requirements-label.txt) through tests.label_server; it
is skipped only when that environment has not been built.
"""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from custom.networks import UNet2D
from tests.label_server import LabelServer, label_python

pytestmark = pytest.mark.slow

BUNDLE = "brain_smoke"
# Sides that are not multiples of 8, so the padding for UNet2D and its inversion are exercised.
SHAPE = (37, 45, 30)
AFFINE = np.array([[-1.2, 0.0, 0.0, 90.0], [0.0, 1.1, 0.0, -120.0], [0.0, 0.0, 1.5, -60.0], [0.0, 0.0, 0.0, 1.0]])

METADATA = {
    "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json",
    "version": "0.0.1",
    "changelog": {"0.0.1": "smoke-test bundle"},
    "monai_version": "1.6.1",
    "pytorch_version": "2.14.1",
    "numpy_version": "1.26.4",
    "required_packages_version": {},
    "task": "Brain extraction (server smoke test)",
    "description": "Randomly initialised 2D U-Net applied slice by slice",
    "authors": "tests",
    "copyright": "tests",
    "network_data_format": {
        "inputs": {
            "image": {
                "type": "image",
                "format": "magnitude",
                "modality": "MR",
                "num_channels": 1,
                "spatial_shape": ["8*n", "8*n"],
                "dtype": "float32",
                "value_range": [],
                "is_patch_data": False,
                "channel_def": {"0": "image"},
            }
        },
        "outputs": {
            "pred": {
                "type": "image",
                "format": "segmentation",
                "num_channels": 1,
                "spatial_shape": ["8*n", "8*n"],
                "dtype": "float32",
                "value_range": [0, 1],
                "is_patch_data": False,
                "channel_def": {"0": "background", "1": "brain"},
            }
        },
    },
}

# MONAI Label drops SaveImaged from `postprocessing` and appends its own restore step; Invertd undoes the
# padding so the mask comes back on the study's grid.
INFERENCE_YAML = """\
imports:
  - $import torch
bundle_root: .
device: "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')"
network_def:
  _target_: custom.networks.UNet2D
  in_channels: 1
  out_channels: 1
network: $@network_def.to(@device)
preprocessing:
  _target_: Compose
  transforms:
    - _target_: LoadImaged
      keys: image
    - _target_: EnsureChannelFirstd
      keys: image
    - _target_: NormalizeIntensityd
      keys: image
      nonzero: true
    - _target_: DivisiblePadd
      keys: image
      k: [8, 8, 1]
inferer:
  _target_: SliceInferer
  roi_size: [-1, -1]
  spatial_dim: 2
  sw_batch_size: 16
  progress: false
postprocessing:
  _target_: Compose
  transforms:
    - _target_: Activationsd
      keys: pred
      sigmoid: true
    - _target_: Invertd
      keys: pred
      transform: "@preprocessing"
      orig_keys: image
      nearest_interp: false
    - _target_: AsDiscreted
      keys: pred
      threshold: 0.5
    - _target_: SaveImaged
      keys: pred
      output_dir: "$@bundle_root + '/eval'"
"""


def _make_bundle(root: Path) -> Path:
    bundle = root / BUNDLE
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    (bundle / "configs" / "metadata.json").write_text(json.dumps(METADATA, indent=2))
    (bundle / "configs" / "inference.yaml").write_text(INFERENCE_YAML)
    torch.manual_seed(0)
    torch.save(UNet2D(in_channels=1, out_channels=1).state_dict(), bundle / "models" / "model.pt")
    return bundle


def _make_study(studies: Path) -> tuple[Path, np.ndarray]:
    studies.mkdir()
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"))
    centre = (np.array(SHAPE) - 1) / 2
    sphere = ((grid - centre[:, None, None, None]) ** 2).sum(0) < 12**2
    rng = np.random.default_rng(0)
    image = (100.0 * sphere + 10.0 * rng.random(SHAPE)).astype(np.float32)
    nib.save(nib.Nifti1Image(image, AFFINE), studies / "sub01.nii.gz")
    return studies / "sub01.nii.gz", sphere.astype(np.uint8)


def test_monaibundle_serves_2d_bundle(tmp_path):
    if not label_python().exists():
        pytest.skip(f"MONAI Label environment not built ({label_python()} missing; see requirements-label.txt)")

    bundle = _make_bundle(tmp_path / "bundles")
    study, sphere = _make_study(tmp_path / "studies")

    with LabelServer(tmp_path / "app", tmp_path / "studies", [bundle], startup_timeout=120) as server:
        assert server.url.startswith("http://127.0.0.1:")
        info = server.info()
        model = info["models"][BUNDLE]
        assert model["dimension"] == 2  # len(inputs.image.spatial_shape)
        assert model["labels"] == {"brain": 1}  # background is dropped
        assert info["datastore"]["total"] == 1

        mask_path = server.infer(BUNDLE, "sub01", params={"device": "cpu"})
        mask = nib.load(mask_path)
        assert mask.shape == SHAPE
        np.testing.assert_allclose(mask.affine, nib.load(study).affine, atol=1e-4)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}

        label = tmp_path / "sub01_label.nii.gz"
        nib.save(nib.Nifti1Image(sphere, AFFINE), label)
        assert server.put_label("sub01", label) == {"image": "sub01", "label": "sub01"}
        assert (tmp_path / "studies" / "labels" / "final" / "sub01.nii.gz").exists()
        assert server.info()["datastore"]["label_tags"] == {"final": 1}

        # The served copy lives in the app, not in the source bundle.
        assert (server.model_dir(BUNDLE) / "models" / "model.pt").exists()
        proc_log = server.log_path

    assert proc_log is not None and proc_log.exists()
