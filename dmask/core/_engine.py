"""Compiled kernels (numba): the switch between them and numpy, and batched solves.

:mod:`dmask.core` uses these kernels when numba imports and the option
``kernels`` is ``numba`` (:mod:`dmask.options`), and its numpy code otherwise.
Every function here releases the GIL, so dask's threads run them in parallel.
LAPACK comes from scipy's Cython bindings, called directly without the Python
layer. The compiled displacement sums are in :mod:`dmask.core._engine_sums`.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np

try:  # numba is a dependency, but a platform without its wheels still works
    import numba
    from numba.extending import get_cython_function_address
except ImportError:  # pragma: no cover - exercised only without numba
    numba = None

__all__ = [
    "AVAILABLE",
    "cholesky_solve",
    "enabled",
    "lane_system",
    "solve_covariance_block",
    "solve_displacement_tile",
]

#: Whether the compiled kernels can be used at all.
AVAILABLE = numba is not None

#: Systems up to this size are solved by the inlined Cholesky; larger ones by
#: LAPACK ``dpotrf``/``dpotrs`` (faster from about n = 20 on).
SMALL_SYSTEM = 16

#: Systems up to this size (r <= 5) are solved ``LANES`` at a time, one per
#: vector lane (measured 2x faster at r = 3 and 1.2x at r = 5 than one at a
#: time; slower from r = 7 on, where LAPACK's blocked code wins).
#:
#: Remeasured for issue 14 (2-core Xeon with AVX-512, shared and loaded;
#: ``solve_displacement_tile`` on a 16 x 64 tile, N = 150, ``lanes=True``
#: against ``lanes=False``, 9 interleaved runs, median of the ratios): these
#: eight lanes against one system at a time 1.07x at n = 26 (r = 5), 0.98x at
#: n = 50, 0.57x at n = 82, 0.43x at n = 122. Their dot-product form keeps each
#: accumulator in memory (a dependent load, multiply, subtract and store per
#: step); a register-blocked form in scalars compiles to scalar code (numba
#: leaves LLVM's SLP vectoriser off) and a right-looking form (one store per
#: update) gained nothing.
LANE_SYSTEM = 26
LANES = 8


#: Larger systems up to this size are solved ``BLOCK_LANES`` at a time, one
#: per lane of a 4-double vector, by a factorisation blocked 4 rows x 4
#: columns with its 16 accumulators in vector registers (explicit vector IR:
#: :func:`_block_sums`); larger ones one at a time by LAPACK. Measured as
#: above, one at a time (LAPACK dpotrf + dpotrs) over these lanes: 1.26x at
#: n = 50 (r = 7), 1.18x at n = 82, 1.14x at n = 122 (r = 11), 1.11x at n = 170
#: (r = 13); the factorisation alone, 4 systems at a time against dpotrf +
#: dpotrs one at a time: n = 26 1.6 against 2.9 us a system, n = 50 6.4
#: against 12.3, n = 122 104 against 106 (the triangular solves stay
#: unblocked). Sizes above 170 were not measured and stay with LAPACK.
BLOCK_SYSTEM = 170
BLOCK_LANES = 4


def lane_system(n: int) -> bool:
    """Whether systems of ``n`` unknowns are solved several at a time in lanes."""
    return n <= BLOCK_SYSTEM


def enabled() -> bool:
    """Whether :mod:`dmask.core` should use these kernels now."""
    from dmask import options

    return AVAILABLE and options.get("kernels") != "numpy"


if AVAILABLE:
    import llvmlite.binding
    import llvmlite.ir
    import numba.core.errors
    import numba.extending
    from numba.core import cgutils

    def _lapack(name: str, n_args: int) -> numba.types.ExternalFunction:
        """LAPACK routine ``name`` of scipy's Cython bindings, callable when compiled.

        Bound by symbol name rather than as a ctypes pointer, so the functions
        that call it can be cached on disk.
        """
        symbol = f"dmask_scipy_{name}"
        address = get_cython_function_address("scipy.linalg.cython_lapack", name)
        llvmlite.binding.add_symbol(symbol, address)
        signature = numba.types.void(*([numba.types.voidptr] * n_args))
        return numba.types.ExternalFunction(symbol, signature)

    def jit(**options: Any) -> Any:
        """``numba.njit`` with an on-disk cache where numba can write one.

        numba refuses ``cache=True`` at decoration ("no locator available") when
        neither the package's ``__pycache__``, ``NUMBA_CACHE_DIR`` nor the
        user's cache folder is writable: the kernels are then compiled in each
        process instead of failing the import.
        """

        def decorate(func: Any) -> Any:
            try:
                return numba.njit(cache=True, **options)(func)
            except RuntimeError as exc:
                if "cannot cache" not in str(exc):
                    raise
                _no_cache_warning()
                return numba.njit(**options)(func)

        return decorate

    @functools.cache
    def _no_cache_warning() -> None:
        logging.getLogger(__name__).warning(
            "numba can write its cache nowhere (set NUMBA_CACHE_DIR to a writable "
            "folder): dmask's kernels are compiled in every process"
        )

    _dpotrf = _lapack("dpotrf", 5)
    _dpotrs = _lapack("dpotrs", 8)

    @jit(nogil=True)
    def _solve_one(
        gram: np.ndarray, columns: np.ndarray, lower: np.ndarray, scalars: np.ndarray
    ) -> bool:
        """Solve ``gram @ x = columns.T`` in place of ``columns``.

        Only the upper triangle of ``gram`` (C order) is read; it is overwritten.

        ``columns`` is ``(T, n)``: the right-hand sides in LAPACK's column order.
        ``scalars`` holds LAPACK's integer arguments ``[n, T, info]`` (int32).
        """
        n = gram.shape[0]
        n_rhs = columns.shape[0]
        if n > SMALL_SYSTEM:
            uplo = np.uint8(76)  # "L" in Fortran's order: C's upper triangle
            flag = np.empty(1, dtype=np.uint8)
            flag[0] = uplo
            size = scalars[0:1]
            count = scalars[1:2]
            info = scalars[2:3]
            _dpotrf(flag.ctypes, size.ctypes, gram.ctypes, size.ctypes, info.ctypes)
            if info[0] != 0:
                return False
            _dpotrs(
                flag.ctypes,
                size.ctypes,
                count.ctypes,
                gram.ctypes,
                size.ctypes,
                columns.ctypes,
                size.ctypes,
                info.ctypes,
            )
            return info[0] == 0
        for j in range(n):
            s = gram[j, j]
            for q in range(j):
                s -= lower[j, q] * lower[j, q]
            if not s > 0.0:
                return False
            d = np.sqrt(s)
            lower[j, j] = d
            for i in range(j + 1, n):
                s = gram[j, i]
                for q in range(j):
                    s -= lower[i, q] * lower[j, q]
                lower[i, j] = s / d
        for t in range(n_rhs):
            y = columns[t]
            for i in range(n):
                s = y[i]
                for q in range(i):
                    s -= lower[i, q] * y[q]
                y[i] = s / lower[i, i]
            for i in range(n - 1, -1, -1):
                s = y[i]
                for q in range(i + 1, n):
                    s -= lower[q, i] * y[q]
                y[i] = s / lower[i, i]
        return True

    @jit(nogil=True)
    def _scratch(n: int, n_rhs: int):
        scalars = np.empty(3, dtype=np.int32)
        scalars[0] = n
        scalars[1] = n_rhs
        scalars[2] = 0
        return np.empty((n, n)), np.empty((n_rhs, n)), np.empty((n, n)), scalars

    @jit(nogil=True)
    def _cholesky_batch(a: np.ndarray, b: np.ndarray, ok: np.ndarray) -> None:
        pixels, n, _ = a.shape
        n_rhs = b.shape[2]
        gram, columns, lower, scalars = _scratch(n, n_rhs)
        for p in range(pixels):
            gram[:] = a[p]
            for i in range(n):
                for t in range(n_rhs):
                    columns[t, i] = b[p, i, t]
            ok[p] = _solve_one(gram, columns, lower, scalars)
            if ok[p]:
                for i in range(n):
                    for t in range(n_rhs):
                        b[p, i, t] = columns[t, i]

    @jit(nogil=True)
    def _cholesky_lanes_batch(a: np.ndarray, b: np.ndarray, ok: np.ndarray) -> None:
        # As _cholesky_batch, LANES systems at a time by _solve_lanes; lanes
        # past the stack's end solve the identity. Only the upper triangle of
        # each ``a[p]`` is read (into the lower of ``gram``); ``b[p]`` is
        # written only where ``ok[p]``.
        pixels, n, _ = a.shape
        n_rhs = b.shape[2]
        gram = np.zeros((n, n, LANES))
        columns = np.zeros((n_rhs, n, LANES))
        lower = np.empty((n, n, LANES))
        pivot = np.empty(LANES)
        good = np.empty(LANES, dtype=np.bool_)
        for p0 in range(0, pixels, LANES):
            m = min(LANES, pixels - p0)
            for q in range(LANES):
                if q < m:
                    src = a[p0 + q]
                    for i in range(n):
                        for j in range(i + 1):  # the lower triangle from the upper
                            gram[i, j, q] = src[j, i]
                        for t in range(n_rhs):
                            columns[t, i, q] = b[p0 + q, i, t]
                else:
                    for i in range(n):
                        for j in range(i + 1):
                            gram[i, j, q] = 1.0 if i == j else 0.0
                        for t in range(n_rhs):
                            columns[t, i, q] = 0.0
            good[:] = True
            _solve_lanes(gram, columns, lower, pivot, good)
            for q in range(m):
                ok[p0 + q] = good[q]
                if good[q]:
                    for i in range(n):
                        for t in range(n_rhs):
                            b[p0 + q, i, t] = columns[t, i, q]

    @jit(nogil=True)
    def _solve_covariance_block(
        cov: np.ndarray,
        cross: np.ndarray,
        hb: int,
        wb: int,
        field: int,
        lam: float,
        out: np.ndarray,
        ok: np.ndarray,
    ) -> None:
        k = field * field
        width = wb + field - 1
        last = cov.shape[0] - 1
        n_rhs = cross.shape[1]
        gram, columns, lower, scalars = _scratch(k + 1, n_rhs)
        index = np.empty(k + 1, dtype=np.int64)
        index[k] = last
        for py in range(hb):
            for px in range(wb):
                p = py * wb + px
                for a in range(k):
                    index[a] = (py + a // field) * width + px + a % field
                for a in range(k + 1):
                    row = cov[index[a]]
                    for b in range(a, k + 1):  # the upper triangle: what is read
                        gram[a, b] = row[index[b]]
                    gram[a, a] += lam
                    for t in range(n_rhs):
                        columns[t, a] = cross[index[a], t, p]
                ok[p] = _solve_one(gram, columns, lower, scalars)
                for a in range(k + 1):
                    for t in range(n_rhs):
                        out[p, a, t] = columns[t, a]

    def _lane_codegen(width: int, divide: bool):
        """Code of one vector operation on ``width`` doubles at flat offsets of
        C-contiguous arrays: ``dst -= x * y`` (a multiplication, then a
        subtraction) or ``dst /= x``, each lane alone, without fast-math flags.

        The lane loops of the solvers are four or eight iterations long, which
        LLVM unrolls into scalar code (numba leaves its SLP vectoriser off);
        these keep them one vector instruction each.
        """

        def codegen(context, builder, signature, args):
            vector = llvmlite.ir.VectorType(llvmlite.ir.DoubleType(), width)

            def at(k):
                ary = context.make_array(signature.args[k])(context, builder, args[k])
                where = builder.gep(ary.data, [args[k + 1]])
                return builder.bitcast(where, vector.as_pointer())

            def load(pointer):
                value = builder.load(pointer)
                value.align = 8
                return value

            target = at(0)
            if divide:
                value = builder.fdiv(load(target), load(at(2)))
            else:
                product = builder.fmul(load(at(2)), load(at(4)))
                value = builder.fsub(load(target), product)
            builder.store(value, target).align = 8
            return context.get_dummy_value()

        return codegen

    def _lane_signature(*types):
        for ty in types[::2]:
            if not (isinstance(ty, numba.types.Array) and ty.layout == "C"):
                raise numba.core.errors.TypingError(
                    f"lane operations take C-contiguous arrays, not {ty}"
                )
        return numba.types.void(*types)

    @numba.extending.intrinsic
    def _sub_product4(typingctx, dst, d, x, xo, y, yo):
        """``dst.flat[d:d+4] -= x.flat[xo:xo+4] * y.flat[yo:yo+4]``."""
        return _lane_signature(dst, d, x, xo, y, yo), _lane_codegen(4, False)

    @numba.extending.intrinsic
    def _divide4(typingctx, dst, d, x, xo):
        """``dst.flat[d:d+4] /= x.flat[xo:xo+4]``."""
        return _lane_signature(dst, d, x, xo), _lane_codegen(4, True)

    @numba.extending.intrinsic
    def _sub_product8(typingctx, dst, d, x, xo, y, yo):
        """``dst.flat[d:d+8] -= x.flat[xo:xo+8] * y.flat[yo:yo+8]``."""
        return _lane_signature(dst, d, x, xo, y, yo), _lane_codegen(8, False)

    @numba.extending.intrinsic
    def _divide8(typingctx, dst, d, x, xo):
        """``dst.flat[d:d+8] /= x.flat[xo:xo+8]``."""
        return _lane_signature(dst, d, x, xo), _lane_codegen(8, True)

    @jit(nogil=True)
    def _solve_lanes(
        gram: np.ndarray,
        columns: np.ndarray,
        lower: np.ndarray,
        pivot: np.ndarray,
        ok: np.ndarray,
    ) -> None:
        """Cholesky-solve ``LANES`` systems side by side, one per vector lane.

        ``gram`` is ``(n, n, LANES)`` (lower triangle read), ``columns``
        ``(T, n, LANES)`` is overwritten by the solutions. Each lane does the
        operations of :func:`_solve_one` in the same order, so its result is
        the same to the bit; ``ok[lane]`` turns False where a pivot is not
        positive (that lane's solution is then undefined).
        """
        n = gram.shape[0]
        n_rhs = columns.shape[0]
        L = LANES  # flat offsets: (i, p, lane) at (i * n + p) * L + lane
        for j in range(n):
            for q in range(L):
                pivot[q] = gram[j, j, q]
            for p in range(j):
                at = (j * n + p) * L
                _sub_product8(pivot, 0, lower, at, lower, at)
            for q in range(L):
                if not pivot[q] > 0.0:
                    ok[q] = False
                    pivot[q] = 1.0
                pivot[q] = np.sqrt(pivot[q])
                lower[j, j, q] = pivot[q]
            for i in range(j + 1, n):
                row = lower[i, j]
                for q in range(L):
                    row[q] = gram[i, j, q]
                at = (i * n + j) * L
                for p in range(j):
                    _sub_product8(
                        lower, at, lower, (i * n + p) * L, lower, (j * n + p) * L
                    )
                _divide8(lower, at, pivot, 0)
        for t in range(n_rhs):
            base = t * n * L
            for i in range(n):
                yi = base + i * L
                for p in range(i):
                    _sub_product8(
                        columns, yi, lower, (i * n + p) * L, columns, base + p * L
                    )
                _divide8(columns, yi, lower, (i * n + i) * L)
            for i in range(n - 1, -1, -1):
                yi = base + i * L
                for p in range(i + 1, n):
                    _sub_product8(
                        columns, yi, lower, (p * n + i) * L, columns, base + p * L
                    )
                _divide8(columns, yi, lower, (i * n + i) * L)

    @numba.extending.intrinsic
    def _block_sums(typingctx, a_ty, n_ty, i_ty, j_ty):
        """Rows ``i..i+3`` x columns ``j..j+3`` of an ``(n, n, 4)`` factor.

        ``a[i + r, j + c, :] -= a[i + r, p, :] * a[j + c, p, :]`` for ``p`` from
        0 to ``j - 1`` in that order, each lane alone: the operations of
        :func:`_solve_one`'s inlined Cholesky, in 16 accumulators of 4-double
        vectors that stay in registers (LLVM promotes the stack slots). Written
        as vector IR because numba leaves LLVM's SLP vectoriser off and its loop
        vectoriser cannot keep accumulators out of memory.
        """
        sig = numba.types.void(
            a_ty, numba.types.intp, numba.types.intp, numba.types.intp
        )

        def codegen(context, builder, signature, args):
            ary = context.make_array(signature.args[0])(context, builder, args[0])
            n, i, j = args[1], args[2], args[3]
            vector = llvmlite.ir.VectorType(llvmlite.ir.DoubleType(), 4)
            four = llvmlite.ir.Constant(n.type, 4)

            def at(row, col):
                index = builder.mul(builder.add(builder.mul(row, n), col), four)
                where = builder.gep(ary.data, [index])
                return builder.bitcast(where, vector.as_pointer())

            def load(pointer):
                value = builder.load(pointer)
                value.align = 8
                return value

            rows = [builder.add(i, llvmlite.ir.Constant(n.type, r)) for r in range(4)]
            cols = [builder.add(j, llvmlite.ir.Constant(n.type, c)) for c in range(4)]
            acc = [[cgutils.alloca_once(builder, vector) for c in cols] for r in rows]
            for r in range(4):
                for c in range(4):
                    builder.store(load(at(rows[r], cols[c])), acc[r][c])
            with cgutils.for_range(builder, j) as loop:
                xs = [load(at(row, loop.index)) for row in rows]
                ys = [load(at(col, loop.index)) for col in cols]
                for r in range(4):
                    for c in range(4):
                        s = builder.load(acc[r][c])
                        s = builder.fsub(s, builder.fmul(xs[r], ys[c]))
                        builder.store(s, acc[r][c])
            for r in range(4):
                for c in range(4):
                    stored = builder.store(
                        builder.load(acc[r][c]), at(rows[r], cols[c])
                    )
                    stored.align = 8
            return context.get_dummy_value()

        return sig, codegen

    @jit(nogil=True)
    def _columns_one_by_one(
        a: np.ndarray, ok: np.ndarray, j0: int, j1: int, last: int
    ) -> None:
        # Columns j0..j1-1 of rows j0..last-1 of the in-place lower factor,
        # one element at a time (the order of _solve_one's inlined code).
        n = a.shape[0]
        L = BLOCK_LANES  # flat offsets: (i, p, lane) at (i * n + p) * L + lane
        for j in range(j0, j1):
            rj = a[j]
            diagonal = (j * n + j) * L
            for p in range(j):
                at = (j * n + p) * L
                _sub_product4(a, diagonal, a, at, a, at)
            for q in range(L):
                if not rj[j, q] > 0.0:
                    ok[q] = False
                    rj[j, q] = 1.0
                rj[j, q] = np.sqrt(rj[j, q])
            for i in range(j + 1, last):
                at = (i * n + j) * L
                for p in range(j):
                    _sub_product4(a, at, a, (i * n + p) * L, a, (j * n + p) * L)
                _divide4(a, at, a, diagonal)

    @jit(nogil=True)
    def _solve_block_lanes(a: np.ndarray, columns: np.ndarray, ok: np.ndarray) -> None:
        """Cholesky-solve ``BLOCK_LANES`` systems side by side, in place.

        ``a`` is ``(n, n, BLOCK_LANES)`` with the lower triangle filled; it is
        overwritten by the factor. ``columns`` ``(T, n, BLOCK_LANES)`` is
        overwritten by the solutions. Every element of the factor is computed
        in the order of :func:`_solve_one`'s inlined code (sums over ``p``
        ascending, then a division), in 4 x 4 blocks of rows and columns; the
        backward substitution subtracts in descending order. Each lane does
        the same operations, so a system gets the same bits in every lane;
        ``ok[lane]`` turns False where a pivot is not positive.
        """
        n = a.shape[0]
        n_rhs = columns.shape[0]
        L = BLOCK_LANES  # flat offsets: (i, p, lane) at (i * n + p) * L + lane
        j = 0
        while j + 4 <= n:
            _columns_one_by_one(a, ok, j, j + 4, j + 4)
            i = j + 4
            while i + 4 <= n:
                _block_sums(a, n, i, j)
                for r in range(4):
                    row = (i + r) * n
                    for c in range(4):
                        at = (row + j + c) * L
                        column = (j + c) * n
                        for c2 in range(c):
                            _sub_product4(
                                a, at, a, (row + j + c2) * L, a, (column + j + c2) * L
                            )
                        _divide4(a, at, a, (column + j + c) * L)
                i += 4
            for ii in range(i, n):
                row = ii * n
                for c in range(4):
                    at = (row + j + c) * L
                    column = (j + c) * n
                    for p in range(j + c):
                        _sub_product4(a, at, a, (row + p) * L, a, (column + p) * L)
                    _divide4(a, at, a, (column + j + c) * L)
            j += 4
        _columns_one_by_one(a, ok, j, n, n)
        # Both substitutions column by column (each step's updates are
        # independent, where a sum per row would wait on the last); forward:
        # every y[i] loses its terms in p's order, as the inlined code's;
        # backward: in descending p.
        for t in range(n_rhs):
            base = t * n * L
            for p in range(n):
                yp = base + p * L
                _divide4(columns, yp, a, (p * n + p) * L)
                for i in range(p + 1, n):
                    _sub_product4(
                        columns, base + i * L, a, (i * n + p) * L, columns, yp
                    )
            for p in range(n - 1, -1, -1):
                yp = base + p * L
                _divide4(columns, yp, a, (p * n + p) * L)
                for i in range(p):
                    _sub_product4(
                        columns, base + i * L, a, (p * n + i) * L, columns, yp
                    )

    @jit(nogil=True)
    def _cholesky_block_batch(a: np.ndarray, b: np.ndarray, ok: np.ndarray) -> None:
        # As _cholesky_lanes_batch, BLOCK_LANES systems at a time.
        pixels, n, _ = a.shape
        n_rhs = b.shape[2]
        gram = np.zeros((n, n, BLOCK_LANES))
        columns = np.zeros((n_rhs, n, BLOCK_LANES))
        good = np.empty(BLOCK_LANES, dtype=np.bool_)
        for p0 in range(0, pixels, BLOCK_LANES):
            m = min(BLOCK_LANES, pixels - p0)
            for q in range(BLOCK_LANES):
                for i in range(n):
                    for j in range(i + 1):  # the lower triangle from the upper
                        if q < m:
                            gram[i, j, q] = a[p0 + q, j, i]
                        else:
                            gram[i, j, q] = 1.0 if i == j else 0.0
                    for t in range(n_rhs):
                        columns[t, i, q] = b[p0 + q, i, t] if q < m else 0.0
            good[:] = True
            _solve_block_lanes(gram, columns, good)
            for q in range(m):
                ok[p0 + q] = good[q]
                if good[q]:
                    for i in range(n):
                        for t in range(n_rhs):
                            b[p0 + q, i, t] = columns[t, i, q]

    @jit(nogil=True)
    def _gather_lanes(
        pair_sums: np.ndarray,
        flat_sums: np.ndarray,
        ww: int,
        cross_sums: np.ndarray,
        target_sums: np.ndarray,
        count: float,
        pair_index: np.ndarray,
        sum_index: np.ndarray,
        lam: float,
        i: int,
        c: int,
        j0: int,
        gram: np.ndarray,
        columns: np.ndarray,
    ) -> int:
        # The systems of pixels (i, j0 + q, c) of a row, one per lane of
        # ``gram`` (its lower triangle: entry (a, b) of the upper at (b, a))
        # and ``columns``; lanes past the row's end get the identity. Returns
        # how many lanes hold pixels. Offsets as in _solve_displacement_tile.
        lanes = gram.shape[2]
        n_targets, k, _, w, channels = cross_sums.shape
        n_deltas = pair_sums.size // flat_sums.size
        stride = channels * n_deltas  # between neighbouring pixels' pair sums
        m = min(lanes, w - j0)
        first = (i * ww + j0) * channels + c
        for a in range(k):
            where = pair_index[a]
            for b in range(a, k):
                row = gram[b, a]
                start = first * n_deltas + where[b]
                for q in range(m):
                    row[q] = pair_sums[start + q * stride]
            row = gram[k, a]
            start = first + sum_index[a]
            for q in range(m):
                gram[a, a, q] += lam
                row[q] = flat_sums[start + q * channels]
            for t in range(n_targets):
                row = columns[t, a]
                for q in range(m):
                    row[q] = cross_sums[t, a, i, j0 + q, c]
        for q in range(m):
            gram[k, k, q] = count + lam
        for t in range(n_targets):
            row = columns[t, k]
            for q in range(m):
                row[q] = target_sums[t, i, j0 + q, c]
        for q in range(m, lanes):
            for a in range(k + 1):
                for b in range(a + 1):
                    gram[a, b, q] = 1.0 if a == b else 0.0
                for t in range(n_targets):
                    columns[t, a, q] = 0.0
        return m

    @jit(nogil=True)
    def _solve_displacement_lanes(
        pair_sums: np.ndarray,
        sums: np.ndarray,
        cross_sums: np.ndarray,
        target_sums: np.ndarray,
        count: float,
        pair_index: np.ndarray,
        sum_index: np.ndarray,
        lam: float,
        out: np.ndarray,
        ok: np.ndarray,
        blocked: bool,
    ) -> None:
        # As _solve_displacement_tile, the pixels of a row several at a time:
        # BLOCK_LANES by _solve_block_lanes where ``blocked``, else LANES by
        # _solve_lanes.
        n_targets, k, h, w, channels = cross_sums.shape
        lanes = BLOCK_LANES if blocked else LANES
        gram = np.zeros((k + 1, k + 1, lanes))
        columns = np.zeros((n_targets, k + 1, lanes))
        lower = np.empty((k + 1, k + 1, lanes))  # _solve_lanes' factor
        pivot = np.empty(lanes)
        good = np.empty(lanes, dtype=np.bool_)
        flat_sums = sums.ravel()
        ww = sums.shape[1]
        for i in range(h):
            for c in range(channels):
                for j0 in range(0, w, lanes):
                    m = _gather_lanes(
                        pair_sums, flat_sums, ww, cross_sums, target_sums, count,
                        pair_index, sum_index, lam, i, c, j0, gram, columns,
                    )  # fmt: skip
                    good[:] = True
                    if blocked:
                        _solve_block_lanes(gram, columns, good)
                    else:
                        _solve_lanes(gram, columns, lower, pivot, good)
                    for q in range(m):
                        ok[i, j0 + q, c] = good[q]
                        for a in range(k + 1):
                            for t in range(n_targets):
                                out[i, j0 + q, c, a, t] = columns[t, a, q]

    @jit(nogil=True)
    def _solve_displacement_tile(
        pair_sums: np.ndarray,
        sums: np.ndarray,
        cross_sums: np.ndarray,
        target_sums: np.ndarray,
        count: float,
        pair_index: np.ndarray,
        sum_index: np.ndarray,
        lam: float,
        out: np.ndarray,
        ok: np.ndarray,
    ) -> None:
        # pair_sums and sums are flat; pair_index[a, b] and sum_index[a] are
        # offsets from pixel (i, j, c)'s own entry. Only the upper triangle (C
        # order) is filled: the one both Cholesky codes read. Row a's pair sums
        # then share pixel a's position and lie side by side in memory.
        n_targets, k, h, w, channels = cross_sums.shape
        n_deltas = pair_sums.size // sums.size
        ww = sums.shape[1]
        flat_sums = sums.ravel()
        gram, columns, lower, scalars = _scratch(k + 1, n_targets)
        for i in range(h):
            for j in range(w):
                for c in range(channels):
                    base = (i * ww + j) * channels + c
                    for a in range(k):
                        row = gram[a]
                        where = pair_index[a]
                        for b in range(a, k):
                            row[b] = pair_sums[base * n_deltas + where[b]]
                        row[a] += lam
                        row[k] = flat_sums[base + sum_index[a]]
                        for t in range(n_targets):
                            columns[t, a] = cross_sums[t, a, i, j, c]
                    gram[k, k] = count + lam
                    for t in range(n_targets):
                        columns[t, k] = target_sums[t, i, j, c]
                    ok[i, j, c] = _solve_one(gram, columns, lower, scalars)
                    for a in range(k + 1):
                        for t in range(n_targets):
                            out[i, j, c, a, t] = columns[t, a]


def cholesky_solve(
    gram: np.ndarray, rhs: np.ndarray, lanes: bool | None = None
) -> np.ndarray:
    """Solve a stack of symmetric positive definite systems in place.

    Parameters
    ----------
    gram : numpy.ndarray
        ``(P, n, n)`` C-contiguous float64; left as it is (only its upper
        triangle is read).
    rhs : numpy.ndarray
        ``(P, n, T)`` C-contiguous float64; overwritten by the solutions.
    lanes : bool, optional
        Solve ``LANES`` systems at a time, one per vector lane; by default when
        :func:`lane_system` says so. A system gets the same bits whichever
        lane, and whichever position in the stack, it is solved in.

    Returns
    -------
    numpy.ndarray
        ``(P,)`` bool: False where a matrix was not numerically positive
        definite (its right-hand side is then left unsolved).
    """
    ok = np.empty(gram.shape[0], dtype=np.bool_)
    n = gram.shape[1]
    if lanes is None:
        lanes = lane_system(n)
    if not lanes:
        _cholesky_batch(gram, rhs, ok)
    elif n <= LANE_SYSTEM:
        _cholesky_lanes_batch(gram, rhs, ok)
    else:
        _cholesky_block_batch(gram, rhs, ok)
    return ok


def solve_covariance_block(
    cov: np.ndarray, cross: np.ndarray, hb: int, wb: int, field: int, lam: float
) -> tuple[np.ndarray, np.ndarray]:
    """Gather and solve the systems of one block of covariance statistics.

    Parameters
    ----------
    cov : numpy.ndarray
        ``(m + 1, m + 1)`` covariance of one channel (last row/column: ones).
    cross : numpy.ndarray
        ``(m + 1, T, hb * wb)`` cross products of one channel.
    hb, wb : int
        Block shape.
    field : int
        Receptive field size ``r``.
    lam : float
        Ridge penalty added to the diagonal.

    Returns
    -------
    solution : numpy.ndarray
        ``(hb * wb, r * r + 1, T)``: weights in window order, bias last.
    ok : numpy.ndarray
        ``(hb * wb,)`` bool: False where the system was not numerically
        positive definite (its solution is then undefined).
    """
    pixels = hb * wb
    out = np.empty((pixels, field * field + 1, cross.shape[1]))
    ok = np.empty(pixels, dtype=np.bool_)
    _solve_covariance_block(
        np.ascontiguousarray(cov, dtype=np.float64),
        np.ascontiguousarray(cross, dtype=np.float64),
        hb,
        wb,
        field,
        float(lam),
        out,
        ok,
    )
    return out, ok


def solve_displacement_tile(
    pair_sums: np.ndarray,
    sums: np.ndarray,
    cross_sums: np.ndarray,
    target_sums: np.ndarray,
    count: int,
    table: np.ndarray,
    offsets: np.ndarray,
    lam: float,
    lanes: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Assemble and solve every system of a tile from displacement statistics.

    Parameters
    ----------
    pair_sums, sums, cross_sums, target_sums, count
        The fields of ``kernels.TileStatistics``.
    table : numpy.ndarray
        ``(k, k, 3)`` int: for window offsets ``a, b``, the displacement index
        and the halo position (relative to the pixel) of the pair sum that is
        Gram entry ``(a, b)``.
    offsets : numpy.ndarray
        ``(k, 2)`` window offsets from the halo's corner.
    lam : float
        Ridge penalty added to the diagonal.
    lanes : bool, optional
        Solve ``LANES`` systems at a time, one per vector lane; by default when
        :func:`lane_system` says so for their ``k + 1`` unknowns.

    Returns
    -------
    solution : numpy.ndarray
        ``(h, w, C, k + 1, T)``: weights in window order, bias last.
    ok : numpy.ndarray
        ``(h, w, C)`` bool: False where a system was not numerically positive
        definite (its solution is then undefined).
    """
    n_targets, k, h, w, channels = cross_sums.shape
    n_deltas, _, ww, _ = pair_sums.shape
    out = np.empty((h, w, channels, k + 1, n_targets))
    ok = np.empty((h, w, channels), dtype=np.bool_)
    table = np.asarray(table, dtype=np.int64)
    offsets = np.asarray(offsets, dtype=np.int64)
    pair_index = (table[..., 1] * ww + table[..., 2]) * channels * n_deltas + table[
        ..., 0
    ]
    sum_index = (offsets[:, 0] * ww + offsets[:, 1]) * channels
    if lanes is None:
        lanes = lane_system(k + 1)
    extra: tuple[bool, ...] = ()
    if not lanes:
        kernel = _solve_displacement_tile
    else:
        kernel = _solve_displacement_lanes
        extra = (k + 1 > LANE_SYSTEM,)
    kernel(
        np.ascontiguousarray(np.moveaxis(pair_sums, 0, -1), dtype=np.float64).ravel(),
        np.ascontiguousarray(sums, dtype=np.float64),
        np.ascontiguousarray(cross_sums, dtype=np.float64),
        np.ascontiguousarray(target_sums, dtype=np.float64),
        float(count),
        np.ascontiguousarray(pair_index),
        np.ascontiguousarray(sum_index),
        float(lam),
        out,
        ok,
        *extra,
    )
    return out, ok
