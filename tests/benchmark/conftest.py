"""One quick CPU benchmark run (a real process writing its JSON), shared by the benchmark tests."""

import pytest

from tests.benchmark.common import run_script


@pytest.fixture(scope="package")
def quick_cpu(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "tmp" / "bench.json"
    proc = run_script("--quick", "--device", "cpu", "--output", str(out))
    return proc, out
