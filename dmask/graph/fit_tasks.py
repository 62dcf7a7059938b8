"""The tasks of a fit: statistics, combine, solve, select, write."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np

from dmask.core import (
    covariance,
    displacement,
    forward,
    joint,
    lambdas,
    methods,
    minmax,
    windows,
)
from dmask.core.planning import COVARIANCE_SIDE, Tile
from dmask.graph.taskgraph import TaskMaker
from dmask.graph.timing import timed_phase
from dmask.io.dataset_store import StoredImages, compact_index, read_images
from dmask.io.model_store import write_model_tile
from dmask.io.stores import replaced_path

__all__ = [
    "BlockBounds",
    "StoredWindow",
    "combine",
    "factor",
    "place_tile",
    "press",
    "select",
    "solve",
    "statistics",
    "statistics_and_solve",
    "write_tile",
]


def region(
    images: da.Array | StoredImages | np.ndarray,
    s0: int,
    s1: int,
    rows: slice,
    cols: slice,
    tasks: TaskMaker,
    pure: bool = True,
) -> Any:
    """What a task reads: samples ``s0:s1`` and a window, lazily (or a view).

    ``pure=False`` makes a stored read a task of its own (a second pass reads
    afresh instead of holding the first pass's block in memory meanwhile).
    """
    if isinstance(images, StoredImages):
        return tasks(
            read_images,
            images.path,
            compact_index(images.index[s0:s1]),
            rows,
            cols,
            images.variable,
            pure=pure,
        )
    return images[s0:s1, rows, cols, :]


class StoredWindow:
    """Where a task reads its input itself: samples and a window of a store.

    A plain object, not a dataclass or tuple, so that dask passes it to the
    task as it is (without looking inside it for collections).
    """

    __slots__ = ("cols", "index", "path", "rows", "variable")

    def __init__(
        self,
        path: str,
        index: np.ndarray | slice,
        rows: slice,
        cols: slice,
        variable: str = "images",
    ) -> None:
        self.path, self.index, self.variable = path, index, variable
        self.rows, self.cols = rows, cols

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return StoredWindow, (
            self.path,
            self.index,
            self.rows,
            self.cols,
            self.variable,
        )

    def read(self) -> np.ndarray:
        """The window's pixels, read from the store."""
        return read_images(self.path, self.index, self.rows, self.cols, self.variable)


def window(
    images: da.Array | StoredImages | np.ndarray,
    s0: int,
    s1: int,
    rows: slice,
    cols: slice,
) -> StoredWindow | da.Array | np.ndarray:
    """What a task reads: a stored window it reads itself, or a lazy slice (a view).

    Unlike :func:`region`, stored images make no task of their own: the task
    that uses the window reads it (half the tasks of a tile, and no hand-over
    of the pixels between tasks).
    """
    if isinstance(images, StoredImages):
        index = compact_index(images.index[s0:s1])
        return StoredWindow(images.path, index, rows, cols, images.variable)
    return images[s0:s1, rows, cols, :]


def loaded(image: StoredWindow | np.ndarray) -> np.ndarray:
    """The pixels of a task's input: a stored window read, an array as it is."""
    return image.read() if isinstance(image, StoredWindow) else image


def read_halo(
    block: np.ndarray,
    low: np.ndarray | None,
    high: np.ndarray | None,
    padding: tuple[tuple[int, int], tuple[int, int]],
) -> np.ndarray:
    scale = None if low is None else minmax.minmax_scale(low, high)
    return forward.normalised_halo(block, low, scale, padding)


def _target_parameters(
    targets: Sequence[np.ndarray],
    target_bounds: Sequence[tuple[np.ndarray, np.ndarray]] | None,
) -> list[tuple[np.ndarray | None, np.ndarray | None]]:
    if target_bounds is None:
        return [(None, None)] * len(targets)
    return [(lo, minmax.minmax_scale(lo, hi)) for lo, hi in target_bounds]


BlockBounds = tuple[
    tuple[np.ndarray, np.ndarray] | None,
    Sequence[tuple[np.ndarray, np.ndarray]] | None,
]


def statistics(
    source: np.ndarray | StoredWindow,
    targets: Sequence[np.ndarray | StoredWindow],
    bounds: BlockBounds,
    padding: tuple[tuple[int, int], tuple[int, int]],
    field: int,
    method: str = "covariance",
    squares: bool = False,
) -> (
    displacement.TileStatistics
    | covariance.CovarianceStatistics
    | joint.JointStatistics
):
    """Task: statistics of one tile over one block of samples.

    ``source`` and ``targets`` are arrays, or windows of a store that the task
    reads itself (:func:`window`). ``bounds`` holds the block's per-sample
    ``(min, max)`` of the sources and of each target (None: no normalisation).
    ``squares`` (displacement method and joint methods) adds the sums of
    squared targets.
    """
    source = loaded(source)
    targets = [loaded(t) for t in targets]
    return _statistics(source, targets, bounds, padding, field, method, squares)


@timed_phase("statistics")
def _statistics(
    source: np.ndarray,
    targets: Sequence[np.ndarray],
    bounds: BlockBounds,
    padding: tuple[tuple[int, int], tuple[int, int]],
    field: int,
    method: str = "covariance",
    squares: bool = False,
) -> (
    displacement.TileStatistics
    | covariance.CovarianceStatistics
    | joint.JointStatistics
):
    """:func:`statistics` of arrays (its time is the ``statistics`` phase)."""
    source_bounds, target_bounds = bounds
    low, high = source_bounds if source_bounds is not None else (None, None)
    target_params = _target_parameters(targets, target_bounds)
    if method == "displacement":
        scale = None if low is None else minmax.minmax_scale(low, high)
        return displacement.raw_displacement_statistics(
            source, targets, (low, scale), target_params, padding, field, squares
        )
    halo = read_halo(source, low, high, padding)
    stacked = np.stack(
        [
            minmax.normalize_block(t, *p)
            for t, p in zip(targets, target_params, strict=True)
        ]
    )
    if method == "joint":
        return joint.joint_statistics(halo, stacked, field, squares)
    if squares:
        raise ValueError("squared target sums need the displacement method")
    return methods.tile_statistics(
        halo, stacked, field, method=method, side=COVARIANCE_SIDE
    )


@timed_phase("combine")
def combine(*parts: Any) -> Any:
    """Task: sum statistics of several sample blocks."""
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


@timed_phase("solve")
def solve(
    stats: displacement.TileStatistics | covariance.CovarianceStatistics,
    tile: Tile,
    image_shape: tuple[int, int],
    field: int,
    lam: float | str,
    grid: Sequence[float] | None = None,
) -> tuple[np.ndarray, ...]:
    """Task: solve every pixel of a tile (``lam="gcv"``: choosing from ``grid``)."""
    validity = windows.window_validity(
        tile.y0, tile.x0, *tile.shape, image_shape, field
    )
    if isinstance(stats, joint.JointStatistics):
        if lam == "gcv":
            return joint.solve_joint_gcv(stats, field, np.asarray(grid), validity)
        return joint.solve_joint(stats, field, float(lam), validity)
    if lam == "gcv":
        return lambdas.solve_gcv(stats, field, np.asarray(grid), validity)
    return methods.solve_tile(stats, field, lam, validity)


def statistics_and_solve(
    source: np.ndarray | StoredWindow,
    targets: Sequence[np.ndarray | StoredWindow],
    bounds: BlockBounds,
    padding: tuple[tuple[int, int], tuple[int, int]],
    field: int,
    method: str,
    tile: Tile,
    image_shape: tuple[int, int],
    lam: float | str,
    grid: Sequence[float] | None = None,
) -> tuple[np.ndarray, ...]:
    """Task: :func:`statistics` then :func:`solve`, when there is one sample block.

    One task where two would wait on each other: no hand-over between them,
    and the statistics are solved while still in cache.
    """
    stats = statistics(
        source, targets, bounds, padding, field, method, squares=lam == "gcv"
    )
    return solve(stats, tile, image_shape, field, lam, grid)


def factor(
    stats: displacement.TileStatistics | joint.JointStatistics, field: int
) -> tuple[lambdas.SpectralFactors, int]:
    """Task: eigendecompose the Gram matrix of every pixel of a tile.

    Returns the factors and the number of targets (the joint mode's factors
    hold ``T * C`` right-hand sides per pixel).
    """
    if isinstance(stats, joint.JointStatistics):
        return joint.joint_factors(stats, field), stats.target_sums.shape[0]
    return lambdas.spectral_factors(stats, field), stats.target_sums.shape[0]


def press(
    factored: tuple[lambdas.SpectralFactors, int],
    source: np.ndarray | StoredWindow,
    targets: Sequence[np.ndarray | StoredWindow],
    bounds: BlockBounds,
    padding: tuple[tuple[int, int], tuple[int, int]],
    field: int,
    grid: Sequence[float],
) -> np.ndarray:
    """Task: leave-one-out squared errors of one tile over one block of samples.

    ``source`` and ``targets`` as for :func:`statistics` (a second pass reads
    its windows afresh instead of holding the first pass's in memory).
    """
    factors, _ = factored
    source_bounds, target_bounds = bounds
    low, high = source_bounds if source_bounds is not None else (None, None)
    halo = read_halo(loaded(source), low, high, padding)
    params = _target_parameters(targets, target_bounds)
    stacked = np.stack(
        [
            minmax.normalize_block(loaded(t), *p)
            for t, p in zip(targets, params, strict=True)
        ]
    )
    if _is_joint(factors, field):
        return joint.press_joint(factors, halo, stacked, field, np.asarray(grid))
    return lambdas.press_tile(factors, halo, stacked, field, np.asarray(grid))


def _is_joint(factors: lambdas.SpectralFactors, field: int) -> bool:
    """Whether factors are of the joint mode (with one channel, both are one)."""
    return factors.values.shape[-1] != field * field + 1


def select(
    factored: tuple[lambdas.SpectralFactors, int],
    scores: np.ndarray,
    tile: Tile,
    image_shape: tuple[int, int],
    field: int,
    grid: Sequence[float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Task: solve every pixel of a tile with its penalty of least score."""
    factors, n_targets = factored
    validity = windows.window_validity(
        tile.y0, tile.x0, *tile.shape, image_shape, field
    )
    if _is_joint(factors, field):
        return joint.select_joint(
            factors, scores, np.asarray(grid), n_targets, validity
        )
    return lambdas.solve_selected(factors, scores, np.asarray(grid), validity)


@timed_phase("write")
def write_tile(
    path: str, tile: Tile, solution: tuple[np.ndarray, ...]
) -> tuple[int, int]:
    """Task: write one solved tile (and its chosen penalties) to the model store."""
    try:
        if len(solution) == 3:
            weight, bias, lam_map = solution
            return write_model_tile(path, tile, weight, bias, lam_map=lam_map)
        weight, bias = solution
        return write_model_tile(path, tile, weight, bias)
    except OSError as exc:  # a full disk: say which store
        where = replaced_path(path) or path
        reason = exc.strerror or str(exc)
        raise OSError(
            exc.errno, f"{reason}, writing tile {tile.index} of {where}"
        ) from exc


@timed_phase("write")
def place_tile(
    arrays: tuple[np.ndarray, ...], tile: Tile, solution: tuple[np.ndarray, ...]
) -> tuple[int, int]:
    """Task: copy one solved tile into the model's arrays in this process's memory.

    ``arrays`` are ``weight, bias`` (and ``lam_map``) of the whole image, in the
    order of the solution's parts. Threads fill disjoint parts of them, so the
    copies (and the first touch of fresh memory) run in parallel.
    """
    where = (slice(None), slice(tile.y0, tile.y1), slice(tile.x0, tile.x1))
    for array, part in zip(arrays, solution, strict=True):
        array[where] = part
    return tile.index
