"""The graphs of a statistics store: keeping the sums of folds, solving from them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dmask.core import sufficient
from dmask.core.planning import Tile, sample_blocks
from dmask.graph.fit_tasks import factor, press, region, select, solve, statistics
from dmask.graph.runtime import runs_locally
from dmask.graph.taskgraph import GraphMaker, LocalTasks, TaskMaker
from dmask.graph.timing import timed_phase
from dmask.graph.training import finish_tile, tree_sum
from dmask.io.statistics_store import read_statistics_window, write_statistics_tile

__all__ = ["FoldInputs", "keep_tiles", "solve_tiles"]


@dataclass(frozen=True)
class FoldInputs:
    """The training pairs of one fold and their min-max bounds (None: none).

    ``sources`` and ``targets`` are image sources of
    :func:`dmask.graph.inputs.as_image_source`, already narrowed to the fold.
    """

    fold: int
    sources: Any
    targets: Sequence[Any]
    source_bounds: tuple[np.ndarray, np.ndarray] | None
    target_bounds: Sequence[tuple[np.ndarray, np.ndarray]] | None


@timed_phase("write")
def keep_tile(
    path: str,
    tile: Tile,
    grown: Tile,
    fold: int,
    field: int,
    stats: Any,
    base: str | None,
) -> tuple[int, int, int]:
    """Task: write one fold's sums of a tile, plus the same fold's of ``base``.

    ``stats`` is the tile's :class:`~dmask.core.displacement.TileStatistics`
    (None: nothing new for this fold, so only the base's sums are copied).
    """
    inner = (slice(tile.y0, tile.y1), slice(tile.x0, tile.x1))
    parts = None if stats is None else sufficient.image_parts(stats, field, tile, grown)
    if base is not None:
        old = read_statistics_window(base, [fold], *inner, inner)
        parts = old if parts is None else {k: old[k] + parts[k] for k in parts}
    assert parts is not None
    return write_statistics_tile(path, tile, fold, parts)


def block_bounds(
    inputs: FoldInputs, sample_block: int, tasks: TaskMaker
) -> list[tuple[int, int, Any]]:
    """``(start, stop, bounds)`` of each sample block of a fold's pairs.

    ``bounds`` is one graph key per block, shared by every tile's tasks.
    """
    out = []
    for s0, s1 in sample_blocks(inputs.sources.shape[0], sample_block):
        sb = (
            None
            if inputs.source_bounds is None
            else tuple(b[s0:s1] for b in inputs.source_bounds)
        )
        tb = (
            None
            if inputs.target_bounds is None
            else [tuple(b[s0:s1] for b in pair) for pair in inputs.target_bounds]
        )
        out.append((s0, s1, tasks.value((sb, tb), "sample_block_bounds")))
    return out


def keep_tiles(
    folds: Sequence[FoldInputs],
    n_folds: int,
    tiles: Sequence[Tile],
    image_shape: tuple[int, int],
    field: int,
    sample_block: int,
    store: str | os.PathLike,
    base: str | None = None,
    joint: bool = False,
) -> list[Any] | LocalTasks:
    """Tasks that sum every fold's pairs tile by tile and write them to ``store``.

    Each fold's samples are summed in blocks of ``sample_block`` as training
    sums them (the same blocks, so the same sums). With ``base`` (an update),
    each of the ``n_folds`` folds of the new store is the same fold of ``base``
    plus the new pairs ``folds`` give it (a fold given none is copied).
    ``joint``: the sums of the joint colour mode.
    """
    method = "joint" if joint else "displacement"
    halo_width = field // 2
    images = [f.sources for f in folds] + [t for f in folds for t in f.targets]
    local = runs_locally(*images)
    tasks = GraphMaker() if local else TaskMaker()
    given = {f.fold: f for f in folds}
    blocks = {f.fold: block_bounds(f, sample_block, tasks) for f in folds}
    results = []
    for tile in tiles:
        grown = sufficient.reach(tile, field, image_shape)
        rows, cols, padding = grown.halo(halo_width, image_shape)
        inner = slice(grown.y0, grown.y1), slice(grown.x0, grown.x1)
        for fold in range(n_folds):
            total = None
            if fold in given:
                f = given[fold]
                parts = []
                for s0, s1, bounds in blocks[fold]:
                    src = region(f.sources, s0, s1, rows, cols, tasks)
                    tgt = [region(t, s0, s1, *inner, tasks) for t in f.targets]
                    parts.append(
                        tasks(
                            statistics, src, tgt, bounds, padding, field, method,
                            True,
                        )
                    )  # fmt: skip
                total = tree_sum(parts, tasks)
            results.append(
                tasks(keep_tile, str(store), tile, grown, fold, field, total, base)
            )
    return tasks.results(results)


def stored_statistics(
    path: str,
    folds: Sequence[int],
    tile: Tile,
    image_shape: tuple[int, int],
    largest: int,
    field: int,
    count: int,
    joint: bool,
) -> Any:
    """One tile's statistics at ``field``, summed over ``folds`` of a store."""
    rows, cols, padding = tile.halo(field // 2, image_shape)
    inner = slice(tile.y0, tile.y1), slice(tile.x0, tile.x1)
    window = read_statistics_window(
        path, folds, rows, cols, inner,
        displacement=sufficient.displacement_subset(field, largest),
        offsets=sufficient.offset_subset(field, largest),
    )  # fmt: skip
    return sufficient.field_statistics(window, count, field, field, padding, joint)


def solve_stored(
    stored: tuple[Any, ...],
    lam: float | str,
    grid: Sequence[float] | None,
) -> tuple[np.ndarray, ...]:
    """Task: solve one tile from a store.

    ``stored`` holds the arguments of :func:`stored_statistics`.
    """
    tile, image_shape, field = stored[2], stored[3], stored[5]
    return solve(stored_statistics(*stored), tile, image_shape, field, lam, grid)


def factor_stored(stored: tuple[Any, ...]) -> Any:
    """Task: the spectral factors of one tile from a store (for leave-one-out)."""
    return factor(stored_statistics(*stored), stored[5])


def solve_tiles(
    path: str,
    folds: Sequence[int],
    tiles: Sequence[Tile],
    image_shape: tuple[int, int],
    largest: int,
    field: int,
    count: int,
    lam: float | str,
    grid: Sequence[float] | None = None,
    store: str | os.PathLike | None = None,
    arrays: tuple[np.ndarray, ...] | None = None,
    joint: bool = False,
    images: Sequence[FoldInputs] = (),
    sample_block: int = 1,
) -> list[Any] | LocalTasks:
    """Tasks that solve every tile from a statistics store (see :func:`fit_tiles`).

    Written to a model ``store``, placed in ``arrays`` (in this process), or
    returned as each tile's solution. ``lam="loo"`` reads the training pairs
    again (``images``, in blocks of ``sample_block``) for their leave-one-out
    errors, as training does.
    """
    local = runs_locally()
    tasks = GraphMaker() if local else TaskMaker()
    if arrays is not None and not local:
        raise ValueError("arrays are for runs in this process")
    if lam == "loo" and not images:
        raise ValueError("leave-one-out needs the training pairs")
    grid = None if grid is None else tuple(grid)
    blocks = [(g, block_bounds(g, sample_block, tasks)) for g in images]
    results = []
    for tile in tiles:
        stored = (path, list(folds), tile, image_shape, largest, field, count, joint)
        if lam != "loo":
            solution = tasks(solve_stored, stored, lam, grid)
            results.append(finish_tile(tasks, solution, tile, store, arrays))
            continue
        factors = tasks(factor_stored, stored)
        rows, cols, padding = tile.halo(field // 2, image_shape)
        inner = slice(tile.y0, tile.y1), slice(tile.x0, tile.x1)
        parts = []
        for group, bounds in blocks:
            for s0, s1, block in bounds:
                src = region(group.sources, s0, s1, rows, cols, tasks, pure=False)
                tgt = [
                    region(t, s0, s1, *inner, tasks, pure=False) for t in group.targets
                ]
                parts.append(
                    tasks(press, factors, src, tgt, block, padding, field, grid)
                )
        solution = tasks(
            select, factors, tree_sum(parts, tasks), tile, image_shape, field, grid
        )
        results.append(finish_tile(tasks, solution, tile, store, arrays))
    return tasks.results(results)
