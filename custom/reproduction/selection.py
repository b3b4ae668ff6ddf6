"""The command line's choice of cells: profile, subset flags, shard and GPU list, validated against the protocol."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from custom.cc359 import DOMAINS
from custom.reproduction.grid import ALL_BUDGETS, all_strategies, sweep_strategies
from custom.reproduction.profiles import PROFILES, Profile

__all__ = ["Selection", "UsageError", "parse_devices", "parse_shard", "resolve_selection"]


class UsageError(ValueError):
    """Bad command-line input (unknown profile, strategy, domain, budget, malformed shard, missing data...)."""


@dataclass(frozen=True)
class Selection:
    """The profile and the part of its grid a run covers (each tuple in protocol order)."""

    profile: Profile
    sources: tuple[str, ...]
    targets: tuple[str, ...]
    strategies: tuple[str, ...]
    budgets: tuple[int, ...]

    def flags(self) -> dict:
        """Everything but the profile, as ``manifest.json`` records it."""
        return {"sources": self.sources, "targets": self.targets, "strategies": self.strategies,
                "budgets": self.budgets}


def _items(value, what: str) -> list:
    """fire hands over ``a,b`` as a tuple, ``a`` as a str/int, ``[a, b]`` as a list; accept all of them."""
    if value is None:
        return []
    if isinstance(value, str):
        parts = [v.strip() for v in value.replace(";", ",").split(",")]
    elif isinstance(value, list | tuple):
        parts = list(value)
    else:
        parts = [value]
    parts = [p for p in parts if p != ""]
    if not parts:
        raise UsageError(f"--{what} is empty")
    return parts


def _choose(value, valid: Sequence, what: str, convert=str) -> tuple:
    chosen = []
    for item in _items(value, what):
        try:
            converted = convert(item)
        except (TypeError, ValueError):
            converted = None
        if converted not in valid or isinstance(item, bool):
            singular = "strategy" if what == "strategies" else what.removesuffix("s")
            raise UsageError(f"unknown {singular} {item!r}; "
                             f"valid: {', '.join(map(str, valid))}")
        if converted not in chosen:
            chosen.append(converted)
    return tuple(sorted(chosen, key=list(valid).index))


def _budget_value(item) -> int:
    if isinstance(item, float) and not item.is_integer():
        raise ValueError(item)
    return int(item)


def resolve_selection(profile: str | Profile, sources=None, targets=None, strategies=None, budgets=None,
                      sweep: bool = False) -> Selection:
    """Validate the subset flags against the protocol; defaults come from the profile. ``sweep`` adds the
    layer-wise sweep (every block alone and the ``upto_<block>`` prefixes) to ``strategies`` (default: none else)."""
    if isinstance(profile, str):
        if profile not in PROFILES:
            raise UsageError(f"unknown profile {profile!r}; valid: {', '.join(PROFILES)}")
        profile = PROFILES[profile]
    sel = Selection(
        profile=profile,
        sources=_choose(sources, DOMAINS, "sources") if sources is not None else profile.sources,
        targets=_choose(targets, DOMAINS, "targets") if targets is not None else profile.targets,
        strategies=_strategies(profile, strategies, sweep),
        budgets=_choose(budgets, ALL_BUDGETS, "budgets", _budget_value) if budgets is not None else profile.budgets,
    )
    if not [(s, t) for s in sel.sources for t in sel.targets if s != t]:
        raise UsageError("no source -> target pair: choose at least one target that is not a source")
    return sel


def _strategies(profile: Profile, strategies, sweep: bool) -> tuple[str, ...]:
    if not isinstance(sweep, bool):
        raise UsageError(f"--sweep must be true or false, got {sweep!r}")
    if not sweep:
        return _choose(strategies, all_strategies(), "strategies") if strategies is not None else profile.strategies
    chosen = _choose(strategies, all_strategies(), "strategies") if strategies is not None else ()
    return tuple(s for s in all_strategies() if s in set(chosen) | set(sweep_strategies()))


def parse_shard(shard) -> tuple[int, int] | None:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``; None stays None."""
    if shard is None:
        return None
    text = str(shard).strip()
    parts = text.split("/")
    try:
        if len(parts) != 2:
            raise ValueError
        i, n = int(parts[0]), int(parts[1])
    except ValueError:
        raise UsageError(f"malformed --shard {shard!r}: expected i/n, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise UsageError(f"malformed --shard {shard!r}: need 0 <= i < n")
    return i, n


def parse_devices(devices) -> tuple[str, ...]:
    if devices is None:
        return ()
    out = []
    for item in _items(devices, "devices"):
        text = str(item).strip()
        if not text.isdigit():
            raise UsageError(f"malformed --devices {devices!r}: expected GPU indices like 0,1")
        out.append(text)
    return tuple(out)

