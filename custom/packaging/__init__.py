"""Sharing a bundle: one self-contained zip whose weights are checked against the hashes its metadata records.

``export_bundle(...)`` (command line: ``brain-extraction-export`` or ``scripts/export_bundle.py``) packages one bundle
of this repository as a zip holding one folder, the bundle's name::

    <name>/LICENSE
    <name>/configs/{inference,evaluate,train,multi_gpu_train}.yaml, logging.conf   real files (symlinks resolved)
    <name>/configs/metadata.json        + "weights_sha256": {"models/model.pt": "<sha256>", ...}
    <name>/custom/...                   the code the configs use (imported from the bundle, no install needed)
    <name>/docs/...
    <name>/models/model.pt              the network's weights; or, with ``adapter_only``, models/adapter.pt +
                                        models/source_model.pt (the source weights the adapter was made from)
    <name>/models/source_model.pt       fine-tuning bundles: the source U-Net (further fine-tuning starts from it)
    <name>/models/model.ts, model.onnx  with ``torchscript`` / ``onnx``
    <name>/large_files.yml              weight files over ``large_file_mb`` (left out of the zip, written beside it)

Custom code: the exported configs never ``$import custom`` (MONAI evaluates import statements before anything can
put the bundle on ``sys.path``, and a failed one only becomes a placeholder). Their ``custom_code`` component imports
``custom`` after putting the bundle root (``--bundle_root``) first on ``sys.path``; every ``custom.…`` expression
reads ``@custom_code.…`` and every ``_target_: custom.…`` component ``_requires_`` it, so the bundle's own copy of the
code runs from any working directory, in an environment holding only the PyPI packages of its metadata. This
package itself is not shipped.

Hashes: the exported configs read each weight file through ``@custom_weights.verified(path, bundle_root)`` and
inference starts (right after turning on the one-line errors) with ``verify_bundle(bundle_root)`` (``custom.weights``).
The repository's bundles record ``weights_sha256`` too (``scripts/sync_bundles.py``); every load checks it
(``custom.checkpoints.check_recorded_hash``) and a bundle's own training re-records the files it writes.

Modules: ``layout`` (names in an exported bundle), ``configs`` (config rewriting), ``code`` (which modules ship),
``models`` (weight files, TorchScript / ONNX), ``archive`` (zip, large files, publishing), ``bundle`` (the export's
steps), ``cli`` (the command line).
"""

from custom.packaging.bundle import export_bundle
from custom.packaging.cli import main
from custom.packaging.code import code_modules
from custom.packaging.layout import ExportError

__all__ = ["ExportError", "code_modules", "export_bundle", "main"]
