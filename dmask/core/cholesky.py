"""Batched Cholesky solves of small symmetric positive definite systems."""

from __future__ import annotations

import numpy as np

from dmask.core import _engine

__all__ = ["solve_spd"]


def solve_spd(gram: np.ndarray, rhs: np.ndarray, overwrite: bool = False) -> np.ndarray:
    """Solve a stack of symmetric positive definite systems.

    With the compiled kernels, a Cholesky factorisation per system, without the
    GIL (n = 10: 0.29 us against 0.89 us for numpy's batched LU; n = 122: 56
    against 105 us, one core); systems of up to ``_engine.LANE_SYSTEM``
    unknowns are factored eight at a time, one per vector lane (n = 10: 0.30
    against 0.45 us one at a time, n = 17: 2.9 against 5.6 us, even at 26), a
    system's bits the same in every lane. Systems that are not numerically
    positive definite, and every system without the kernels, go to
    ``numpy.linalg.solve``.

    Parameters
    ----------
    gram : numpy.ndarray
        ``(..., n, n)``.
    rhs : numpy.ndarray
        ``(..., n, T)``.
    overwrite : bool
        Whether ``rhs`` may be overwritten by the solutions (saves a copy).

    Returns
    -------
    numpy.ndarray
        ``(..., n, T)``.
    """
    if not _engine.enabled():
        return np.linalg.solve(gram, rhs)
    n, n_rhs = rhs.shape[-2:]
    a = np.ascontiguousarray(gram, dtype=np.float64).reshape(-1, n, n)
    b = rhs.reshape(-1, n, n_rhs)
    if not (overwrite and b.flags.c_contiguous and np.shares_memory(b, rhs)):
        b = np.array(b, dtype=np.float64, order="C")
    ok = _engine.cholesky_solve(a, b)
    if not ok.all():
        bad = ~ok
        b[bad] = np.linalg.solve(a[bad], rhs.reshape(-1, n, n_rhs)[bad])
    return b.reshape(rhs.shape)
