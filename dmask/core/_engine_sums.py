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
    import llvmlite.ir
    import numba
    import numba.core.errors
    import numba.extending
    from numba.core import cgutils

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
    # each of these: in four lanes (lane l adds the samples s = l mod 4 in
    # order), the lanes added as (l0 + l1) + (l2 + l3), then the rest of the
    # samples one by one after them, so that a sum is the same bit for bit
    # whichever of them made it (a statistics store of field R and a training
    # of r <= R pair their vectors differently). The lanes are one 4-double
    # vector per product, written as vector IR (:func:`_lane_dots`): numba
    # leaves LLVM's SLP vectoriser off, and the same sums written as scalars
    # ran as scalar code, 6.5x slower (11 against 74 GFLOP/s on one core for
    # eight products of 200 samples). Multiplications and additions stay
    # separate instructions without fast-math flags, and these functions are
    # compiled without fastmath, so nothing is fused or reassociated.
    def _lane_dots(pairs: tuple[tuple[int, int], ...], n_args: int):
        """An intrinsic: the dot products ``args[i] . args[j]`` of ``pairs``
        over 1-D contiguous float64 arrays of one length, as a tuple."""

        def codegen(context, builder, signature, args):
            arrays = [
                context.make_array(signature.args[i])(context, builder, args[i])
                for i in range(n_args)
            ]
            data = [a.data for a in arrays]
            n = builder.extract_value(arrays[0].shape, 0)
            double = llvmlite.ir.DoubleType()
            vector = llvmlite.ir.VectorType(double, 4)
            step = llvmlite.ir.Constant(n.type, 4)
            bulk = builder.sub(n, builder.srem(n, step))
            used = sorted({i for pair in pairs for i in pair})
            acc = [
                cgutils.alloca_once_value(
                    builder, llvmlite.ir.Constant(vector, [0.0] * 4)
                )
                for _ in pairs
            ]
            start = llvmlite.ir.Constant(n.type, 0)
            with cgutils.for_range_slice(builder, start, bulk, step) as (s, _):
                values = {}
                for i in used:
                    where = builder.gep(data[i], [s])
                    value = builder.load(builder.bitcast(where, vector.as_pointer()))
                    value.align = 8
                    values[i] = value
                for q, (i, j) in enumerate(pairs):
                    product = builder.fmul(values[i], values[j])
                    builder.store(builder.fadd(builder.load(acc[q]), product), acc[q])
            rest = [
                cgutils.alloca_once_value(builder, llvmlite.ir.Constant(double, 0.0))
                for _ in pairs
            ]
            one = llvmlite.ir.Constant(n.type, 1)
            with cgutils.for_range_slice(builder, bulk, n, one) as (s, _):
                values = {i: builder.load(builder.gep(data[i], [s])) for i in used}
                for q, (i, j) in enumerate(pairs):
                    product = builder.fmul(values[i], values[j])
                    builder.store(builder.fadd(builder.load(rest[q]), product), rest[q])
            totals = []
            for q in range(len(pairs)):
                lanes = builder.load(acc[q])
                lane = [
                    builder.extract_element(
                        lanes, llvmlite.ir.Constant(llvmlite.ir.IntType(32), i)
                    )
                    for i in range(4)
                ]
                total = builder.fadd(
                    builder.fadd(lane[0], lane[1]), builder.fadd(lane[2], lane[3])
                )
                totals.append(builder.fadd(total, builder.load(rest[q])))
            if len(totals) == 1:
                return totals[0]
            return context.make_tuple(builder, signature.return_type, totals)

        def typer(*types):
            for ty in types:
                if not (
                    isinstance(ty, numba.types.Array)
                    and ty.ndim == 1
                    and ty.layout == "C"
                    and ty.dtype == numba.types.float64
                ):
                    raise numba.core.errors.TypingError(
                        f"lane dots take 1-D contiguous float64 arrays, not {ty}"
                    )
            out = numba.types.float64
            if len(pairs) > 1:
                out = numba.types.UniTuple(numba.types.float64, len(pairs))
            return out(*types)

        return codegen, typer

    _DOT = _lane_dots(((0, 1),), 2)
    _DOTS_2X4 = _lane_dots(
        ((0, 2), (0, 3), (0, 4), (0, 5), (1, 3), (1, 4), (1, 5), (1, 6)), 7
    )
    _DOTS_2X3 = _lane_dots(((0, 2), (0, 3), (0, 4), (1, 3), (1, 4), (1, 5)), 6)

    @numba.extending.intrinsic
    def _dot_lanes(typingctx, a, b):
        return _DOT[1](a, b), _DOT[0]

    @numba.extending.intrinsic
    def _dots_2x4_lanes(typingctx, a0, a1, b0, b1, b2, b3, b4):
        return _DOTS_2X4[1](a0, a1, b0, b1, b2, b3, b4), _DOTS_2X4[0]

    @numba.extending.intrinsic
    def _dots_2x3_lanes(typingctx, a0, a1, b0, b1, b2, b3):
        return _DOTS_2X3[1](a0, a1, b0, b1, b2, b3), _DOTS_2X3[0]

    @jit(nogil=True)
    def _dot(a, b):
        # a . b
        return _dot_lanes(a, b)

    @jit(nogil=True)
    def _dots_2x4(a0, a1, b0, b1, b2, b3, b4):
        # a0 against b0..b3 and a1 against b1..b4: seven vectors read per eight
        # products
        return _dots_2x4_lanes(a0, a1, b0, b1, b2, b3, b4)

    @jit(nogil=True)
    def _dots_2x3(a0, a1, b0, b1, b2, b3):
        # a0 against b0..b2 and a1 against b1..b3
        return _dots_2x3_lanes(a0, a1, b0, b1, b2, b3)

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
