"""Planning a run: every cell's spec decided and every input checked before anything is written.

``plan`` validates the selection and the data and fixes each cell's ``CellSpec``; it refuses an output folder
whose finished cells were made with other settings. ``check_scans`` reads every scan the unfinished cells will
use. ``assembly`` widens a plan to every finished cell of the output folder, for the tables.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from custom.cc359 import DOMAINS, Scan, index_dataset
from custom.reproduction.grid import ALL_BUDGETS, REFERENCE_ROLES, Cell, all_strategies, build_grid, shard_cells
from custom.reproduction.profiles import Profile
from custom.reproduction.records import DONE
from custom.reproduction.selection import Selection, UsageError, parse_shard, resolve_selection
from custom.reproduction.spec import BUNDLES, CellSpec, cell_datalist, cell_spec

__all__ = ["Plan", "assembly", "check_scans", "plan"]


@dataclass
class Plan:
    """Everything a run needs, decided before anything is written."""

    profile: Profile
    data_dir: Path
    output_dir: Path
    bundles_dir: Path
    grid: list[Cell]
    specs: dict[str, CellSpec]  # cell id -> its spec
    selection: Selection
    with_oracle: bool
    shard: tuple[int, int] | None
    scans: list[Scan]

    def cell_dir(self, cell_id: str) -> Path:
        return self.output_dir / "cells" / cell_id

    def record(self, cell_id: str) -> dict:
        """The ``done.json`` of a finished cell."""
        return json.loads((self.cell_dir(cell_id) / DONE).read_text())

    def is_done(self, cell_id: str) -> bool:
        marker = self.cell_dir(cell_id) / DONE
        if not marker.is_file():
            return False
        try:
            return json.loads(marker.read_text()).get("fingerprint") == self.specs[cell_id].fingerprint
        except (OSError, ValueError):
            return False

    def mine(self) -> list[Cell]:
        """The cells this run is responsible for (its shard of the grid)."""
        return shard_cells(self.grid, self.shard)


def plan(
    profile: str | Profile,
    data_dir,
    output_dir,
    sources=None,
    targets=None,
    strategies=None,
    budgets=None,
    with_oracle: bool = False,
    shard=None,
    bundles_dir=None,
    sweep: bool = False,
    cache_preprocessing: bool = True,
) -> Plan:
    """Validate everything and decide every cell's datalist and overrides; raises UsageError, writes nothing.

    ``cache_preprocessing``: evaluation cells keep each preprocessed test scan in ``<output_dir>/cache/`` for the
    next cell that evaluates it."""
    sel = resolve_selection(profile, sources, targets, strategies, budgets, sweep)
    prof = sel.profile
    shard = parse_shard(shard)
    data_dir = Path(str(data_dir)).absolute()
    out = Path(str(output_dir)).absolute()
    bundles = Path(bundles_dir).absolute() if bundles_dir else BUNDLES
    if not data_dir.is_dir():
        raise UsageError(f"data dir {data_dir} does not exist")
    if out.exists() and not out.is_dir():
        raise UsageError(f"output dir {out} exists and is not a folder")
    try:
        scans = index_dataset(data_dir)
    except ValueError as e:  # DatasetError
        raise UsageError(str(e)) from None
    present = {s.domain for s in scans}
    needed = set(sel.sources) | set(sel.targets)
    missing = [d for d in DOMAINS if d in needed and d not in present]
    if missing:
        raise UsageError(f"{data_dir} has no scans of {', '.join(missing)}")
    grid = build_grid(sel.sources, sel.targets, sel.strategies, sel.budgets, with_oracle,
                      in_domain=prof.n_val > 0)
    specs = {}
    for cell in grid:
        try:
            datalist = cell_datalist(cell, scans, prof)
        except ValueError as e:
            raise UsageError(f"{cell.id}: {e}") from None
        specs[cell.id] = cell_spec(cell, datalist, prof, data_dir, out, bundles, cache_preprocessing)
    p = Plan(prof, data_dir, out, bundles, grid, specs, sel, bool(with_oracle), shard, scans)
    conflicts = []
    for cell in grid:
        marker = p.cell_dir(cell.id) / DONE
        if marker.is_file() and not p.is_done(cell.id):
            conflicts.append(cell.id)
    if conflicts:
        raise UsageError(
            f"{out} holds {len(conflicts)} finished cell(s) made with other settings or scans (e.g. "
            f"cells/{conflicts[0]}); use another --output_dir or delete them"
        )
    return p


def check_scans(p: Plan, progress: bool = True) -> int:
    """Read and validate every scan the unfinished cells of this run will use, before any cell starts.

    A corrupt file or an empty mask found here stops the run with one line naming it (UsageError) instead of
    failing cells one by one hours later. Finished cells' scans are not read again. Returns the number checked.
    """
    from monai.transforms import Compose
    from tqdm import tqdm

    from custom.transforms import InputError, checks

    pairs: dict[str, str] = {}
    for cell in p.mine():
        if p.is_done(cell.id):
            continue
        for items in p.specs[cell.id].datalist.values():
            for item in items if isinstance(items, list) else []:
                pairs.setdefault(str(item["image"]), str(item["label"]))
    check = Compose(checks(["image", "label"]))
    for image, label in tqdm(sorted(pairs.items()), desc="checking scans", unit="scan", disable=not progress,
                             dynamic_ncols=True, file=sys.stderr):
        try:
            check({"image": image, "label": label})
        except Exception as e:  # Compose wraps the transform's own error
            error = e
            while error is not None and not isinstance(error, InputError):
                error = error.__cause__
            if error is None:
                raise
            raise UsageError(str(error)) from None
    return len(pairs)


def _roles_on_disk(p: Plan) -> tuple[str, ...]:
    """The strategies with a cell folder in the output dir (any run's), in table order."""
    found = {d.name for kind in ("train", "eval") if (p.output_dir / "cells" / kind).is_dir()
             for d in (p.output_dir / "cells" / kind).iterdir()}
    known = set(p.selection.strategies) | (found - set(REFERENCE_ROLES))
    return tuple(s for s in all_strategies() if s in known)


def assembly(p: Plan) -> Plan:
    """The plan the tables are assembled from: this plan's cells plus every other cell of the profile's full grid
    that is finished in the same output dir with the same settings (an earlier run with other subset flags)."""
    present = {s.domain for s in p.scans}
    mine = {c.id for c in p.grid}
    full = build_grid([d for d in DOMAINS if d in present], [d for d in DOMAINS if d in present], _roles_on_disk(p),
                      ALL_BUDGETS, with_oracle=True, in_domain=p.profile.n_val > 0)
    specs = dict(p.specs)
    for cell in full:
        if cell.id in mine or not (p.cell_dir(cell.id) / DONE).is_file():
            continue
        try:
            datalist = cell_datalist(cell, p.scans, p.profile)
        except ValueError:
            continue
        specs[cell.id] = cell_spec(cell, datalist, p.profile, p.data_dir, p.output_dir, p.bundles_dir)
    extra = {c.id for c in full if c.id not in mine and c.id in specs}
    probe = Plan(p.profile, p.data_dir, p.output_dir, p.bundles_dir, [], specs, p.selection, p.with_oracle, None,
                 p.scans)
    extra = {i for i in extra if probe.is_done(i)}
    if not extra:
        return replace(p, shard=None)
    grid = [c for c in full if c.id in mine or c.id in extra]
    grid += [c for c in p.grid if c.id not in {g.id for g in grid}]
    used = [c for c in grid if c.id in mine or c.id in extra]
    pick = lambda values, order: tuple(v for v in order if v in values)  # noqa: E731
    selection = Selection(
        profile=p.profile,
        sources=pick({c.source for c in used if c.role != "oracle"} | set(p.selection.sources), DOMAINS),
        targets=pick({c.target for c in used if c.role not in REFERENCE_ROLES or (c.role == "baseline" and c.target
                      and c.target != c.source)} | set(p.selection.targets), DOMAINS),
        strategies=pick({c.role for c in used if c.role not in REFERENCE_ROLES} | set(p.selection.strategies),
                        all_strategies()),
        budgets=pick({c.n_slices for c in used if c.n_slices} | set(p.selection.budgets), ALL_BUDGETS),
    )
    with_oracle = p.with_oracle or any(c.role == "oracle" for c in used if c.id in extra)
    return Plan(p.profile, p.data_dir, p.output_dir, p.bundles_dir, grid, specs, selection, with_oracle, None,
                p.scans)


