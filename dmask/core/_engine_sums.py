"""Compiled displacement sums (numba): the statistics straight from raw images.

Each halo row is normalised into a ring of ``r`` sample-last rows that stays in
cache, and two neighbouring positions and four displacements are summed at a time,
sharing the vectors both read. Used by :mod:`dmask.core.displacement` when
:func:`dmask.core._engine.enabled`; releases the GIL.
"""

from __future__ import annotations

import numpy as np

from dmask.core._engine import AVAILABLE

if AVAILABLE:
    from dmask.core._engine import jit

__all__ = ["rolling_displacement_sums"]


if AVAILABLE:

    @jit(nogil=True)
    def _fill_row(
        raw: np.ndarray,
        low: np.ndarray,
        scale: np.ndarray,
        y: int,
        left: int,
        row: np.ndarray,
        moved: np.ndarray,
    ) -> None:
        # Row y of every sample, normalised, into row[left + x, c, s]. First
        # the raw values move to ``moved[x * C + c, s]`` (raw dtype) eight
        # samples at a time, unrolled: rows of images whose size is a power of
        # two sit at strides that share cache sets, and more at once evict each
        # other. Then each pixel's samples are normalised in vector lanes. The
        # two steps measured 1.5x (one channel) to 1.9x (three) faster than one.
        n, _, w, channels = raw.shape
        for s0 in range(0, n - 7, 8):
            for x in range(w):
                for c in range(channels):
                    m = moved[x * channels + c]
                    m[s0] = raw[s0, y, x, c]
                    m[s0 + 1] = raw[s0 + 1, y, x, c]
                    m[s0 + 2] = raw[s0 + 2, y, x, c]
                    m[s0 + 3] = raw[s0 + 3, y, x, c]
                    m[s0 + 4] = raw[s0 + 4, y, x, c]
                    m[s0 + 5] = raw[s0 + 5, y, x, c]
                    m[s0 + 6] = raw[s0 + 6, y, x, c]
                    m[s0 + 7] = raw[s0 + 7, y, x, c]
        for s in range(n - n % 8, n):
            for x in range(w):
                for c in range(channels):
                    moved[x * channels + c, s] = raw[s, y, x, c]
        for x in range(w):
            for c in range(channels):
                m = moved[x * channels + c]
                out = row[left + x, c]
                for s in range(n):
                    out[s] = (m[s] - low[s]) * scale[s]

    # Dot products over samples. Every product a . b is summed the same way in
    # each of these, four lanes (samples s = l mod 4) then the rest, added in one
    # fixed order, so that a sum is the same bit for bit whichever of them made it
    # (a statistics store of field R and a training of r <= R pair their vectors
    # differently). The lanes are independent sums, which the compiler puts in
    # vector registers without reassociating anything (no fastmath).
    @jit(nogil=True)
    def _dot(a, b):
        # a . b
        n = a.shape[0]
        m = n - n % 4
        t0_0 = t0_1 = t0_2 = t0_3 = 0.0
        for s in range(0, m, 4):
            t0_0 += a[s] * b[s]
            t0_1 += a[s + 1] * b[s + 1]
            t0_2 += a[s + 2] * b[s + 2]
            t0_3 += a[s + 3] * b[s + 3]
        u0 = 0.0
        for s in range(m, n):
            u0 += a[s] * b[s]
        return ((t0_0 + t0_1) + (t0_2 + t0_3)) + u0

    @jit(nogil=True)
    def _dots_2x4(a0, a1, b0, b1, b2, b3, b4):
        # a0 against b0..b3 and a1 against b1..b4: seven vectors read per eight products
        n = a0.shape[0]
        m = n - n % 4
        t0_0 = t0_1 = t0_2 = t0_3 = 0.0
        t1_0 = t1_1 = t1_2 = t1_3 = 0.0
        t2_0 = t2_1 = t2_2 = t2_3 = 0.0
        t3_0 = t3_1 = t3_2 = t3_3 = 0.0
        t4_0 = t4_1 = t4_2 = t4_3 = 0.0
        t5_0 = t5_1 = t5_2 = t5_3 = 0.0
        t6_0 = t6_1 = t6_2 = t6_3 = 0.0
        t7_0 = t7_1 = t7_2 = t7_3 = 0.0
        for s in range(0, m, 4):
            t0_0 += a0[s] * b0[s]
            t1_0 += a0[s] * b1[s]
            t2_0 += a0[s] * b2[s]
            t3_0 += a0[s] * b3[s]
            t4_0 += a1[s] * b1[s]
            t5_0 += a1[s] * b2[s]
            t6_0 += a1[s] * b3[s]
            t7_0 += a1[s] * b4[s]
            t0_1 += a0[s + 1] * b0[s + 1]
            t1_1 += a0[s + 1] * b1[s + 1]
            t2_1 += a0[s + 1] * b2[s + 1]
            t3_1 += a0[s + 1] * b3[s + 1]
            t4_1 += a1[s + 1] * b1[s + 1]
            t5_1 += a1[s + 1] * b2[s + 1]
            t6_1 += a1[s + 1] * b3[s + 1]
            t7_1 += a1[s + 1] * b4[s + 1]
            t0_2 += a0[s + 2] * b0[s + 2]
            t1_2 += a0[s + 2] * b1[s + 2]
            t2_2 += a0[s + 2] * b2[s + 2]
            t3_2 += a0[s + 2] * b3[s + 2]
            t4_2 += a1[s + 2] * b1[s + 2]
            t5_2 += a1[s + 2] * b2[s + 2]
            t6_2 += a1[s + 2] * b3[s + 2]
            t7_2 += a1[s + 2] * b4[s + 2]
            t0_3 += a0[s + 3] * b0[s + 3]
            t1_3 += a0[s + 3] * b1[s + 3]
            t2_3 += a0[s + 3] * b2[s + 3]
            t3_3 += a0[s + 3] * b3[s + 3]
            t4_3 += a1[s + 3] * b1[s + 3]
            t5_3 += a1[s + 3] * b2[s + 3]
            t6_3 += a1[s + 3] * b3[s + 3]
            t7_3 += a1[s + 3] * b4[s + 3]
        u0 = 0.0
        u1 = 0.0
        u2 = 0.0
        u3 = 0.0
        u4 = 0.0
        u5 = 0.0
        u6 = 0.0
        u7 = 0.0
        for s in range(m, n):
            u0 += a0[s] * b0[s]
            u1 += a0[s] * b1[s]
            u2 += a0[s] * b2[s]
            u3 += a0[s] * b3[s]
            u4 += a1[s] * b1[s]
            u5 += a1[s] * b2[s]
            u6 += a1[s] * b3[s]
            u7 += a1[s] * b4[s]
        return (
            ((t0_0 + t0_1) + (t0_2 + t0_3)) + u0,
            ((t1_0 + t1_1) + (t1_2 + t1_3)) + u1,
            ((t2_0 + t2_1) + (t2_2 + t2_3)) + u2,
            ((t3_0 + t3_1) + (t3_2 + t3_3)) + u3,
            ((t4_0 + t4_1) + (t4_2 + t4_3)) + u4,
            ((t5_0 + t5_1) + (t5_2 + t5_3)) + u5,
            ((t6_0 + t6_1) + (t6_2 + t6_3)) + u6,
            ((t7_0 + t7_1) + (t7_2 + t7_3)) + u7,
        )

    @jit(nogil=True)
    def _dots_2x3(a0, a1, b0, b1, b2, b3):
        # a0 against b0..b2 and a1 against b1..b3
        n = a0.shape[0]
        m = n - n % 4
        t0_0 = t0_1 = t0_2 = t0_3 = 0.0
        t1_0 = t1_1 = t1_2 = t1_3 = 0.0
        t2_0 = t2_1 = t2_2 = t2_3 = 0.0
        t3_0 = t3_1 = t3_2 = t3_3 = 0.0
        t4_0 = t4_1 = t4_2 = t4_3 = 0.0
        t5_0 = t5_1 = t5_2 = t5_3 = 0.0
        for s in range(0, m, 4):
            t0_0 += a0[s] * b0[s]
            t1_0 += a0[s] * b1[s]
            t2_0 += a0[s] * b2[s]
            t3_0 += a1[s] * b1[s]
            t4_0 += a1[s] * b2[s]
            t5_0 += a1[s] * b3[s]
            t0_1 += a0[s + 1] * b0[s + 1]
            t1_1 += a0[s + 1] * b1[s + 1]
            t2_1 += a0[s + 1] * b2[s + 1]
            t3_1 += a1[s + 1] * b1[s + 1]
            t4_1 += a1[s + 1] * b2[s + 1]
            t5_1 += a1[s + 1] * b3[s + 1]
            t0_2 += a0[s + 2] * b0[s + 2]
            t1_2 += a0[s + 2] * b1[s + 2]
            t2_2 += a0[s + 2] * b2[s + 2]
            t3_2 += a1[s + 2] * b1[s + 2]
            t4_2 += a1[s + 2] * b2[s + 2]
            t5_2 += a1[s + 2] * b3[s + 2]
            t0_3 += a0[s + 3] * b0[s + 3]
            t1_3 += a0[s + 3] * b1[s + 3]
            t2_3 += a0[s + 3] * b2[s + 3]
            t3_3 += a1[s + 3] * b1[s + 3]
            t4_3 += a1[s + 3] * b2[s + 3]
            t5_3 += a1[s + 3] * b3[s + 3]
        u0 = 0.0
        u1 = 0.0
        u2 = 0.0
        u3 = 0.0
        u4 = 0.0
        u5 = 0.0
        for s in range(m, n):
            u0 += a0[s] * b0[s]
            u1 += a0[s] * b1[s]
            u2 += a0[s] * b2[s]
            u3 += a1[s] * b1[s]
            u4 += a1[s] * b2[s]
            u5 += a1[s] * b3[s]
        return (
            ((t0_0 + t0_1) + (t0_2 + t0_3)) + u0,
            ((t1_0 + t1_1) + (t1_2 + t1_3)) + u1,
            ((t2_0 + t2_1) + (t2_2 + t2_3)) + u2,
            ((t3_0 + t3_1) + (t3_2 + t3_3)) + u3,
            ((t4_0 + t4_1) + (t4_2 + t4_3)) + u4,
            ((t5_0 + t5_1) + (t5_2 + t5_3)) + u5,
        )

    @jit(nogil=True, fastmath=True)
    def _band_dots(
        first: np.ndarray,
        row: np.ndarray,
        c: int,
        lo: int,
        count: int,
        out: np.ndarray,
        index0: int,
        stop: int,
    ) -> None:
        # out[x, index0 + j] = first[x, c] . row[x + lo + j, c] for x < stop and
        # j < count, where x + lo + j is a column of ``row`` (others are left as
        # they are). Two positions at a time share the vectors of ``row`` they
        # both read (x + 1 + lo + j = x + lo + (j + 1)), four offsets at a time
        # and then the last three or one (``count`` is odd: r or 2r - 1).
        width = row.shape[0]
        x = 0
        while x < stop:
            if x + 1 < stop and x + lo >= 0 and x + lo + count < width:
                a0 = first[x, c]
                a1 = first[x + 1, c]
                j = 0
                while j + 4 <= count:
                    b = x + lo + j
                    t = _dots_2x4(
                        a0, a1, row[b, c], row[b + 1, c], row[b + 2, c],
                        row[b + 3, c], row[b + 4, c],
                    )  # fmt: skip
                    for q in range(4):
                        out[x, index0 + j + q] = t[q]
                        out[x + 1, index0 + j + q] = t[4 + q]
                    j += 4
                b = x + lo + j
                left = count - j
                if left == 3:
                    t3 = _dots_2x3(
                        a0, a1, row[b, c], row[b + 1, c], row[b + 2, c], row[b + 3, c]
                    )
                    for q in range(3):
                        out[x, index0 + j + q] = t3[q]
                        out[x + 1, index0 + j + q] = t3[3 + q]
                elif left == 1:
                    out[x, index0 + j] = _dot(a0, row[b, c])
                    out[x + 1, index0 + j] = _dot(a1, row[b + 1, c])
                x += 2
            else:
                a0 = first[x, c]
                for j in range(count):
                    b = x + lo + j
                    if 0 <= b < width:
                        out[x, index0 + j] = _dot(a0, row[b, c])
                x += 1

    @jit(nogil=True, fastmath=True)
    def _rolling_displacement_sums(
        raw: np.ndarray,
        low: np.ndarray,
        scale: np.ndarray,
        targets: np.ndarray,
        target_low: np.ndarray,
        target_scale: np.ndarray,
        top: int,
        left: int,
        field: int,
        pair_sums: np.ndarray,
        sums: np.ndarray,
        cross_sums: np.ndarray,
        target_sums: np.ndarray,
        target_squares: np.ndarray,
        squares: bool,
    ) -> None:
        # The halo is normalised one row at a time into a ring of ``field``
        # sample-last rows, small enough to stay in cache: when halo row y
        # arrives, every pair sum that ends on it (from row y - dy) and every
        # cross sum of output row y - field + 1 can be formed. Displacements
        # are in the order of ``kernels.displacements``; window offsets in
        # row-major order.
        n, rows = raw.shape[0], raw.shape[1]
        channels = raw.shape[3]
        hh, ww = sums.shape[0], sums.shape[1]
        n_targets, w = cross_sums.shape[0], cross_sums.shape[3]
        span = field - 1
        no_offset = np.int64(0)  # not the literal 0: one compiled callee, not two
        ring = np.zeros((field, ww, channels, n))
        tbuf = np.empty((w, channels, n))
        moved = np.empty((ww * channels, n), dtype=raw.dtype)
        moved_targets = np.empty((w * channels, n), dtype=targets.dtype)
        for y in range(hh):
            row = ring[y % field]
            ry = y - top
            if 0 <= ry < rows:
                _fill_row(raw, low, scale, ry, left, row, moved)
            else:
                row[:] = 0.0
            for xx in range(ww):
                for c in range(channels):
                    sums[y, xx, c] = row[xx, c].sum()
            for dy in range(field):
                y0 = y - dy
                if y0 < 0:
                    continue
                lo = 0 if dy == 0 else -span
                index0 = 0 if dy == 0 else span + 1 + (dy - 1) * (2 * span + 1)
                for c in range(channels):
                    _band_dots(
                        ring[y0 % field], row, c, lo, span + 1 - lo,
                        pair_sums[y0, :, c, :], index0, ww,
                    )  # fmt: skip
            oy = y - span
            if oy < 0:
                continue
            for k in range(n_targets):
                _fill_row(
                    targets[k],
                    target_low[k],
                    target_scale[k],
                    oy,
                    no_offset,
                    tbuf,
                    moved_targets,
                )
                for xx in range(w):
                    for c in range(channels):
                        v = tbuf[xx, c]
                        target_sums[k, oy, xx, c] = v.sum()
                        if squares:
                            target_squares[k, oy, xx, c] = _dot(v, v)
                for wy in range(field):
                    for c in range(channels):
                        _band_dots(
                            tbuf, ring[(oy + wy) % field], c, no_offset, field,
                            cross_sums[k, :, oy, :, c].T, wy * field, w,
                        )  # fmt: skip


def rolling_displacement_sums(
    raw: np.ndarray,
    low: np.ndarray,
    scale: np.ndarray,
    targets: np.ndarray,
    target_low: np.ndarray,
    target_scale: np.ndarray,
    padding: tuple[tuple[int, int], tuple[int, int]],
    field: int,
    squares: bool = False,
) -> tuple[np.ndarray, ...]:
    """Displacement statistics straight from raw images, normalised on the fly.

    Parameters
    ----------
    raw : numpy.ndarray
        ``(n, y, x, C)`` raw source window (the halo before zero padding).
    low, scale : numpy.ndarray
        ``(n,)`` min-max parameters of the sources.
    targets : numpy.ndarray
        ``(T, n, h, w, C)`` raw target pixels of the tile.
    target_low, target_scale : numpy.ndarray
        ``(T, n)`` min-max parameters of the targets.
    padding : tuple
        ``((top, bottom), (left, right))`` zeros around the source window.
    field : int
        Receptive field size ``r``.
    squares : bool
        Also sum the squared targets (else the last array returned is None).

    Returns
    -------
    tuple of numpy.ndarray
        ``pair_sums, sums, cross_sums, target_sums, target_squares`` as the
        fields of ``kernels.TileStatistics``.
    """
    _, rows, cols, channels = raw.shape
    (top, bottom), (left, right) = padding
    hh, ww = rows + top + bottom, cols + left + right
    n_targets, _, h, w, _ = targets.shape
    n_deltas = ((2 * field - 1) ** 2 + 1) // 2  # as kernels.displacements
    pair_sums = np.zeros((hh, ww, channels, n_deltas))
    sums = np.empty((hh, ww, channels))
    cross_sums = np.empty((n_targets, field * field, h, w, channels))
    target_sums = np.empty((n_targets, h, w, channels))
    target_squares = np.empty((n_targets, h, w, channels) if squares else (0, 0, 0, 0))
    _rolling_displacement_sums(
        raw,
        np.asarray(low, dtype=np.float64),
        np.asarray(scale, dtype=np.float64),
        targets,
        np.ascontiguousarray(target_low, dtype=np.float64),
        np.ascontiguousarray(target_scale, dtype=np.float64),
        top,
        left,
        field,
        pair_sums,
        sums,
        cross_sums,
        target_sums,
        target_squares,
        squares,
    )
    return (
        np.moveaxis(pair_sums, -1, 0),
        sums,
        cross_sums,
        target_sums,
        target_squares if squares else None,
    )
