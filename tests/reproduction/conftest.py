"""The tiny demo dataset (two subjects per scanner) the reproduction tests plan and run on."""

import pytest


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    from custom.demo_data import make_demo_data

    return make_demo_data(str(tmp_path_factory.mktemp("data") / "demo"), n_subjects=2, seed=3, verbose=False)
