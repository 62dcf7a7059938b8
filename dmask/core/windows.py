"""Receptive-field windows: offsets, displacements, validity masks, sub-tiles."""

from __future__ import annotations

from functools import cache

import numpy as np

__all__ = ["displacements", "window_offsets", "window_validity"]


def window_offsets(field: int) -> np.ndarray:
    """Offsets ``(dy, dx)`` of an ``r x r`` window in row-major order.

    Parameters
    ----------
    field : int
        Odd receptive field size ``r``.

    Returns
    -------
    numpy.ndarray
        Integer array ``(r * r, 2)``; feature ``a`` reads pixel ``p + offsets[a]``.
    """
    b = field // 2
    dy, dx = np.meshgrid(np.arange(-b, b + 1), np.arange(-b, b + 1), indexing="ij")
    return np.stack([dy.ravel(), dx.ravel()], axis=1)


@cache
def displacements(field: int) -> tuple[tuple[int, int], ...]:
    """Half-plane of displacements between two window offsets.

    Parameters
    ----------
    field : int
        Odd receptive field size ``r``.

    Returns
    -------
    tuple of (int, int)
        ``(dy, dx)`` with ``dy > 0``, or ``dy == 0`` and ``dx >= 0``.
    """
    span = field - 1
    out = []
    for dy in range(0, span + 1):
        for dx in range(-span, span + 1):
            if dy > 0 or dx >= 0:
                out.append((dy, dx))
    return tuple(out)


def window_validity(
    y0: int, x0: int, height: int, width: int, image_shape: tuple[int, int], field: int
) -> np.ndarray:
    """Which window offsets of each tile pixel fall inside the image.

    Parameters
    ----------
    y0, x0 : int
        Global position of the tile's first pixel.
    height, width : int
        Tile shape.
    image_shape : tuple of int
        ``(H, W)`` of the whole image.
    field : int
        Receptive field size.

    Returns
    -------
    numpy.ndarray
        Boolean ``(height, width, r * r)``.
    """
    offsets = window_offsets(field)
    ys = np.arange(y0, y0 + height)[:, None, None] + offsets[None, None, :, 0]
    xs = np.arange(x0, x0 + width)[None, :, None] + offsets[None, None, :, 1]
    return (ys >= 0) & (ys < image_shape[0]) & (xs >= 0) & (xs < image_shape[1])
