"""``brain-extraction-export`` (or ``python scripts/export_bundle.py``): ``export_bundle`` from the command line; bad
input is one line on stderr and exit code 2."""

from __future__ import annotations

import sys
import textwrap

from custom.packaging.bundle import export_bundle
from custom.packaging.layout import LARGE_FILE_MB, ExportError

__all__ = ["main"]

USAGE = """usage: export_bundle --bundle <folder> [--output <zip>] [--adapter_only true] [--weights <model.pt>]
                     [--adapter <adapter.pt>] [--source_weights <model.pt>] [--torchscript true] [--onnx true]
                     [--url_base <url>] [--large_file_mb 25] [--overwrite true] [--version <version>]
"""


def _cli(
    *unexpected,
    bundle=None,
    output=None,
    adapter_only=False,
    weights=None,
    adapter=None,
    source_weights=None,
    torchscript=False,
    onnx=False,
    url_base=None,
    large_file_mb=LARGE_FILE_MB,
    overwrite=False,
    version=None,
) -> None:
    if unexpected:
        raise ExportError(f"unexpected argument {unexpected[0]!r} (options are --name value)")
    out = export_bundle(bundle, output, adapter_only=adapter_only, weights=weights, adapter=adapter,
                        source_weights=source_weights, torchscript=torchscript, onnx=onnx, url_base=url_base,
                        large_file_mb=large_file_mb, overwrite=overwrite, version=version)
    print(f"export_bundle: wrote {out}", file=sys.stderr)


_cli.__doc__ = export_bundle.__doc__


def main(argv: list[str] | None = None) -> None:
    """``export_bundle --bundle <folder> [--output <zip>] [...]``; bad input: one line on stderr, exit 2."""
    import fire

    from custom.options import refuse_unknown_options

    args = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in args):  # the usage and export_bundle's documentation, not fire's help
        print(USAGE + "\n" + textwrap.dedent("    " + (export_bundle.__doc__ or "")))
        return
    try:
        fire.Fire(_cli, command=refuse_unknown_options(_cli, args, "export_bundle: error: "), name="export_bundle")
    except ExportError as e:
        print(f"export_bundle: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
