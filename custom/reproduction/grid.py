"""The grid of cells: one bundle run each, in an order where every cell comes after the cells it depends on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from custom.cc359 import DOMAINS
from custom.splits import BUDGETS

__all__ = ["ALL_BUDGETS", "N_FOLDS", "STRATEGIES", "Cell", "build_grid", "shard_cells"]

STRATEGIES = ("first", "last", "full")
ALL_BUDGETS = tuple(b.n_slices for b in BUDGETS)
N_FOLDS = 3


@dataclass(frozen=True)
class Cell:
    """One bundle run. ``role``: baseline | oracle | first | last | full; ``kind``: train | eval."""

    kind: str
    role: str
    source: str
    target: str | None = None
    n_slices: int | None = None
    fold: int | None = None

    @property
    def id(self) -> str:
        if self.role == "baseline":
            return f"train/baseline/{self.source}" if self.kind == "train" else (
                f"eval/baseline/{self.source}/{self.target}")
        if self.role == "oracle":
            return f"{self.kind}/oracle/{self.source}/fold{self.fold}"
        return f"{self.kind}/{self.role}/{self.source}_to_{self.target}/{self.n_slices}slices"

    @property
    def train_id(self) -> str:
        """The training cell an evaluation cell evaluates (itself for a training cell)."""
        return Cell("train", self.role, self.source, self.target if self.role not in ("baseline",) else None,
                    self.n_slices, self.fold).id

    @property
    def deps(self) -> tuple[str, ...]:
        if self.kind == "eval":
            return (self.train_id,)
        if self.role in STRATEGIES:
            return (Cell("train", "baseline", self.source).id,)
        return ()


def build_grid(
    sources: Sequence[str] = DOMAINS,
    targets: Sequence[str] = DOMAINS,
    strategies: Sequence[str] = STRATEGIES,
    budgets: Sequence[int] = ALL_BUDGETS,
    with_oracle: bool = False,
    in_domain: bool = False,
) -> list[Cell]:
    """Every cell of the selection, in an order where each cell comes after the cells it depends on.

    Baselines first (trainings, then their evaluations: with ``in_domain`` also each source model on its own
    held-out validation scans, ``eval/baseline/<s>/<s>``), then the oracle folds of every domain involved, then
    per (source, target, budget, strategy) a fine-tuning followed by its evaluation.
    """
    pairs = [(s, t) for s in sources for t in targets if s != t]
    cells = [Cell("train", "baseline", s) for s in sources]
    cells += [Cell("eval", "baseline", s, s) for s in sources] if in_domain else []
    cells += [Cell("eval", "baseline", s, t) for s, t in pairs]
    if with_oracle:
        domains = [d for d in DOMAINS if d in set(sources) | set(targets)]
        for d in domains:
            for k in range(N_FOLDS):
                cells += [Cell("train", "oracle", d, d, fold=k), Cell("eval", "oracle", d, d, fold=k)]
    for s, t in pairs:
        for n in budgets:
            for strategy in strategies:
                cells += [Cell("train", strategy, s, t, n), Cell("eval", strategy, s, t, n)]
    return cells


def shard_cells(grid: Sequence[Cell], shard: tuple[int, int] | None) -> list[Cell]:
    """The cells of ``grid`` whose index % n == i for ``shard = (i, n)``; all of them for None."""
    if shard is None:
        return list(grid)
    i, n = shard
    return [c for k, c in enumerate(grid) if k % n == i]
