"""The model's forward pass on a halo tile: window weights times inputs plus bias."""

from __future__ import annotations

import numpy as np

from dmask.core.windows import window_offsets

__all__ = ["apply_tile"]


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
    n_targets, h, w, nc, _ = weights.shape
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
