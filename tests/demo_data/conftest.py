"""One small demo dataset (two subjects per scanner), shared by the demo-data tests."""

from pathlib import Path

import pytest

from custom.demo_data import make_demo_data
from tests.demo_data.common import N_SUBJECTS


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("demo") / "data", n_subjects=N_SUBJECTS, seed=0, verbose=False)
