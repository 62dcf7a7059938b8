"""Maps of what masked ridge regression learned, from per-pixel window weights.

Weights are laid out as in a model store: the last axis holds the ``k = r * r``
weights of a pixel's window in row-major order of the offsets ``(dy, dx)``,
``dy, dx`` in ``-(r // 2) .. r // 2``, so the centre (the pixel itself) is entry
``k // 2``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dmask.errors import InputError

__all__ = ["centre_weight", "field_at", "off_centre_mass"]


def _checked(weights: Any, field: Any, name: str = "weights") -> np.ndarray:
    """``weights`` as an array whose last axis holds ``field * field`` entries."""
    if isinstance(field, bool) or not isinstance(field, (int, np.integer)):
        raise InputError(f"field must be an odd integer >= 1, got {field!r}")
    if field < 1 or field % 2 == 0:
        raise InputError(f"field must be an odd integer >= 1, got {field}")
    array = np.asarray(weights)
    if array.ndim < 1 or array.shape[-1] != field * field:
        raise InputError(
            f"{name} has shape {array.shape}: the last axis must hold "
            f"field * field = {field * field} weights"
        )
    if not np.issubdtype(array.dtype, np.number):
        raise InputError(f"{name} must be numeric, got dtype {array.dtype}")
    return array


def centre_weight(weights: Any, field: int) -> np.ndarray:
    """Weight of each pixel on its own input value.

    Parameters
    ----------
    weights : array-like
        ``(..., k)`` window weights, e.g. ``(H, W, k)`` or ``(H, W, C, k)``.
    field : int
        Receptive field size ``r`` (``k = r * r``).

    Returns
    -------
    numpy.ndarray
        ``(...)`` float64.
    """
    array = _checked(weights, field)
    return np.array(array[..., (field * field) // 2], dtype=np.float64)


def off_centre_mass(weights: Any, field: int) -> np.ndarray:
    """Sum of ``|w|`` over the window offsets other than the centre.

    Parameters
    ----------
    weights : array-like
        ``(..., k)`` window weights.
    field : int
        Receptive field size ``r``.

    Returns
    -------
    numpy.ndarray
        ``(...)`` float64, 0 for ``r = 1``.
    """
    array = np.abs(_checked(weights, field).astype(np.float64))
    centre = (field * field) // 2
    return array[..., :centre].sum(axis=-1) + array[..., centre + 1 :].sum(axis=-1)


def field_at(weights: Any, field: int, y: int, x: int) -> np.ndarray:
    """The ``r x r`` weights of one pixel, laid out as the window on the image.

    Parameters
    ----------
    weights : array-like
        ``(H, W, k)`` or ``(H, W, C, k)`` window weights.
    field : int
        Receptive field size ``r``.
    y, x : int
        Pixel (row, column).

    Returns
    -------
    numpy.ndarray
        ``(r, r)`` (or ``(C, r, r)``) float64: entry ``[i, j]`` weighs input pixel
        ``(y + i - r // 2, x + j - r // 2)``; offsets outside the image weigh 0.
    """
    array = _checked(weights, field)
    if array.ndim not in (3, 4):
        raise InputError(
            f"weights has shape {array.shape}: expected (H, W, k) or (H, W, C, k)"
        )
    height, width = array.shape[:2]
    for label, value, extent in (("y", y, height), ("x", x, width)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise InputError(f"{label} must be an integer pixel index, got {value!r}")
        if not 0 <= value < extent:
            raise InputError(
                f"{label} = {value} is outside the image (0..{extent - 1})"
            )
    values = np.array(array[y, x], dtype=np.float64)
    return values.reshape(*values.shape[:-1], field, field)
