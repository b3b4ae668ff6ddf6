"""The table (custom.benchmark.report): its rows, the plain-text and Markdown renderings, saved runs re-rendered."""

from __future__ import annotations

import json

import pytest

from custom.benchmark.report import render_markdown, render_text, table_rows
from tests.benchmark.common import ROOT, run_script

RATIO_ROWS = (
    "ratio: bundle loop / bare step",
    "ratio: cpu contiguous / channels_last time",
    "ratio: cpu fp32 channels_last / --precision auto time",
    "ratio: cpu 32 slices / at most 131,072 pixels per pass time",
    "ratio: DeepMind / custom cpu time",
    "ratio: first / full step time",
    "ratio: last / full step time",
)
SAVED_RUNS = sorted((ROOT / "docs" / "benchmarks").glob("*.json"))


def test_quick_cpu_prints_one_table_with_the_ratio_rows(quick_cpu):
    proc, out = quick_cpu
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("benchmark on ")
    assert lines[1].split()[:3] == ["Section", "Measurement", "Result"]
    assert set(lines[2].replace(" ", "")) == {"-"}
    for row in RATIO_ROWS:
        assert sum(row in line for line in lines) >= 1, row
    assert "equal to DeepMind" in proc.stdout and " NO " not in proc.stdout
    # the table and nothing else: every body line is one of the JSON's rows
    assert len(lines) == 3 + len(json.loads(out.read_text())["table"])


def test_markdown_rendering_of_a_saved_run(quick_cpu):
    proc, out = quick_cpu
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = run_script("--from_json", str(out), "--markdown", "true", timeout=300)
    assert md.returncode == 0, md.stderr
    lines = md.stdout.strip().splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert table[0] == "| Section | Measurement | Result |" and table[1] == "|---|---|---:|"
    assert len(table) == 2 + len(json.loads(out.read_text())["table"])
    assert all(line.count(" | ") == 2 for line in table[2:])
    assert any("ratio: bundle loop / bare step" in line for line in table)
    plain = run_script("--from_json", str(out), timeout=300)
    assert plain.returncode == 0 and plain.stdout == proc.stdout


@pytest.mark.parametrize("path", SAVED_RUNS, ids=[p.stem for p in SAVED_RUNS])
def test_the_documented_runs_render_to_the_tables_they_recorded(path):
    results = json.loads(path.read_text())
    rows = table_rows(results)
    assert [list(row) for row in rows] == results["table"]
    text = render_text(results).splitlines()
    assert text[0].startswith("benchmark on ") and len(text) == 3 + len(rows)
    markdown = render_markdown(results).splitlines()
    assert markdown[0].startswith("*benchmark on ") and len(markdown) == 4 + len(rows)
    assert "\\|diff\\|" in render_markdown(results)  # the pipes of the equality rows escaped
    # runs saved before the --precision auto rows existed still render, without them
    assert any("--precision auto" in row[1] for row in rows) == ("bundle_auto" in results["inference"]["cpu"])
    assert any("pixels per pass" in row[1] for row in rows) == ("bundle_auto_batch_size" in results["inference"]["cpu"])


def test_saved_documented_runs_exist():
    assert len(SAVED_RUNS) >= 2
