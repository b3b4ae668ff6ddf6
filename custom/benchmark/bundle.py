"""The source bundle the benchmark measures: its folder, its configs, and components built from their sections."""

from __future__ import annotations

import copy
from pathlib import Path

__all__ = ["ROOT", "SOURCE_BUNDLE", "instantiate", "source_config"]

ROOT = Path(__file__).resolve().parents[2]  # the repository: custom/benchmark/ is two levels below it
SOURCE_BUNDLE = ROOT / "bundles" / "brain_extraction_source"


def source_config(name: str):
    """A ``monai.bundle.ConfigParser`` holding the source bundle's ``configs/<name>.yaml``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(SOURCE_BUNDLE / "configs" / f"{name}.yaml"))
    return parser


def instantiate(config: dict):
    """The component one config section (``_target_`` and its arguments) describes."""
    from monai.bundle import ConfigParser

    return ConfigParser({"item": copy.deepcopy(config)}).get_parsed_content("item")
