"""Compiled kernels (numba): batched Cholesky solves and displacement sums.

Numerical kernels on numpy arrays, like :mod:`dmask.kernels`, which uses them
when numba imports and falls back to its numpy code otherwise (or when the
environment variable ``DMASK_KERNELS`` is ``numpy``). Every function here
releases the GIL, so dask's threads run them in parallel. LAPACK comes from
scipy's Cython bindings, called directly without the Python layer.
"""

from __future__ import annotations

import os

import numpy as np

try:  # numba is a dependency, but a platform without its wheels still works
    import numba
    from numba.extending import get_cython_function_address
except ImportError:  # pragma: no cover - exercised only without numba
    numba = None

__all__ = [
    "AVAILABLE",
    "cholesky_solve",
    "displacement_sums",
    "enabled",
    "solve_covariance_block",
    "solve_displacement_tile",
    "to_samples_last",
]

#: Whether the compiled kernels can be used at all.
AVAILABLE = numba is not None

#: Systems up to this size are solved by the inlined Cholesky; larger ones by
#: LAPACK ``dpotrf``/``dpotrs`` (faster from about n = 20 on).
SMALL_SYSTEM = 16


def enabled() -> bool:
    """Whether :mod:`dmask.kernels` should use these kernels now."""
    return AVAILABLE and os.environ.get("DMASK_KERNELS", "numba") != "numpy"


if AVAILABLE:
    import llvmlite.binding

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

    _dpotrf = _lapack("dpotrf", 5)
    _dpotrs = _lapack("dpotrs", 8)

    @numba.njit(nogil=True, cache=True)
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

    @numba.njit(nogil=True, cache=True)
    def _scratch(n: int, n_rhs: int):
        scalars = np.empty(3, dtype=np.int32)
        scalars[0] = n
        scalars[1] = n_rhs
        scalars[2] = 0
        return np.empty((n, n)), np.empty((n_rhs, n)), np.empty((n, n)), scalars

    @numba.njit(nogil=True, cache=True)
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

    @numba.njit(nogil=True, cache=True)
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

    @numba.njit(nogil=True, cache=True)
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

    @numba.njit(nogil=True, cache=True)
    def _to_samples_last(
        raw: np.ndarray,
        low: np.ndarray,
        scale: np.ndarray,
        out: np.ndarray,
        top: int,
        left: int,
    ) -> None:
        # Eight samples at a time: images whose size is a power of two sit at
        # strides that share cache sets, and more rows at once evict each other.
        n, h, w, channels = raw.shape
        for s0 in range(0, n, 8):
            s1 = min(n, s0 + 8)
            for y in range(h):
                for x in range(w):
                    for c in range(channels):
                        row = out[top + y, left + x, c]
                        for s in range(s0, s1):
                            row[s] = (raw[s, y, x, c] - low[s]) * scale[s]

    @numba.njit(nogil=True, cache=True, fastmath=True)
    def _displacement_sums(
        x: np.ndarray,
        t: np.ndarray,
        deltas: np.ndarray,
        offsets: np.ndarray,
        pair_sums: np.ndarray,
        sums: np.ndarray,
        cross_sums: np.ndarray,
        target_sums: np.ndarray,
    ) -> None:
        # fastmath lets the dot products over samples use vector lanes; their
        # order is fixed by the compiled code, so results repeat exactly.
        hh, ww, channels, n = x.shape
        n_targets, h, w = t.shape[0], t.shape[1], t.shape[2]
        for y in range(hh):
            for xx in range(ww):
                for c in range(channels):
                    v = x[y, xx, c]
                    total = 0.0
                    for s in range(n):
                        total += v[s]
                    sums[y, xx, c] = total
                    for d in range(deltas.shape[0]):
                        yy = y + deltas[d, 0]
                        xd = xx + deltas[d, 1]
                        if yy >= hh or xd < 0 or xd >= ww:
                            pair_sums[y, xx, c, d] = 0.0
                            continue
                        o = x[yy, xd, c]
                        total = 0.0
                        for s in range(n):
                            total += v[s] * o[s]
                        pair_sums[y, xx, c, d] = total
        for k in range(n_targets):
            for y in range(h):
                for xx in range(w):
                    for c in range(channels):
                        v = t[k, y, xx, c]
                        total = 0.0
                        for s in range(n):
                            total += v[s]
                        target_sums[k, y, xx, c] = total
                        for a in range(offsets.shape[0]):
                            o = x[y + offsets[a, 0], xx + offsets[a, 1], c]
                            total = 0.0
                            for s in range(n):
                                total += v[s] * o[s]
                            cross_sums[k, a, y, xx, c] = total


def cholesky_solve(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve a stack of symmetric positive definite systems in place.

    Parameters
    ----------
    gram : numpy.ndarray
        ``(P, n, n)`` C-contiguous float64; left as it is.
    rhs : numpy.ndarray
        ``(P, n, T)`` C-contiguous float64; overwritten by the solutions.

    Returns
    -------
    numpy.ndarray
        ``(P,)`` bool: False where a matrix was not numerically positive
        definite (its right-hand side is then left unsolved).
    """
    ok = np.empty(gram.shape[0], dtype=np.bool_)
    _cholesky_batch(gram, rhs, ok)
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
    _solve_displacement_tile(
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
    )
    return out, ok


def to_samples_last(
    raw: np.ndarray,
    low: np.ndarray,
    scale: np.ndarray,
    padding: tuple[tuple[int, int], tuple[int, int]],
) -> np.ndarray:
    """Normalise, zero-pad and move the sample axis last (see ``samples_last``)."""
    n, h, w, channels = raw.shape
    (top, bottom), (left, right) = padding
    out = np.zeros((h + top + bottom, w + left + right, channels, n))
    _to_samples_last(
        raw,
        np.asarray(low, dtype=np.float64),
        np.asarray(scale, dtype=np.float64),
        out,
        top,
        left,
    )
    return out


def displacement_sums(
    x: np.ndarray, t: np.ndarray, deltas: np.ndarray, offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pair sums, sums, cross sums and target sums of a sample-last tile.

    Parameters
    ----------
    x : numpy.ndarray
        ``(h + 2b, w + 2b, C, n)`` C-contiguous float64 halo block.
    t : numpy.ndarray
        ``(T, h, w, C, n)`` C-contiguous float64 targets.
    deltas : numpy.ndarray
        ``(D, 2)`` displacements.
    offsets : numpy.ndarray
        ``(k, 2)`` window offsets from the halo's corner.

    Returns
    -------
    tuple of numpy.ndarray
        As the fields of ``kernels.TileStatistics``.
    """
    hh, ww, channels, _ = x.shape
    n_targets, h, w = t.shape[:3]
    pair_sums = np.empty((hh, ww, channels, len(deltas)))
    sums = np.empty((hh, ww, channels))
    cross_sums = np.empty((n_targets, len(offsets), h, w, channels))
    target_sums = np.empty((n_targets, h, w, channels))
    _displacement_sums(
        x,
        t,
        np.ascontiguousarray(deltas, dtype=np.int64),
        np.ascontiguousarray(offsets, dtype=np.int64),
        pair_sums,
        sums,
        cross_sums,
        target_sums,
    )
    # Displacement last in memory: the Gram entries of a pixel lie together.
    return np.moveaxis(pair_sums, -1, 0), sums, cross_sums, target_sums
