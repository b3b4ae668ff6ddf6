"""The grid of cells: one bundle run each, in an order where every cell comes after the cells it depends on.

Strategies (a cell's ``role`` besides ``baseline`` and ``oracle``):

* the paper's three, ``first``, ``last``, ``full`` (the default grid);
* ``spottune``: SpotTUnet, which learns per slice which blocks run fine-tuned (``brain_extraction_spottune``);
* the layer-wise sweep (``--sweep``): each block of the U-Net alone (``init_path``, ``down1``, ..., ``out_path``,
  fine-tuned by the full bundle with ``--strategy <block>``) and the cumulative prefixes ``upto_<block>`` (every
  block up to and including it, in forward order);
* without annotations, one evaluation per pair that the tables set beside every budget: ``adabn`` (the source
  model with BatchNorm statistics re-estimated on the target's unlabeled scans) and ``histmatch`` (the source model
  on target scans histogram-matched to the source domain).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from custom.cc359 import DOMAINS
from custom.splits import BUDGETS

__all__ = [
    "ALL_BUDGETS", "LABEL_FREE", "LEARNED", "N_FOLDS", "REFERENCE_ROLES", "STRATEGIES", "UPTO", "Cell",
    "all_strategies", "build_grid", "freeze_strategy", "is_finetuning", "shard_cells", "sweep_strategies",
]

STRATEGIES = ("first", "last", "full")  # the paper's
LEARNED = ("spottune",)
LABEL_FREE = ("adabn", "histmatch")
REFERENCE_ROLES = ("baseline", "oracle")
UPTO = "upto_"  # upto_<block>: every block up to and including <block>, in forward order
ALL_BUDGETS = tuple(b.n_slices for b in BUDGETS)
N_FOLDS = 3


@functools.cache
def _blocks() -> tuple[str, ...]:
    from custom.freeze import blocks  # imports torch: only when a sweep is asked for, never in a worker's import

    return tuple(blocks())


def sweep_strategies() -> tuple[str, ...]:
    """The layer-wise sweep: every block alone, in forward order, then ``upto_<block>`` for the prefixes of two
    blocks or more short of the whole network (``upto_init_path`` is ``init_path``; all of them is ``full``)."""
    names = _blocks()
    return (*names, *(UPTO + b for b in names[1:-1]))


def all_strategies() -> tuple[str, ...]:
    """Every strategy the grid runs, in table order."""
    return (*STRATEGIES, *LEARNED, *LABEL_FREE, *sweep_strategies())


def freeze_strategy(role: str) -> str:
    """The ``custom.freeze`` strategy of a sweep role: ``down1`` -> ``down1``, ``upto_down1`` -> ``init_path,down1``."""
    if not role.startswith(UPTO):
        return role
    names = _blocks()
    last = role[len(UPTO):]
    if last not in names:
        raise ValueError(f"unknown block {last!r} in {role!r}; blocks: {', '.join(names)}")
    return ",".join(names[: names.index(last) + 1])


def is_finetuning(role: str) -> bool:
    """The role trains on annotated target slices (one cell per budget)."""
    return role not in REFERENCE_ROLES and role not in LABEL_FREE


@dataclass(frozen=True)
class Cell:
    """One bundle run. ``role``: baseline | oracle | a strategy; ``kind``: train | eval."""

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
        if self.role in LABEL_FREE:
            return f"{self.kind}/{self.role}/{self.source}_to_{self.target}"
        return f"{self.kind}/{self.role}/{self.source}_to_{self.target}/{self.n_slices}slices"

    @property
    def train_id(self) -> str:
        """The training cell an evaluation cell evaluates (itself for a training cell); the label-free
        strategies evaluate the source model."""
        if self.role in LABEL_FREE:
            return Cell("train", "baseline", self.source).id
        return Cell("train", self.role, self.source, self.target if self.role != "baseline" else None,
                    self.n_slices, self.fold).id

    @property
    def deps(self) -> tuple[str, ...]:
        if self.kind == "eval":
            return (self.train_id,)
        if is_finetuning(self.role):
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
    per pair the label-free evaluations and per (source, target, budget, strategy) a fine-tuning followed by its
    evaluation.
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
        cells += [Cell("eval", role, s, t) for role in strategies if role in LABEL_FREE]
        for n in budgets:
            for strategy in strategies:
                if is_finetuning(strategy):
                    cells += [Cell("train", strategy, s, t, n), Cell("eval", strategy, s, t, n)]
    return cells


def shard_cells(grid: Sequence[Cell], shard: tuple[int, int] | None) -> list[Cell]:
    """The cells of ``grid`` whose index % n == i for ``shard = (i, n)``; all of them for None."""
    if shard is None:
        return list(grid)
    i, n = shard
    return [c for k, c in enumerate(grid) if k % n == i]
