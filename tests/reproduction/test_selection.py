"""custom.reproduction.selection: subset flags and shards checked against the protocol."""

from __future__ import annotations

import pytest

from custom.reproduction.selection import UsageError, parse_shard, resolve_selection


@pytest.mark.parametrize("bad", ["1", "3/2", "-1/2", "a/b", "1/0", "0/2/3", ""])
def test_malformed_shards(bad):
    with pytest.raises(UsageError, match="shard"):
        parse_shard(bad)


def test_selection_validation():
    assert parse_shard("1/4") == (1, 4) and parse_shard(None) is None
    sel = resolve_selection("paper", sources="ge_3,siemens_15", budgets=(24, 5), strategies="last")
    assert sel.sources == ("siemens_15", "ge_3")  # protocol order
    assert sel.budgets == (5, 24) and sel.strategies == ("last",)
    assert resolve_selection("demo", budgets=5).budgets == (5,)
    for kwargs, match in [
        ({"profile": "fast"}, "unknown profile"),
        ({"profile": "paper", "strategies": "middle"}, "unknown strateg"),
        ({"profile": "paper", "sources": "siemens_7"}, "unknown source"),
        ({"profile": "paper", "targets": ("ge_3", "toshiba")}, "unknown target"),
        ({"profile": "paper", "budgets": 6}, "unknown budget"),
        ({"profile": "paper", "budgets": "5,x"}, "unknown budget"),
        ({"profile": "paper", "sources": "ge_3", "targets": "ge_3"}, "no source -> target pair"),
    ]:
        with pytest.raises(UsageError, match=match):
            resolve_selection(**kwargs)
