"""The compiled forward pass (numba): predictions straight from raw image blocks.

One output row of one sample at a time: the row starts as the bias, and each
window offset adds its weight plane's row times the input row it reads,
normalised on the fly (``(raw - low) * scale``), over the positions whose input
lies inside the image (the zero padding adds nothing, so it is never built).
The rows run over ``x`` and channel together, contiguous in the input, the
weight planes and the output, so each addition is one vector loop. Rows are
taken ``y``-major over the samples, so one row's weight planes stay in cache
for every sample of the block.

The operations and their order are numpy's in :func:`dmask.core.forward.apply_tile`
(normalise, then the bias plus each offset's product in window order, with no
fused multiply-add), so both give the same values. Used by
:mod:`dmask.core.forward` when :func:`dmask.core._engine.enabled`; releases
the GIL.
"""

from __future__ import annotations

import numpy as np

from dmask.core._engine import AVAILABLE

if AVAILABLE:
    from dmask.core._engine import jit

__all__ = ["forward_rows"]


if AVAILABLE:

    @jit(nogil=True)
    def forward_rows(
        raw: np.ndarray,
        low: np.ndarray,
        scale: np.ndarray,
        top: int,
        left: int,
        planes: np.ndarray,
        bias: np.ndarray,
        offsets: np.ndarray,
        channels: int,
        out: np.ndarray,
    ) -> None:
        """Fill ``out`` ``(T, n, h, w * C)`` with the predictions of ``raw``
        (summed in float64, stored in ``out``'s dtype).

        ``raw`` is ``(n, rows, cols * C)`` (any real dtype, C-contiguous),
        the block of input the tile reads without its zero padding: output
        pixel ``(y, x)`` reads padded position ``(y + dy, x + dx)``, that is
        raw position ``(y + dy - top, x + dx - left)``, for each window offset
        ``(dy, dx)`` of ``offsets`` (``(k, 2)``, from 0), in each of the
        ``channels`` channels apart. ``low`` and
        ``scale`` ``(n,)`` normalise each sample; ``planes`` ``(T, k, h,
        w * C)`` are the weights offset-major and ``bias`` ``(T, h, w * C)``.
        """
        n_targets, k, h, wc = planes.shape
        n, rows, raw_wc = raw.shape
        width = wc // channels
        cols = raw_wc // channels
        row = np.empty(wc)  # one output row in float64, then stored as out's dtype
        for t in range(n_targets):
            for y in range(h):
                plane_bias = bias[t, y]
                for s in range(n):
                    row[:] = plane_bias
                    lo = low[s]
                    sc = scale[s]
                    for a in range(k):
                        ry = y + offsets[a, 0] - top
                        if ry < 0 or ry >= rows:
                            continue
                        dx = offsets[a, 1]
                        x0 = max(0, left - dx)
                        x1 = min(width, cols + left - dx)
                        if x1 <= x0:
                            continue
                        # slices indexed from 0: no negative-index checks, so
                        # the loop vectorises (measured 5x over indexing the
                        # rows at j and j + shift)
                        j0, j1 = x0 * channels, x1 * channels
                        shift = (dx - left) * channels
                        part = row[j0:j1]
                        weight = planes[t, a, y, j0:j1]
                        source = raw[s, ry, j0 + shift : j1 + shift]
                        for i in range(part.shape[0]):
                            part[i] += weight[i] * ((source[i] - lo) * sc)
                    target = out[t, s, y]
                    for j in range(wc):
                        target[j] = row[j]
