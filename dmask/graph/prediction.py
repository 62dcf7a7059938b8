"""The graph of a prediction over tiles."""

from __future__ import annotations

from collections.abc import Sequence

import dask
import dask.array as da
import numpy as np

from dmask.core import (
    forward,
)
from dmask.core.planning import Tile
from dmask.errors import InputError
from dmask.graph.fit_tasks import read_halo, region
from dmask.graph.inputs import minmax_bounds, read_bounds
from dmask.graph.taskgraph import TaskMaker
from dmask.io.dataset_store import StoredImages, compact_index

__all__ = ["apply", "predict_tiles"]


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
    halo = read_halo(source, low, high, padding)
    return forward.apply_tile(halo, weight, bias, field)


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
                    region(sources, s0, s1, rows, cols, TaskMaker()),
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
