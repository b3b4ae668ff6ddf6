"""custom.reproduction.grid: the protocol's cells, their order and dependencies, and shards."""

from __future__ import annotations

import pytest

from custom.cc359 import DOMAINS
from custom.reproduction.grid import STRATEGIES, build_grid, shard_cells
from custom.splits import BUDGETS


def test_full_grid_matches_the_protocol():
    grid = build_grid(with_oracle=True, in_domain=True)
    ids = [c.id for c in grid]
    assert len(ids) == len(set(ids))
    by = lambda kind, role: [c for c in grid if c.kind == kind and c.role == role]  # noqa: E731
    assert len(by("train", "baseline")) == 6 and len(by("eval", "baseline")) == 30 + 6
    assert sum(c.source == c.target for c in by("eval", "baseline")) == 6  # held-out validation scans
    assert len(by("train", "oracle")) == len(by("eval", "oracle")) == 6 * 3
    pairs = {(c.source, c.target) for c in grid if c.role in STRATEGIES}
    assert len(pairs) == 30 and all(s != t for s, t in pairs)
    assert {c.n_slices for c in grid if c.role in STRATEGIES} == {b.n_slices for b in BUDGETS}
    assert len(BUDGETS) == 9
    for strategy in STRATEGIES:
        assert len(by("train", strategy)) == len(by("eval", strategy)) == 30 * 9
    assert len(grid) == 6 + 36 + 36 + 2 * 810
    assert len(build_grid()) == 6 + 30 + 2 * 810  # without the oracle and the in-domain evaluations
    position = {c.id: k for k, c in enumerate(grid)}
    for c in grid:
        assert all(position[d] < position[c.id] for d in c.deps), c.id
        if c.kind == "eval":
            assert c.deps == (c.train_id,)
        elif c.role in STRATEGIES:
            assert c.deps == (f"train/baseline/{c.source}",)
        else:
            assert c.deps == ()


def test_subset_grid():
    grid = build_grid(["siemens_15"], ["ge_15", "philips_15", "siemens_15"], ["first", "last", "full"], [5, 24, 90])
    assert sum(c.kind == "train" and c.role == "baseline" for c in grid) == 1
    assert sum(c.kind == "eval" and c.role == "baseline" for c in grid) == 2  # no siemens_15 -> siemens_15
    assert sum(c.role in STRATEGIES for c in grid) == 2 * 2 * 3 * 3


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 16])
def test_shards_partition_the_grid(n):
    grid = build_grid(with_oracle=True, in_domain=True)
    shards = [shard_cells(grid, (i, n)) for i in range(n)]
    ids = [c.id for shard in shards for c in shard]
    assert sorted(ids) == sorted(c.id for c in grid)
    assert len(ids) == len(set(ids))
    for i, shard in enumerate(shards):
        assert all(grid.index(c) % n == i for c in shard)


def test_domains_constant_is_the_protocols():
    assert DOMAINS == ("siemens_15", "siemens_3", "ge_15", "ge_3", "philips_15", "philips_3")
