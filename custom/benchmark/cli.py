"""The ``brain-extraction-benchmark`` command (``python scripts/benchmark.py`` from a checkout): measure, or render."""

from __future__ import annotations

import contextlib
import inspect
import json
import sys
from pathlib import Path

from custom import benchmark as package
from custom.benchmark.report import render_markdown, render_text
from custom.benchmark.run import run_benchmark
from custom.benchmark.settings import UsageError, flag_option, resolve_settings
from custom.benchmark.timing import log

__all__ = ["benchmark", "main"]


def _fail(message: str) -> None:
    print(f"benchmark: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def benchmark(
    *extra,
    device: str = "auto",
    batch_size: int | None = None,
    roi: int | None = None,
    steps: int | None = None,
    repeats: int | None = None,
    warmup: int | None = None,
    quick: bool = False,
    compile: bool = False,
    markdown: bool = False,
    output: str | None = None,
    from_json: str | None = None,
    **unknown,
) -> None:
    """Measure, print ONE table of ratios, and optionally write the results as JSON.

    Args:
        device: auto | cpu | cuda (auto: cuda when available).
        batch_size: training batch (default 32; 4 with --quick).
        roi: training crop side, a multiple of 8 (default 256; 64 with --quick).
        steps: steps per timed block (default: 20 on cuda, 1 on cpu).
        repeats: timed blocks per measurement, the median reported (default: 5 on cuda, 3 on cpu, 2 with --quick).
        warmup: untimed warm-up steps per measurement (default: 10 on cuda, 1 on cpu).
        quick: tiny sizes (64x64 crops, a 48x64x64 volume, few steps): seconds, for tests.
        compile: also time the bare step under torch.compile.
        markdown: print the table as Markdown (to paste into docs).
        output: write the results (numbers, table, device, versions, date, settings) to this JSON file.
        from_json: render the table of a saved results JSON instead of measuring.
    """
    try:
        if extra:
            raise UsageError(f"unexpected argument(s): {' '.join(map(str, extra))}")
        if unknown:
            raise UsageError(f"unknown option(s): {' '.join('--' + k for k in unknown)}")
        as_markdown = flag_option(markdown, "markdown")
        if output is not None and (not isinstance(output, str) or not output or Path(output).is_dir()):
            raise UsageError(f"--output must be a JSON file path, got {output!r}")
        if from_json is not None:
            if not isinstance(from_json, str) or not Path(from_json).is_file():
                raise UsageError(f"--from_json {from_json!r}: no such file")
            try:
                results = json.loads(Path(from_json).read_text())
                text = render_markdown(results) if as_markdown else render_text(results)
            except (ValueError, KeyError, TypeError) as e:
                raise UsageError(f"--from_json {from_json}: not a benchmark results file ({e!r})") from None
            print(text)
            return
        settings = resolve_settings(device, batch_size, roi, steps, repeats, warmup, quick, compile)
    except UsageError as e:
        _fail(str(e))
    with contextlib.redirect_stdout(sys.stderr):  # the engines' log lines: stdout holds the table only
        results = run_benchmark(settings)
    print(render_markdown(results) if as_markdown else render_text(results), flush=True)
    if output is not None:
        path = Path(output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
        log(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    import fire

    from custom.options import refuse_unknown_options

    args = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in args):
        print(package.__doc__.strip() + "\n\nOptions (--name value):\n")
        print(inspect.cleandoc(benchmark.__doc__).split("Args:\n", 1)[1])
        return
    fire.Fire(benchmark, command=refuse_unknown_options(benchmark, args, "benchmark: error: "), name="benchmark")


if __name__ == "__main__":
    main()
