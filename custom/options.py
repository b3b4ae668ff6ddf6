"""Command-line options: values as configs receive them, and strict option checking for our fire commands."""

from __future__ import annotations

import functools
import inspect
import sys
import warnings

__all__ = ["flag", "refuse_unknown_options", "renamed_keyword", "unknown_option"]

_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off", ""}


def flag(value) -> bool:
    """A boolean option: ``True``/``False`` or the strings a shell passes (``--save_masks false`` arrives as text)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"expected a true/false option value, got {value!r}")


def renamed_keyword(old: str):
    """The decorated function still takes a renamed keyword (``custom.bundle_cli.RENAMED``) under its old name
    ``old``, with a DeprecationWarning; on a command line (`refuse_unknown_options`) ``--old`` is one line naming
    the new name."""
    from custom.bundle_cli import RENAMED

    new, version = RENAMED[old]

    def wrap(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            if old in kwargs:
                if new in kwargs:
                    raise TypeError(f"{fn.__name__}() got both {old} and {new}")
                warnings.warn(f"{fn.__name__}(): {old} was renamed {new} in {version}", DeprecationWarning,
                              stacklevel=2)
                kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        call.renamed = {*getattr(fn, "renamed", ()), old}
        return call

    return wrap


def unknown_option(fn, args: list[str]) -> str | None:
    """The first ``--option`` in ``args`` that no parameter of ``fn`` takes (``None`` if all are known): what is
    wrong with it (a keyword `renamed_keyword` renamed: its new name).

    Fire calls a function with the options it recognises and only THEN reports the leftovers: without this check
    a misspelt option (``--profil paper``) would run a whole job with the default instead.
    """
    params = inspect.signature(fn).parameters
    renamed = getattr(fn, "renamed", ())
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    for arg in args:
        if arg == "--":  # fire's own flags follow
            break
        if not arg.startswith("--"):
            continue
        option = arg[2:].split("=", 1)[0]
        name = option.replace("-", "_")
        if name in params or name == "help" or (name.startswith("no") and name[2:] in params):
            continue
        if name in renamed:
            from custom.bundle_cli import renamed_option

            return renamed_option(name)
        return f"unknown option --{option}"
    return None


def refuse_unknown_options(component, argv: list[str] | None, prefix: str) -> list[str]:
    """Check a fire command line before fire runs anything; exit 2 with one line ``<prefix>unknown option ...``.

    ``component`` is the function, or a dict of named sub-commands. Returns the arguments to hand to fire.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    fn, rest = component, args
    if isinstance(component, dict):
        fn, rest = (component.get(args[0]), args[1:]) if args else (None, [])
    problem = unknown_option(fn, rest) if callable(fn) else None
    if problem:
        print(f"{prefix}{problem}", file=sys.stderr)
        raise SystemExit(2)
    return args
