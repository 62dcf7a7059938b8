"""The graph of a prediction over tiles."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np

from dmask.core import forward, minmax, sparse
from dmask.core.planning import Tile
from dmask.errors import InputError
from dmask.graph.fit_tasks import read_halo, region
from dmask.graph.inputs import minmax_bounds, read_bounds
from dmask.graph.taskgraph import TaskMaker
from dmask.io.dataset_store import StoredImages, compact_index

__all__ = [
    "predict_sparse_tile",
    "predict_sparse_tiles",
    "predict_tile",
    "predict_tiles",
]


#: A prediction task's ``bounds`` when its block holds whole images: it takes
#: each image's minimum and maximum itself (no pass over the images before).
OWN_BOUNDS = "own"


def predict_tile(
    source: np.ndarray,
    bounds: tuple[np.ndarray, np.ndarray] | str | None,
    padding: tuple[tuple[int, int], tuple[int, int]],
    weight: np.ndarray,
    bias: np.ndarray,
    field: int,
    start: int,
    strength: float = 1.0,
    dtype: type | np.dtype = np.float64,
) -> np.ndarray:
    """Task: predict one tile of one sample block for every target, as ``dtype``."""
    _check_finite(source, start)
    if isinstance(bounds, str) and bounds == OWN_BOUNDS:  # the block is whole images
        bounds = minmax.sample_bounds(source)
    low, high = bounds if bounds is not None else (None, None)
    scale = None if low is None else minmax.minmax_scale(low, high)
    if strength == 1:
        return forward.predict_block(
            source, low, scale, padding, weight, bias, field, dtype
        )
    predicted = forward.predict_block(source, low, scale, padding, weight, bias, field)
    halo = read_halo(source, low, high, padding)
    b = field // 2
    h, w = bias.shape[1:3]
    blended = forward.blend(predicted, halo[:, b : b + h, b : b + w], strength)
    return blended.astype(dtype, copy=False)


def _check_finite(source: np.ndarray, start: int) -> None:
    if not np.all(np.isfinite(source)):
        raise InputError(
            f"non-finite pixels in the images to predict (samples from {start})"
        )


def predict_sparse_tile(
    source: np.ndarray,
    bounds: tuple[np.ndarray, np.ndarray] | None,
    index: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    start: int,
    corner: tuple[int, int] = (0, 0),
    strength: float = 1.0,
) -> np.ndarray:
    """Task: predict one tile (top left at ``corner``) of a sparse model."""
    _check_finite(source, start)
    low, high = bounds if bounds is not None else (None, None)
    images = read_halo(source, low, high, ((0, 0), (0, 0)))
    predicted = sparse.apply_sparse(images, index, weight, bias)
    (y0, x0), (h, w) = corner, bias.shape[1:3]
    return forward.blend(predicted, images[:, y0 : y0 + h, x0 : x0 + w], strength)


def _block_bounds(
    sources: da.Array | StoredImages, normalize: bool
) -> tuple[bool, Any, Any]:
    stored = isinstance(sources, StoredImages)
    low, high = minmax_bounds(sources) if normalize and not stored else (None, None)
    return stored, low, high


def _bounds_of(
    sources: Any, normalize: bool, stored: bool, low: Any, high: Any, s0: int, s1: int
) -> Any:
    if not normalize:
        return None
    if stored:
        task = dask.delayed(read_bounds, pure=True)
        return task(sources.path, compact_index(sources.index[s0:s1]))
    return (low[s0:s1], high[s0:s1])


def predict_sparse_tiles(
    sources: da.Array | StoredImages,
    index: da.Array,
    weight: da.Array,
    bias: da.Array,
    tiles: Sequence[Sequence[Tile]],
    sample_block: int,
    normalize: bool,
    strength: float = 1.0,
) -> da.Array:
    """Lazy prediction ``(T, N, H, W, C)`` of a sparse model (as :func:`predict_tiles`).

    Each task reads whole images (a sparse weight may read any pixel) and one
    output tile's slots, so its memory is the sample block plus the tile.
    """
    n, height, width, _ = sources.shape
    n_targets, channels = weight.shape[0], weight.shape[3]
    stored, low, high = _block_bounds(sources, normalize)
    task = dask.delayed(predict_sparse_tile, pure=True)
    whole = (slice(0, height), slice(0, width))
    grid = []
    for s0 in range(0, n, sample_block):
        s1 = min(n, s0 + sample_block)
        bounds = _bounds_of(sources, normalize, stored, low, high, s0, s1)
        images = region(sources, s0, s1, *whole, TaskMaker())
        rows_out = []
        for row in tiles:
            cols_out = []
            for tile in row:
                part = task(
                    images,
                    bounds,
                    index[:, tile.y0 : tile.y1, tile.x0 : tile.x1],
                    weight[:, tile.y0 : tile.y1, tile.x0 : tile.x1],
                    bias[:, tile.y0 : tile.y1, tile.x0 : tile.x1],
                    s0,
                    (tile.y0, tile.x0),
                    strength,
                )
                h, w = tile.shape
                shape = (n_targets, s1 - s0, h, w, channels)
                cols_out.append([da.from_delayed(part, shape=shape, dtype="f8")])
            rows_out.append(cols_out)
        grid.append(rows_out)
    return da.block([grid])


def predict_tiles(
    sources: da.Array | StoredImages,
    weight: da.Array,
    bias: da.Array,
    tiles: Sequence[Sequence[Tile]],
    sample_block: int,
    field: int,
    normalize: bool,
    strength: float = 1.0,
    dtype: type | np.dtype = np.float64,
) -> da.Array:
    """Lazy prediction ``(T, N, H, W, C)`` of ``dtype``, one task per block and tile.

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
    strength : float
        Expression strength (:func:`dmask.core.forward.blend`).
    dtype : numpy dtype
        Of the predictions (summed in float64, rounded once).
    """
    n, height, width, _ = sources.shape
    n_targets = weight.shape[0]
    channels = weight.shape[3]
    whole = len(tiles) == 1 and len(tiles[0]) == 1  # each task reads whole images
    stored, low, high = _block_bounds(sources, normalize and not whole)
    apply_task = dask.delayed(predict_tile, pure=True)
    halo_width = field // 2
    grid = []
    for s0 in range(0, n, sample_block):
        s1 = min(n, s0 + sample_block)
        if normalize and whole:
            bounds: Any = OWN_BOUNDS
        else:
            bounds = _bounds_of(sources, normalize, stored, low, high, s0, s1)
        rows_out = []
        for row in tiles:
            cols_out = []
            for tile in row:
                rows, cols, padding = tile.halo(halo_width, (height, width))
                part = apply_task(
                    region(sources, s0, s1, rows, cols, TaskMaker()),
                    bounds,
                    padding,
                    weight[:, tile.y0 : tile.y1, tile.x0 : tile.x1],
                    bias[:, tile.y0 : tile.y1, tile.x0 : tile.x1],
                    field,
                    s0,
                    strength,
                    dtype,
                )
                h, w = tile.shape
                cols_out.append(
                    [
                        da.from_delayed(
                            part,
                            shape=(n_targets, s1 - s0, h, w, channels),
                            dtype=np.dtype(dtype),
                        )
                    ]
                )
            rows_out.append(cols_out)
        grid.append(rows_out)
    return da.block([grid])
