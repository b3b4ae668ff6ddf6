"""Names in an exported bundle (files, config ids) and the export's one error type."""

from __future__ import annotations

from custom.checkpoints import HASH_KEY
from custom.weights import LARGE_FILES, META

__all__ = [
    "ADAPTER", "CODE_ID", "ExportError", "HASH_KEY", "LARGE_FILES", "LARGE_FILE_MB", "META", "MODEL", "ONNX",
    "SHIPPED_KEY", "SOURCE", "TORCHSCRIPT", "WEIGHTS_ID",
]

SHIPPED_KEY = "shipped_weights_sha256"  # in a repository bundle's metadata: the weights its docs describe
LARGE_FILE_MB = 25.0
MODEL, SOURCE, ADAPTER, TORCHSCRIPT, ONNX = (
    "models/model.pt", "models/source_model.pt", "models/adapter.pt", "models/model.ts", "models/model.onnx",
)
CODE_ID = "custom_code"  # config id of the bundle's own `custom` package
WEIGHTS_ID = "custom_weights"  # config id of its `custom.weights` (the weight checks)


class ExportError(ValueError):
    """Bad input to the export: the message is one line, printed as ``export_bundle: error: <message>``."""
