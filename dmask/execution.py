"""Dask execution: task graphs for statistics, solves, writes and prediction.

Graphs are built from plans (:mod:`dmask.planning`) and run on the current
distributed client when there is one, else on dask's threaded scheduler. Task
names read as the pipeline on the dashboard: ``statistics``, ``combine``,
``solve``, ``write_tile``, ``apply`` (``statistics_and_solve`` in place of the
first three when all samples fit one block; and, when each pixel chooses its
penalty by leave-one-out, ``factor``, ``press`` and ``select`` in place of
``solve``).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from dmask import kernels
from dmask.errors import InputError
from dmask.planning import COMBINE_FAN_IN, COVARIANCE_SIDE, FitPlan, Tile
from dmask.storage import StoredImages, compact_index, read_images, write_model_tile

__all__ = [
    "as_dask_array",
    "as_image_source",
    "compute",
    "LocalTasks",
    "fit_tiles",
    "minmax_bounds",
    "phase_seconds",
    "place_tile",
    "predict_tiles",
    "run",
    "runs_locally",
    "sample_bounds",
    "show_progress",
    "task_memory_budget",
]

logger = logging.getLogger(__name__)

_PROGRESS: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "dmask_progress", default=False
)


@contextlib.contextmanager
def show_progress(enabled: bool = True) -> Iterator[None]:
    """Show a console progress bar for computations run inside the block."""
    token = _PROGRESS.set(enabled)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def current_client() -> Any | None:
    """The distributed client in use, or None."""
    if "distributed" not in sys.modules:  # no client without it; importing costs
        return None  # half a second and 20 MiB
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    try:
        return default_client()
    except ValueError:
        return None


@functools.cache
def _blas_controller() -> Any:
    """threadpoolctl's view of the loaded BLAS libraries, found once (~2 ms)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextlib.contextmanager
def _threaded() -> Iterator[None]:
    """Around a run on the threaded scheduler: one BLAS thread, progress if asked."""
    with _blas_controller().limit(limits=1, user_api="blas"):
        if not _PROGRESS.get():
            yield
            return
        from dask.diagnostics import ProgressBar

        with ProgressBar():
            yield


def compute(*collections: Any) -> tuple[Any, ...]:
    """Compute dask collections on the current client or the threaded scheduler.

    On the threaded scheduler BLAS runs single-threaded, as in distributed's
    worker processes: the threads already fill the cores, and the same BLAS
    thread count gives the same floating-point sums everywhere.
    """
    client = current_client()
    if client is None:
        with _threaded():
            return dask.compute(*collections, scheduler="threads")
    futures = client.compute(list(collections))
    if _PROGRESS.get():
        from distributed import progress

        progress(futures)
    return tuple(client.gather(futures))


def task_memory_budget() -> int:
    """Bytes one task may use: a share of a worker's memory per thread.

    On a distributed cluster, 40% of the smallest worker memory limit divided by
    its threads (leaving room below distributed's spill and pause thresholds);
    locally, a quarter of the available memory divided by the cores. Clamped to
    128 MiB .. 2 GiB.
    """
    client = current_client()
    budget = 0
    if client is not None:
        try:
            workers = client.scheduler_info(n_workers=-1)["workers"].values()
            shares = [
                0.4 * w["memory_limit"] / max(1, w["nthreads"])
                for w in workers
                if w.get("memory_limit")
            ]
            budget = int(min(shares)) if shares else 0
        except Exception:  # an old or odd scheduler: fall back to local figures
            budget = 0
    if not budget:
        import psutil

        budget = int(psutil.virtual_memory().available / 4 / (os.cpu_count() or 1))
    return int(min(2 * 2**30, max(128 * 2**20, budget)))


def _check_images(shape: tuple[int, ...], dtype: Any, name: str) -> None:
    """Raise InputError unless ``shape`` and ``dtype`` are those of images."""
    if len(shape) != 4:
        raise InputError(
            f"{name} must be 4-D (sample, y, x, channel), got shape {shape}"
        )
    if any(size == 0 for size in shape):
        raise InputError(f"{name} is empty: shape {shape}")
    complex_ = np.issubdtype(dtype, np.complexfloating)
    real = np.issubdtype(dtype, np.number) and not complex_
    if not real:
        raise InputError(f"{name} must hold real numbers, got dtype {dtype}")


def as_dask_array(array: Any, name: str) -> da.Array:
    """A 4-D ``(sample, y, x, channel)`` dask array from numpy, dask or xarray.

    Raises
    ------
    InputError
        Not 4-D, empty, or not real numbers.
    """
    if isinstance(array, xr.DataArray):
        array = array.data
    if not isinstance(array, da.Array):
        array = np.asarray(array)
        _check_images(array.shape, array.dtype, name)
        chunk = max(1, int(64 * 2**20 // max(1, array[0].nbytes)))
        # name=False: no hashing of the whole array (seconds for large ones).
        array = da.from_array(array, chunks=(chunk, -1, -1, -1), name=False)
    _check_images(array.shape, array.dtype, name)
    return array


def as_image_source(
    images: Any, name: str, keep_numpy: bool = False
) -> da.Array | StoredImages | np.ndarray:
    """Images to read inside tasks.

    A stored reference stays as it is. With ``keep_numpy``, in-memory numpy
    images stay numpy when no distributed client is active (for graphs computed
    at once on the threaded scheduler: their tasks take views, with no graph of
    array chunks to build). Anything else becomes a dask array.
    """
    if isinstance(images, StoredImages):
        if any(size == 0 for size in images.shape):
            raise InputError(f"{name} is empty: shape {images.shape}")
        return images
    data = images.data if isinstance(images, xr.DataArray) else images
    if keep_numpy and isinstance(data, np.ndarray) and current_client() is None:
        _check_images(data.shape, data.dtype, name)
        return data
    return as_dask_array(images, name)


def minmax_bounds(array: da.Array) -> tuple[da.Array, da.Array]:
    """Lazy per-sample minimum and maximum over all pixels and channels."""
    return array.min(axis=(1, 2, 3)), array.max(axis=(1, 2, 3))


def read_bounds(path: str, index: np.ndarray | slice) -> tuple[np.ndarray, np.ndarray]:
    """Task: per-sample minimum and maximum of stored images."""
    return kernels.sample_bounds(read_images(path, index))


def _concat_bounds(
    parts: Sequence[tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
    )


def _bounds_block(images: StoredImages) -> int:
    per_sample = int(np.prod(images.shape[1:])) * np.dtype(images.dtype).itemsize
    return int(max(1, 64 * 2**20 // max(1, per_sample)))


def sample_bounds(images: da.Array | StoredImages) -> Any:
    """Lazy ``(low, high)`` per-sample bounds of a dask array or stored images."""
    if not isinstance(images, StoredImages):
        return minmax_bounds(images)
    block = _bounds_block(images)
    task = dask.delayed(read_bounds, pure=True)
    parts = [
        task(images.path, compact_index(images.index[s0 : s0 + block]))
        for s0 in range(0, images.shape[0], block)
    ]
    return dask.delayed(_concat_bounds, pure=True)(parts)


def _region(
    images: da.Array | StoredImages | np.ndarray,
    s0: int,
    s1: int,
    rows: slice,
    cols: slice,
    tasks: _TaskMaker,
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


def _read_halo(
    block: np.ndarray,
    low: np.ndarray | None,
    high: np.ndarray | None,
    padding: tuple[tuple[int, int], tuple[int, int]],
) -> np.ndarray:
    data = kernels.normalize_block(
        block, low, None if low is None else kernels.minmax_scale(low, high)
    )
    (top, bottom), (left, right) = padding
    if top or bottom or left or right:
        data = np.pad(data, ((0, 0), (top, bottom), (left, right), (0, 0)))
    return data


def _target_parameters(
    targets: Sequence[np.ndarray],
    target_bounds: Sequence[tuple[np.ndarray, np.ndarray]] | None,
) -> list[tuple[np.ndarray | None, np.ndarray | None]]:
    if target_bounds is None:
        return [(None, None)] * len(targets)
    return [(lo, kernels.minmax_scale(lo, hi)) for lo, hi in target_bounds]


BlockBounds = tuple[
    tuple[np.ndarray, np.ndarray] | None,
    Sequence[tuple[np.ndarray, np.ndarray]] | None,
]


_PHASES_LOCK = threading.Lock()
_PHASES: list[dict[str, float]] = []


def _add_phase_seconds(**seconds: float) -> None:
    if _PHASES:
        with _PHASES_LOCK:
            for phases in _PHASES:
                for name, value in seconds.items():
                    phases[name] = phases.get(name, 0.0) + value


@contextlib.contextmanager
def phase_seconds() -> Iterator[dict[str, float]]:
    """Seconds spent in tasks of this process by phase, while open.

    Phases are ``statistics``, ``combine``, ``solve`` and ``write`` (to a
    store, or into the arrays of a model in memory), timed inside the tasks:
    ``statistics_and_solve`` counts in both its phases, and tasks that dask
    hands to a thread together are timed apart. For benchmarks on the threaded
    scheduler; a distributed run's tasks record theirs on the workers.
    """
    phases: dict[str, float] = {}
    with _PHASES_LOCK:
        _PHASES.append(phases)
    try:
        yield phases
    finally:
        with _PHASES_LOCK:
            _PHASES.remove(phases)


def _timed(phase: str) -> Any:
    """Decorator: add a task function's run time to ``phase``."""

    def decorate(func: Any) -> Any:
        @functools.wraps(func)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not _PHASES:
                return func(*args, **kwargs)
            started = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                _add_phase_seconds(**{phase: time.perf_counter() - started})

        return timed

    return decorate


@_timed("statistics")
def statistics(
    source: np.ndarray,
    targets: Sequence[np.ndarray],
    bounds: BlockBounds,
    padding: tuple[tuple[int, int], tuple[int, int]],
    field: int,
    method: str = "covariance",
    squares: bool = False,
) -> kernels.TileStatistics | kernels.CovarianceStatistics:
    """Task: statistics of one tile over one block of samples.

    ``bounds`` holds the block's per-sample ``(min, max)`` of the sources and of
    each target (None: no normalisation). ``squares`` (displacement method
    only) adds the sums of squared targets.
    """
    source_bounds, target_bounds = bounds
    low, high = source_bounds if source_bounds is not None else (None, None)
    target_params = _target_parameters(targets, target_bounds)
    if method == "displacement":
        scale = None if low is None else kernels.minmax_scale(low, high)
        return kernels.raw_displacement_statistics(
            source, targets, (low, scale), target_params, padding, field, squares
        )
    if squares:
        raise ValueError("squared target sums need the displacement method")
    halo = _read_halo(source, low, high, padding)
    stacked = np.stack(
        [
            kernels.normalize_block(t, *p)
            for t, p in zip(targets, target_params, strict=True)
        ]
    )
    return kernels.tile_statistics(
        halo, stacked, field, method=method, side=COVARIANCE_SIDE
    )


@_timed("combine")
def combine(*parts: Any) -> Any:
    """Task: sum statistics of several sample blocks."""
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


@_timed("solve")
def solve(
    stats: kernels.TileStatistics | kernels.CovarianceStatistics,
    tile: Tile,
    image_shape: tuple[int, int],
    field: int,
    lam: float | str,
    grid: Sequence[float] | None = None,
) -> tuple[np.ndarray, ...]:
    """Task: solve every pixel of a tile (``lam="gcv"``: choosing from ``grid``)."""
    validity = kernels.window_validity(
        tile.y0, tile.x0, *tile.shape, image_shape, field
    )
    if lam == "gcv":
        return kernels.solve_gcv(stats, field, np.asarray(grid), validity)
    return kernels.solve_tile(stats, field, lam, validity)


def statistics_and_solve(
    source: np.ndarray,
    targets: Sequence[np.ndarray],
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


def factor(stats: kernels.TileStatistics, field: int) -> kernels.SpectralFactors:
    """Task: eigendecompose the Gram matrix of every pixel of a tile."""
    return kernels.spectral_factors(stats, field)


def press(
    factors: kernels.SpectralFactors,
    source: np.ndarray,
    targets: Sequence[np.ndarray],
    bounds: BlockBounds,
    padding: tuple[tuple[int, int], tuple[int, int]],
    field: int,
    grid: Sequence[float],
) -> np.ndarray:
    """Task: leave-one-out squared errors of one tile over one block of samples."""
    source_bounds, target_bounds = bounds
    low, high = source_bounds if source_bounds is not None else (None, None)
    halo = _read_halo(source, low, high, padding)
    params = _target_parameters(targets, target_bounds)
    stacked = np.stack(
        [kernels.normalize_block(t, *p) for t, p in zip(targets, params, strict=True)]
    )
    return kernels.press_tile(factors, halo, stacked, field, np.asarray(grid))


def select(
    factors: kernels.SpectralFactors,
    scores: np.ndarray,
    tile: Tile,
    image_shape: tuple[int, int],
    field: int,
    grid: Sequence[float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Task: solve every pixel of a tile with its penalty of least score."""
    validity = kernels.window_validity(
        tile.y0, tile.x0, *tile.shape, image_shape, field
    )
    return kernels.solve_selected(factors, scores, np.asarray(grid), validity)


@_timed("write")
def write_tile(
    path: str, tile: Tile, solution: tuple[np.ndarray, ...]
) -> tuple[int, int]:
    """Task: write one solved tile (and its chosen penalties) to the model store."""
    if len(solution) == 3:
        weight, bias, lam_map = solution
        return write_model_tile(path, tile, weight, bias, lam_map=lam_map)
    weight, bias = solution
    return write_model_tile(path, tile, weight, bias)


@_timed("write")
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


def runs_locally(*images: Any) -> bool:
    """Whether tasks on these inputs run in this process: threaded, plain graph.

    True without a distributed client when none of them is a dask array.
    """
    return current_client() is None and not any(
        isinstance(array, da.Array) for array in images
    )


class _TaskMaker:
    """Makes the tasks of a graph: ``tasks(func, *args)`` is a handle on the result.

    This one makes ``dask.delayed`` calls, which take dask collections as
    arguments and run anywhere, a distributed client included.
    """

    def __call__(self, func: Any, *args: Any, pure: bool = False) -> Any:
        return dask.delayed(func, pure=pure)(*args)

    def value(self, obj: Any) -> Any:
        """A graph key holding ``obj``, shared by the tasks given its handle."""
        return dask.delayed(obj, traverse=False, pure=False)

    def results(self, handles: list[Any]) -> list[Any] | LocalTasks:
        return handles


@dataclasses.dataclass(frozen=True)
class LocalTasks:
    """A plain task graph and the keys of its results, for the threaded scheduler."""

    graph: dict[Any, Any]
    keys: list[Any]


class _GraphMaker(_TaskMaker):
    """Makes entries of a plain graph (dask's documented tuple form) instead.

    For inputs that are no dask collections, run without a distributed client:
    building and scheduling it costs a fraction of ``dask.delayed``'s work
    (measured 0.3 ms against 1.3 ms of one core for eight small tasks), which
    counts for jobs of a few tens of milliseconds. Keys are ``(name-token, i)``
    with the function's name, as ``dask.delayed`` names them.
    """

    def __init__(self) -> None:
        self.graph: dict[Any, Any] = {}
        self.token = uuid.uuid4().hex

    def _key(self, name: str) -> tuple[str, int]:
        return (f"{name}-{self.token}", len(self.graph))

    def __call__(self, func: Any, *args: Any, pure: bool = False) -> Any:
        key = self._key(func.__name__)
        self.graph[key] = (func, *args)
        return key

    def value(self, obj: Any) -> Any:
        key = self._key("value")
        self.graph[key] = (_identity, obj)
        return key

    def results(self, handles: list[Any]) -> LocalTasks:
        return LocalTasks(self.graph, handles)


def _identity(value: Any) -> Any:
    return value


def run(tasks: list[Any] | LocalTasks) -> tuple[Any, ...]:
    """Compute what :func:`fit_tiles` returns: delayed results or a plain graph."""
    if not isinstance(tasks, LocalTasks):
        return compute(*tasks)
    import dask.threaded

    workers = dask.config.get("num_workers", None) or os.cpu_count() or 1
    # Tasks go to threads two at a time once there are enough of them: fewer
    # hand-overs through the scheduler's thread, which for jobs of a few
    # milliseconds per task measured 6% of the wall time.
    chunk = 2 if len(tasks.keys) >= 2 * workers else 1
    with _threaded():
        return tuple(dask.threaded.get(tasks.graph, tasks.keys, chunksize=chunk))


def _tree_sum(
    parts: list[Any], tasks: _TaskMaker, split_every: int = COMBINE_FAN_IN
) -> Any:
    while len(parts) > 1:
        parts = [
            tasks(combine, *parts[i : i + split_every], pure=True)
            for i in range(0, len(parts), split_every)
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
    if selecting and (grid is None or plan.method != "displacement"):
        raise ValueError("choosing penalties needs a grid and displacement statistics")
    local = runs_locally(sources, *targets)
    if arrays is not None and (store is not None or not local):
        raise ValueError("arrays are for runs in this process that write no store")
    # Not pure: hashing every argument (image views among them) costs more than
    # the smaller tasks take; each call gets a unique key instead.
    tasks = _GraphMaker() if local else _TaskMaker()
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
        block_bounds.append(tasks.value((sb, tb)))
    results = []
    for tile in plan.tiles:
        rows, cols, padding = tile.halo(halo_width, plan.image_shape)
        inner = slice(tile.y0, tile.y1), slice(tile.x0, tile.x1)
        reads = []
        for (s0, s1), bounds in zip(plan.blocks, block_bounds, strict=True):
            src = _region(sources, s0, s1, rows, cols, tasks)
            tgt = [_region(t, s0, s1, *inner, tasks) for t in targets]
            reads.append((src, tgt, bounds))
        squares = lam == "gcv"
        if len(reads) == 1 and lam != "loo":  # one task: statistics, then solve
            solution = tasks(
                statistics_and_solve, *reads[0], padding, field, plan.method, tile,
                plan.image_shape, lam, grid,
            )  # fmt: skip
            results.append(_finish(tasks, solution, tile, store, arrays))
            continue
        parts = [
            tasks(statistics, *read, padding, field, plan.method, squares)
            for read in reads
        ]
        if lam == "loo":
            factors = tasks(factor, _tree_sum(parts, tasks), field)
            press_parts = []
            for (s0, s1), (_, _, bounds) in zip(plan.blocks, reads, strict=True):
                src = _region(sources, s0, s1, rows, cols, tasks, pure=False)
                tgt = [_region(t, s0, s1, *inner, tasks, pure=False) for t in targets]
                press_parts.append(
                    tasks(press, factors, src, tgt, bounds, padding, field, grid)
                )
            scores = _tree_sum(press_parts, tasks)
            solution = tasks(
                select, factors, scores, tile, plan.image_shape, field, grid
            )
        else:
            solution = tasks(
                solve, _tree_sum(parts, tasks), tile, plan.image_shape, field, lam, grid
            )
        results.append(_finish(tasks, solution, tile, store, arrays))
    return tasks.results(results)


def _finish(
    tasks: _TaskMaker,
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


def apply(
    source: np.ndarray,
    bounds: tuple[np.ndarray, np.ndarray] | None,
    padding: tuple[tuple[int, int], tuple[int, int]],
    weight: np.ndarray,
    bias: np.ndarray,
    field: int,
    start: int,
) -> np.ndarray:
    """Task: predict one tile of one sample block for every target."""
    if not np.all(np.isfinite(source)):
        raise InputError(
            f"non-finite pixels in the images to predict (samples from {start})"
        )
    low, high = bounds if bounds is not None else (None, None)
    halo = _read_halo(source, low, high, padding)
    return kernels.apply_tile(halo, weight, bias, field)


def predict_tiles(
    sources: da.Array | StoredImages,
    weight: da.Array,
    bias: da.Array,
    tiles: Sequence[Sequence[Tile]],
    sample_block: int,
    field: int,
    normalize: bool,
) -> da.Array:
    """Lazy prediction ``(T, N, H, W, C)`` float64, one task per block and tile.

    Parameters
    ----------
    sources : dask.array.Array
        ``(N, H, W, C)`` raw images.
    weight, bias : dask.array.Array
        ``(T, H, W, C, k)`` and ``(T, H, W, C)``.
    tiles : sequence of sequence of Tile
        The tile grid, row by row.
    sample_block : int
        Samples per task.
    field : int
        Receptive field size.
    normalize : bool
        Apply per-image min-max normalisation to the sources.
    """
    n, height, width, _ = sources.shape
    n_targets = weight.shape[0]
    channels = weight.shape[3]
    stored = isinstance(sources, StoredImages)
    low, high = minmax_bounds(sources) if normalize and not stored else (None, None)
    apply_task = dask.delayed(apply, pure=True)
    bounds_task = dask.delayed(read_bounds, pure=True)
    halo_width = field // 2
    grid = []
    for s0 in range(0, n, sample_block):
        s1 = min(n, s0 + sample_block)
        if not normalize:
            bounds = None
        elif stored:
            bounds = bounds_task(sources.path, compact_index(sources.index[s0:s1]))
        else:
            bounds = (low[s0:s1], high[s0:s1])
        rows_out = []
        for row in tiles:
            cols_out = []
            for tile in row:
                rows, cols, padding = tile.halo(halo_width, (height, width))
                part = apply_task(
                    _region(sources, s0, s1, rows, cols, _TaskMaker()),
                    bounds,
                    padding,
                    weight[:, tile.y0 : tile.y1, tile.x0 : tile.x1],
                    bias[:, tile.y0 : tile.y1, tile.x0 : tile.x1],
                    field,
                    s0,
                )
                h, w = tile.shape
                cols_out.append(
                    [
                        da.from_delayed(
                            part, shape=(n_targets, s1 - s0, h, w, channels), dtype="f8"
                        )
                    ]
                )
            rows_out.append(cols_out)
        grid.append(rows_out)
    return da.block([grid])
