"""Small components the bundle configs reference (`_target_: custom....`): network, data, freezing, metrics.

Submodules load on first attribute access, so a config's `$import custom` makes `custom.data.…` usable. Importing
the package changes nothing else: the configs turn on the command line's one-line errors themselves
(`initialize` starts with `$custom.bundle_cli.install()`).
"""

import importlib

__all__ = [
    "adabn", "adapters", "bundle_cli", "cc359", "checkpoints", "data", "freeze", "handlers", "histogram", "inference",
    "metrics", "networks", "options", "packaging", "precision", "splits", "spottune", "transforms", "weights",
]


def __getattr__(name: str):
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
