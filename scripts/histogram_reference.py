"""Build a source-domain intensity reference for histogram matching (``--histogram_reference`` of the bundles).

Every scan at ``--scans`` (a folder, searched recursively, or one volume; with ``--domain``, the scans of that
domain in a CC359-like folder) is preprocessed as the bundles do, and the quantiles of its voxels inside the head
are averaged over the scans (``custom.histogram``)::

    python scripts/histogram_reference.py --scans demo_data --domain siemens_15 --output siemens_15_histogram.json
    python -m monai.bundle run --config_file bundles/brain_extraction_source/configs/inference.yaml \\
        --dataset_dir <target scans> --output_dir <out> --histogram_reference siemens_15_histogram.json

Use the same ``--spacing`` and ``--orientation`` as the bundle runs that will use the reference.
"""

from __future__ import annotations

import sys
from pathlib import Path


def histogram_reference(scans: str, output: str, domain: str = "", spacing: tuple = (1.0, 0.95, 0.95),
                        orientation: str = "RAS", n_levels: int = 1001, threshold: float = 0.0) -> Path:
    """Write the reference of the scans at ``scans`` (of ``domain``, if given) to ``output`` (JSON)."""
    from custom.cc359 import index_dataset
    from custom.histogram import reference_from_scans

    if not str(output).strip():
        raise ValueError("--output: give the reference file to write")
    files = str(scans)
    if domain:
        files = [s.image for s in index_dataset(scans) if s.domain == domain]
        if not files:
            raise ValueError(f"{scans}: no scans of domain {domain!r}")
    reference = reference_from_scans(files, [float(s) for s in spacing], orientation, int(n_levels), float(threshold))
    path = reference.save(output)
    print(f"histogram_reference: {reference.n_scans} scans -> {path}", flush=True)
    return path


def main(argv: list[str] | None = None) -> None:
    import fire

    from custom.cc359 import DatasetError
    from custom.options import refuse_unknown_options
    from custom.transforms import InputError

    try:
        fire.Fire(histogram_reference, serialize=lambda _: None, name="histogram_reference",
                  command=refuse_unknown_options(histogram_reference, argv, "histogram_reference: error: "))
    except (InputError, DatasetError, ValueError, FileNotFoundError) as err:
        print(f"histogram_reference: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
