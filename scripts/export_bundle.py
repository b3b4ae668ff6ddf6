"""Package one bundle as a self-contained zip to share: configs, the custom code they use, weights with their sha256.

Usage::

    python scripts/export_bundle.py --bundle bundles/brain_extraction_first_layers \\
        --output dist/brain_extraction_first_layers-0.1.1.zip
    python scripts/export_bundle.py --bundle bundles/brain_extraction_first_layers --adapter_only true
    python scripts/export_bundle.py --bundle bundles/brain_extraction_source --torchscript true --onnx true
    python scripts/export_bundle.py --bundle ... --url_base https://example.org/releases/v0.1.1

Options: ``--output`` (default ``dist/<name>-<version>.zip``), ``--adapter_only true`` (fine-tuning bundles: ship
the adapter and the source weights instead of the whole model), ``--weights PATH`` (default
``<bundle>/models/model.pt``; with ``--adapter_only``: the fine-tuned model that source + adapter must reproduce),
``--adapter PATH`` (default ``<bundle>/models/adapter.pt``), ``--source_weights PATH`` (default: as the bundle's
train.yaml names them), ``--torchscript true`` / ``--onnx true`` (add ``models/model.ts`` / ``models/model.onnx``),
``--url_base URL`` and ``--large_file_mb 25`` (weight files over this size go to ``large_files.yml``, written beside
the zip in ``<output without .zip>_large_files/``), ``--overwrite true``.

The zip is built in a temporary folder and renamed into place. Bad input (no such bundle, missing weights, an
adapter made for other source weights, an unknown option, an existing output): one line
``export_bundle: error: ...`` on stderr, exit 2, nothing written. See ``custom/packaging/__init__.py`` for the
layout.
"""

from __future__ import annotations

from custom.packaging.cli import main

if __name__ == "__main__":
    main()
