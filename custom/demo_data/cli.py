"""The ``brain-extraction-demo-data`` command (``python scripts/make_demo_data.py`` from a checkout)."""

from __future__ import annotations

import sys

from custom.demo_data.write import make_demo_data

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    """Write the demo dataset; bad options and a non-empty output folder are one ``make_demo_data: error:`` line."""
    import fire

    from custom.options import refuse_unknown_options

    def cli(
        output_dir: str = "demo_data",
        n_subjects: int = 8,
        seed: int = 0,
        resolution: str = "small",
        overwrite: bool = False,
        workers: int = 1,
    ) -> None:
        make_demo_data(output_dir, n_subjects, seed, resolution, overwrite, workers)

    cli.__doc__ = make_demo_data.__doc__
    try:
        fire.Fire(cli, command=refuse_unknown_options(cli, argv, "make_demo_data: error: "), name="make_demo_data")
    except (ValueError, FileNotFoundError) as err:
        print(f"make_demo_data: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
