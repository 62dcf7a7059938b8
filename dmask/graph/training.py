"""The graph of a fit over tiles and sample blocks."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np

from dmask.core.planning import COMBINE_FAN_IN, FitPlan, Tile
from dmask.graph.fit_tasks import (
    combine,
    factor,
    place_tile,
    press,
    select,
    solve,
    statistics,
    statistics_and_solve,
    window,
    write_tile,
)
from dmask.graph.runtime import runs_locally
from dmask.graph.taskgraph import GraphMaker, LocalTasks, TaskMaker
from dmask.io.dataset_store import StoredImages

__all__ = ["finish_tile", "fit_tiles", "tree_sum"]


def tree_sum(
    parts: list[Any], tasks: TaskMaker, split_every: int = COMBINE_FAN_IN
) -> Any:
    """The sum of ``parts``: ``split_every`` at a time, level by level.

    A group of one part (the last, when a level's count is not a multiple of
    ``split_every``) is carried up to the next level as it is, not wrapped in a
    task that adds nothing: the same sums in the same order, fewer tasks.
    """
    while len(parts) > 1:
        groups = [parts[i : i + split_every] for i in range(0, len(parts), split_every)]
        parts = [
            group[0] if len(group) == 1 else tasks(combine, *group, pure=True)
            for group in groups
        ]
    return parts[0]


def fit_tiles(
    sources: da.Array | StoredImages,
    targets: Sequence[da.Array | StoredImages],
    source_bounds: tuple[np.ndarray, np.ndarray] | None,
    target_bounds: Sequence[tuple[np.ndarray, np.ndarray]] | None,
    plan: FitPlan,
    field: int,
    lam: float | str,
    store: str | os.PathLike | None = None,
    lam_grid: Sequence[float] | None = None,
    arrays: tuple[np.ndarray, ...] | None = None,
) -> list[Any] | LocalTasks:
    """Delayed per-tile results of training.

    Parameters
    ----------
    sources, targets : dask.array.Array, StoredImages or numpy.ndarray
        ``(N, H, W, C)`` raw images (numpy only for the threaded scheduler).
    source_bounds, target_bounds : numpy.ndarray pairs or None
        Per-sample ``(min, max)`` for min-max normalisation; None for none.
    plan : FitPlan
        Tiles and sample blocks (displacement method when choosing penalties).
    field : int
        Receptive field size.
    lam : float or {"gcv", "loo"}
        Ridge penalty, or the criterion each pixel chooses its penalty from
        ``lam_grid`` by: generalised cross-validation (from the statistics) or
        leave-one-out (a second pass over the samples: ``press`` tasks).
    store : str or path, optional
        Model store to write each tile to (then each result is the tile index);
        otherwise each result is ``(weight, bias)``, and ``lam_map`` too when
        penalties are chosen.
    lam_grid : sequence of float, optional
        Penalties to choose from (with ``lam="gcv"`` or ``"loo"``).
    arrays : tuple of numpy.ndarray, optional
        ``weight, bias`` (and ``lam_map``) of the whole image to place each
        solved tile in, when :func:`runs_locally` and no store is written; each
        result is then the tile index.

    Returns
    -------
    list of dask.delayed.Delayed or LocalTasks
        One result per tile, in plan order: delayed, or (inputs with no dask
        array, no distributed client) the keys of a plain graph. :func:`run`
        computes either.
    """
    halo_width = field // 2
    selecting = lam in ("gcv", "loo")
    grid = tuple(float(v) for v in lam_grid) if selecting and lam_grid else None
    if selecting and (grid is None or plan.method not in ("displacement", "joint")):
        raise ValueError("choosing penalties needs a grid and displacement statistics")
    local = runs_locally(sources, *targets)
    if arrays is not None and (store is not None or not local):
        raise ValueError("arrays are for runs in this process that write no store")
    # Not pure: hashing every argument (image views among them) costs more than
    # the smaller tasks take; each call gets a unique key instead.
    tasks = GraphMaker() if local else TaskMaker()
    # One graph key per sample block for its bounds, shared by every tile: not
    # a copy in each task (tens of MB of graph for large jobs with many targets).
    block_bounds = []
    for s0, s1 in plan.blocks:
        sb = None if source_bounds is None else tuple(b[s0:s1] for b in source_bounds)
        tb = (
            None
            if target_bounds is None
            else [tuple(b[s0:s1] for b in pair) for pair in target_bounds]
        )
        block_bounds.append(tasks.value((sb, tb), "sample_block_bounds"))
    results = []
    for tile in plan.tiles:
        rows, cols, padding = tile.halo(halo_width, plan.image_shape)
        inner = slice(tile.y0, tile.y1), slice(tile.x0, tile.x1)
        # Stored inputs are read inside the tasks that use them (no read tasks).
        reads = []
        for (s0, s1), bounds in zip(plan.blocks, block_bounds, strict=True):
            src = window(sources, s0, s1, rows, cols)
            tgt = [window(t, s0, s1, *inner) for t in targets]
            reads.append((src, tgt, bounds))
        squares = lam == "gcv"
        if len(reads) == 1 and lam != "loo":  # one task: statistics, then solve
            solution = tasks(
                statistics_and_solve, *reads[0], padding, field, plan.method, tile,
                plan.image_shape, lam, grid,
            )  # fmt: skip
            results.append(finish_tile(tasks, solution, tile, store, arrays))
            continue
        parts = [
            tasks(statistics, *read, padding, field, plan.method, squares)
            for read in reads
        ]
        if lam == "loo":
            factors = tasks(factor, tree_sum(parts, tasks), field)
            # the second pass reads its windows afresh (its tasks read them)
            press_parts = [
                tasks(press, factors, src, tgt, bounds, padding, field, grid)
                for src, tgt, bounds in reads
            ]
            scores = tree_sum(press_parts, tasks)
            solution = tasks(
                select, factors, scores, tile, plan.image_shape, field, grid
            )
        else:
            solution = tasks(
                solve, tree_sum(parts, tasks), tile, plan.image_shape, field, lam, grid
            )
        results.append(finish_tile(tasks, solution, tile, store, arrays))
    return tasks.results(results)


def finish_tile(
    tasks: TaskMaker,
    solution: Any,
    tile: Tile,
    store: str | os.PathLike | None,
    arrays: tuple[np.ndarray, ...] | None,
) -> Any:
    """The last task of a tile: its solution, written to a store or placed."""
    if store is not None:
        return tasks(write_tile, str(store), tile, solution)
    if arrays is not None:
        return tasks(place_tile, arrays, tile, solution)
    return solution
