"""The model's forward pass on a halo tile: window weights times inputs plus bias."""

from __future__ import annotations

import math

import numpy as np

from dmask.core import _engine, minmax
from dmask.core.windows import window_offsets

__all__ = ["apply_tile", "blend", "normalised_halo", "predict_block"]

Padding = tuple[tuple[int, int], tuple[int, int]]


def predict_block(
    raw: np.ndarray,
    low: np.ndarray | None,
    scale: np.ndarray | None,
    padding: Padding,
    weights: np.ndarray,
    bias: np.ndarray,
    field: int,
    dtype: type | np.dtype = np.float64,
) -> np.ndarray:
    """Predict one tile of every target from a raw, unpadded input block.

    Parameters
    ----------
    raw : numpy.ndarray
        ``(n, rows, cols, C)`` of any real dtype: the tile's halo as it lies
        inside the image.
    low, scale : numpy.ndarray or None
        ``(n,)`` per-image normalisation ``(raw - low) * scale``
        (:func:`dmask.core.minmax.minmax_parameters`); None for none.
    padding : ((int, int), (int, int))
        Zero rows above and below, columns left and right, that complete the
        halo to ``(h + 2b, w + 2b)`` (the image's border).
    weights, bias, field
        As :func:`apply_tile`.
    dtype : numpy dtype
        Of the result: summed in float64, then rounded once to it.

    Returns
    -------
    numpy.ndarray
        ``(T, n, h, w, C)``, the values of :func:`apply_tile` on the
        normalised, zero-padded halo.
    """
    joint = weights.shape[-1] != field * field  # joint colour: numpy
    if joint or not _engine.enabled():
        halo = normalised_halo(raw, low, scale, padding)
        return apply_tile(halo, weights, bias, field).astype(dtype, copy=False)
    top, left = padding[0][0], padding[1][0]
    return _compiled(raw, low, scale, top, left, weights, bias, dtype)


def normalised_halo(
    raw: np.ndarray, low: np.ndarray | None, scale: np.ndarray | None, padding: Padding
) -> np.ndarray:
    """A raw block normalised (float64) and completed by its zero ``padding``."""
    halo = minmax.normalize_block(raw, low, scale)
    (top, bottom), (left, right) = padding
    if top or bottom or left or right:
        halo = np.pad(halo, ((0, 0), (top, bottom), (left, right), (0, 0)))
    return halo


def _compiled(
    raw: np.ndarray,
    low: np.ndarray | None,
    scale: np.ndarray | None,
    top: int,
    left: int,
    weights: np.ndarray,
    bias: np.ndarray,
    dtype: type | np.dtype = np.float64,
) -> np.ndarray:
    from dmask.core._engine_forward import forward_rows

    n_targets, h, w, channels, k = weights.shape
    n, rows, cols, _ = raw.shape
    field = math.isqrt(k)
    planes = np.ascontiguousarray(np.moveaxis(weights, -1, 1), dtype=np.float64)
    if low is None or scale is None:
        low, scale = np.zeros(n), np.ones(n)
    out = np.empty((n_targets, n, h, w * channels), dtype=dtype)
    forward_rows(
        np.ascontiguousarray(raw).reshape(n, rows, cols * channels),
        np.ascontiguousarray(low, dtype=np.float64),
        np.ascontiguousarray(scale, dtype=np.float64),
        top,
        left,
        planes.reshape(n_targets, k, h, w * channels),
        np.ascontiguousarray(bias, dtype=np.float64).reshape(n_targets, h, -1),
        window_offsets(field) + field // 2,
        channels,
        out,
    )
    return out.reshape(n_targets, n, h, w, channels)


def apply_tile(
    halo: np.ndarray, weights: np.ndarray, bias: np.ndarray, field: int
) -> np.ndarray:
    """Predict one tile of every target from a halo block.

    Parameters
    ----------
    halo : numpy.ndarray
        ``(n, h + 2b, w + 2b, C)`` normalised, zero-padded source halo block.
    weights : numpy.ndarray
        ``(T, h, w, C, r * r)``, or ``(T, h, w, C, r * r * C)`` in the joint
        colour mode (:mod:`dmask.core.joint`: each output channel reads the
        window in every channel).
    bias : numpy.ndarray
        ``(T, h, w, C)``.
    field : int
        Odd receptive field size ``r``.

    Returns
    -------
    numpy.ndarray
        ``(T, n, h, w, C)`` float64.
    """
    n_targets, h, w, nc, k = weights.shape
    if _engine.enabled() and k == field * field:
        return _compiled(halo, None, None, 0, 0, weights, bias)
    n = halo.shape[0]
    out = np.empty((n_targets, n, h, w, nc))
    out[:] = np.asarray(bias, dtype=np.float64)[:, None]
    offsets = window_offsets(field) + field // 2
    if weights.shape[-1] != len(offsets):  # joint: offset-major, channel last
        per = weights.reshape(n_targets, h, w, nc, len(offsets), -1)
        for a, (oy, ox) in enumerate(offsets):
            window = halo[:, oy : oy + h, ox : ox + w]
            out += np.einsum("tyxce,nyxe->tnyxc", per[..., a, :], window)
        return out
    for a, (oy, ox) in enumerate(offsets):
        window = halo[:, oy : oy + h, ox : ox + w]
        out += weights[:, None, :, :, :, a] * window[None]
    return out


def blend(predicted: np.ndarray, source: np.ndarray, strength: float) -> np.ndarray:
    """Expression strength: ``source + strength * (predicted - source)``.

    ``predicted`` is ``(T, n, h, w, C)``, ``source`` the ``(n, h, w, C)`` input
    in the model's space (normalised if the model normalises). 0 gives the
    input, 1 the model's output itself (unchanged, bit for bit), values in
    between interpolate and values above 1 exaggerate the change.
    """
    if strength == 1:
        return predicted
    return source[None] + strength * (predicted - source[None])
