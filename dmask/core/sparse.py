"""Sparse local linear models: a few weights per output value, anywhere in the image.

A sparse model stores, for every output value ``(y, x, c)`` of every target,
``S`` *slots*: an input index and a weight, plus one bias. Input indices are
flat positions in the ``(H, W, C)`` image in row-major order,
``i = (y * W + x) * C + c``, so a weight may read any pixel of any channel.
Unused slots have index ``-1`` (and weight 0). Prediction is
``out[p] = bias[p] + sum_s weight[p, s] * image.flat[index[p, s]]`` for each
output value ``p = (y, x, c)``: a row of the CSR ``d x (d + 1)`` matrix
``W [x; 1]``.

This module converts between that slot layout and CSR rows, and applies a
tile of slots to whole images with a sparse product. Numpy and scipy only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = [
    "INDEX_DTYPE",
    "UNUSED",
    "apply_matrix",
    "apply_sparse",
    "slot_matrix",
    "slot_maps",
    "slot_reach",
    "slots_from_csr",
    "slots_to_csr",
    "sparse_bytes",
]


#: Index of an unused slot.
UNUSED = -1

#: Stored dtype of slot indices (images of up to 2**31 values).
INDEX_DTYPE = np.int32


def slots_from_csr(matrix: Any, slots: int | None = None) -> tuple[np.ndarray, ...]:
    """Slots of the rows of a canonical CSR ``d x (d + 1)``, bias last.

    Returns ``(index, weight, bias)``: ``(d, S)``, ``(d, S)`` and ``(d,)``, the
    row's stored entries other than the bias column in column order (explicit
    zeros kept), unused slots ``-1`` and 0. ``S`` is the largest row's count
    unless given (then every row must fit).
    """
    d = matrix.shape[0]
    indptr = np.asarray(matrix.indptr, dtype=np.int64)
    cols = np.asarray(matrix.indices, dtype=np.int64)
    values = np.asarray(matrix.data, dtype=np.float64)
    rows = np.repeat(np.arange(d, dtype=np.int64), np.diff(indptr))
    is_bias = cols == d
    bias = np.zeros(d)
    bias[rows[is_bias]] = values[is_bias]
    rows, cols, values = rows[~is_bias], cols[~is_bias], values[~is_bias]
    counts = np.bincount(rows, minlength=d)
    width = int(counts.max(initial=0)) if slots is None else int(slots)
    if counts.size and counts.max(initial=0) > width:
        raise ValueError(f"a row has {counts.max()} entries, more than {width} slots")
    starts = np.zeros(d, dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    position = np.arange(rows.size, dtype=np.int64) - starts[rows]
    index = np.full((d, max(width, 1)), UNUSED, dtype=np.int64)
    weight = np.zeros((d, max(width, 1)))
    index[rows, position] = cols
    weight[rows, position] = values
    return index, weight, bias


def slots_to_csr(index: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> Any:
    """The CSR ``d x (d + 1)`` of slots ``(d, S)`` and bias ``(d,)``.

    Rows keep their used slots (in column order, duplicates summed) and the
    bias last, stored even when zero, as the reference's files do.
    """
    d = bias.shape[0]
    used = index >= 0
    rows = np.repeat(np.arange(d, dtype=np.int64), used.sum(axis=1))
    cols = np.concatenate([index[used], np.full(d, d)]).astype(np.int64)
    values = np.concatenate([weight[used], bias])
    rows = np.concatenate([rows, np.arange(d, dtype=np.int64)])
    matrix = sp.csr_matrix((values, (rows, cols)), shape=(d, d + 1))
    matrix.sum_duplicates()
    matrix.sort_indices()
    return matrix


def apply_sparse(
    images: np.ndarray, index: np.ndarray, weight: np.ndarray, bias: np.ndarray
) -> np.ndarray:
    """Predict one tile of output values from whole images.

    Parameters
    ----------
    images : numpy.ndarray
        ``(N, H, W, C)`` float64, already normalised.
    index, weight : numpy.ndarray
        ``(T, h, w, C, S)`` slots of the tile's outputs (flat ``(H, W, C)``
        input positions, ``-1`` unused).
    bias : numpy.ndarray
        ``(T, h, w, C)``.

    Returns
    -------
    numpy.ndarray
        ``(T, N, h, w, C)`` float64.
    """
    values = int(np.prod(images.shape[1:]))
    return apply_matrix(images, slot_matrix(index, weight, values), bias)


def slot_matrix(index: np.ndarray, weight: np.ndarray, values: int) -> Any:
    """The CSR ``(outputs, values)`` of slots ``(..., S)`` (bias left out)."""
    slots = index.shape[-1]
    index = index.reshape(-1, slots)
    rows = index.shape[0]
    used = index >= 0
    indptr = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(used.sum(axis=1), out=indptr[1:])
    return sp.csr_matrix(
        (weight.reshape(rows, slots)[used], index[used], indptr), shape=(rows, values)
    )


def apply_matrix(images: np.ndarray, matrix: Any, bias: np.ndarray) -> np.ndarray:
    """:func:`apply_sparse` with the slots already a :func:`slot_matrix`."""
    n = images.shape[0]
    flat = np.ascontiguousarray(images.reshape(n, -1), dtype=np.float64)
    shape = bias.shape
    out = np.asarray(matrix @ flat.T)
    out += bias.reshape(-1, 1)
    return np.moveaxis(out.reshape(*shape, n), -1, 1)


def slot_reach(index: np.ndarray, height: int, width: int, channels: int) -> int:
    """Largest ``max(|dy|, |dx|)`` from an output pixel to a pixel it reads.

    ``index`` is ``(..., H, W, C, S)`` or ``(..., H * W * C, S)``; 0 if no slot
    is used.
    """
    slots = index.shape[-1]
    flat = index.reshape(-1, height * width * channels, slots)
    out_pixel = np.arange(height * width * channels) // channels
    used = flat >= 0
    if not used.any():
        return 0
    read = np.where(used, flat, 0) // channels
    dy = np.abs(read // width - (out_pixel // width)[None, :, None])
    dx = np.abs(read % width - (out_pixel % width)[None, :, None])
    return int(np.max(np.where(used, np.maximum(dy, dx), 0)))


def slot_maps(
    index: np.ndarray, weight: np.ndarray, width: int, channels: int, channel: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What one output channel of a sparse model reads, per output pixel.

    ``index`` and ``weight`` are ``(H, W, C, S)``. Returns ``(H, W)`` maps: the
    weight on the output's own input value (same pixel, same channel), the sum
    of ``|w|`` over every other value read, and the ``|w|``-weighted mean
    distance (pixels, the larger of ``|dy|`` and ``|dx|``) of the values read
    (0 where nothing is read).
    """
    height = index.shape[0]
    idx = index[:, :, channel].astype(np.int64)
    w = weight[:, :, channel]
    used = idx >= 0
    ys, xs = np.mgrid[0:height, 0:width]
    own = ((ys * width + xs) * channels + channel)[..., None]
    is_own = used & (idx == own)
    read = np.where(used, idx, 0) // channels
    distance = np.maximum(
        np.abs(read // width - ys[..., None]), np.abs(read % width - xs[..., None])
    )
    size = np.where(used, np.abs(w), 0.0)
    total = size.sum(axis=-1)
    mean_distance = np.divide(
        (size * distance).sum(axis=-1), total, out=np.zeros_like(total), where=total > 0
    )
    return (
        np.where(is_own, w, 0.0).sum(axis=-1),
        np.where(is_own, 0.0, size).sum(axis=-1),
        mean_distance,
    )


def sparse_bytes(values: int, slots: int) -> int:
    """Bytes of ``values`` outputs' slots in memory (int64 index, float64 weight)."""
    return values * (slots * 16 + 8)
