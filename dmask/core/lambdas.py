"""Per-pixel penalty selection: leave-one-out and generalised cross-validation.

Works on one eigendecomposition of each pixel's unregularised Gram matrix
(:class:`SpectralFactors`): every penalty of a grid then costs a few vector
operations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dmask.core.displacement import TileStatistics, gram_rows, rhs_of

__all__ = [
    "DEFAULT_LAM_GRID",
    "SpectralFactors",
    "gcv_scores",
    "press_scores",
    "press_tile",
    "select_lambda",
    "solve_gcv",
    "solve_selected",
    "spectral_factors",
    "spectral_solve",
]


#: Penalties tried per pixel by default: 13 log-spaced from 1e-3 to 1e3 (half
#: decades) and the reference's 0.4.
DEFAULT_LAM_GRID: tuple[float, ...] = tuple(
    sorted({*(float(v) for v in np.logspace(-3, 3, 13)), 0.4})
)


@dataclass
class SpectralFactors:
    """Eigendecomposition of every pixel's unregularised Gram matrix of a tile.

    With ``G = A^T A = V diag(s) V^T`` and ``b = A^T t``, the ridge solution for
    any penalty is ``V diag(1 / (s + lam)) V^T b``.

    Attributes
    ----------
    values : numpy.ndarray
        ``(h, w, C, k + 1)``: eigenvalues ``s`` (clipped at 0), ascending.
    vectors : numpy.ndarray
        ``(h, w, C, k + 1, k + 1)``: eigenvectors ``V`` as columns.
    projected : numpy.ndarray
        ``(h, w, C, k + 1, T)``: ``V^T b`` for every target.
    count : int
        Number of training pairs.
    """

    values: np.ndarray
    vectors: np.ndarray
    projected: np.ndarray
    count: int


def _spectral_rows(
    stats: TileStatistics, field: int, rows: slice, rhs: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eigenvalues, eigenvectors and projected right-hand sides of some tile rows."""
    values, vectors = np.linalg.eigh(gram_rows(stats, field, rows, 0.0))
    np.maximum(values, 0.0, out=values)
    projected = np.swapaxes(vectors, -1, -2) @ rhs[rows]
    return values, vectors, projected


def spectral_factors(
    stats: TileStatistics, field: int, rows_per_batch: int = 8
) -> SpectralFactors:
    """Eigendecompose the Gram matrix of every pixel and channel of a tile.

    Parameters
    ----------
    stats : TileStatistics
        Statistics summed over all training pairs.
    field : int
        Odd receptive field size ``r``.
    rows_per_batch : int
        Tile rows decomposed at once.

    Returns
    -------
    SpectralFactors
    """
    n_targets, k, h, w, nc = stats.cross_sums.shape
    values = np.empty((h, w, nc, k + 1))
    vectors = np.empty((h, w, nc, k + 1, k + 1))
    projected = np.empty((h, w, nc, k + 1, n_targets))
    rhs = rhs_of(stats)
    for i0 in range(0, h, rows_per_batch):
        rows = slice(i0, min(h, i0 + rows_per_batch))
        values[rows], vectors[rows], projected[rows] = _spectral_rows(
            stats, field, rows, rhs
        )
    return SpectralFactors(values, vectors, projected, stats.count)


def gcv_scores(
    values: np.ndarray,
    projected: np.ndarray,
    target_squares: np.ndarray,
    count: int,
    grid: np.ndarray,
) -> np.ndarray:
    """Generalised cross-validation score of every penalty of a grid.

    ``GCV(lam) = N RSS(lam) / (N - trace H(lam))^2`` with ``trace H = sum s / (s +
    lam)`` and ``RSS = t^T t - 2 w^T b + w^T G w = t^T t - sum c^2 (s + 2 lam) /
    (s + lam)^2``, ``c = V^T b``: statistics alone, no design rows.

    Parameters
    ----------
    values : numpy.ndarray
        ``(..., n)`` eigenvalues of ``G``.
    projected : numpy.ndarray
        ``(..., n, T)``: ``V^T b``.
    target_squares : numpy.ndarray
        ``(..., T)``: ``t^T t``.
    count : int
        Number of training pairs ``N``.
    grid : numpy.ndarray
        ``(L,)`` penalties.

    Returns
    -------
    numpy.ndarray
        ``(..., T, L)``.
    """
    grid = np.asarray(grid, dtype=np.float64)
    inverse = 1.0 / (values[..., :, None] + grid)  # (..., n, L)
    trace = np.einsum("...n,...nl->...l", values, inverse)
    explained = np.swapaxes(projected**2, -1, -2) @ (
        (values[..., :, None] + 2.0 * grid) * inverse**2
    )  # (..., T, L)
    rss = np.maximum(target_squares[..., :, None] - explained, 0.0)
    return count * rss / (count - trace[..., None, :]) ** 2


def press_scores(
    design: np.ndarray,
    targets: np.ndarray,
    values: np.ndarray,
    vectors: np.ndarray,
    projected: np.ndarray,
    grid: np.ndarray,
) -> np.ndarray:
    """Leave-one-out squared errors (PRESS) of some samples, every penalty.

    For sample ``i`` with design row ``a_i``: ``z = V^T a_i``, leverage ``h_i =
    sum z^2 / (s + lam)``, fit ``a_i^T w = sum z c / (s + lam)``; its
    leave-one-out residual is ``(t_i - a_i^T w) / (1 - h_i)``, exactly that of a
    refit without it.

    Parameters
    ----------
    design : numpy.ndarray
        ``(P, m, n)``: design rows (window values, then 1) of ``m`` samples at
        ``P`` pixels.
    targets : numpy.ndarray
        ``(P, m, T)`` target values.
    values, vectors, projected : numpy.ndarray
        ``(P, n)``, ``(P, n, n)``, ``(P, n, T)``: the pixels' spectral factors.
    grid : numpy.ndarray
        ``(L,)`` penalties.

    Returns
    -------
    numpy.ndarray
        ``(P, T, L)``: sums over the ``m`` samples of squared residuals.
    """
    grid = np.asarray(grid, dtype=np.float64)
    pixels, m, n = design.shape
    n_targets = projected.shape[-1]
    z = design @ vectors  # (P, m, n): rows of V^T a_i
    inverse = 1.0 / (values[:, :, None] + grid)  # (P, n, L)
    leverage = (z * z) @ inverse  # (P, m, L)
    coefficients = projected[:, :, :, None] * inverse[:, :, None, :]
    fitted = z @ coefficients.reshape(pixels, n, -1)
    fitted = fitted.reshape(pixels, m, n_targets, len(grid))
    residual = (targets[..., None] - fitted) / (1.0 - leverage[:, :, None, :])
    return np.einsum("pmtl,pmtl->ptl", residual, residual)


def press_tile(
    factors: SpectralFactors,
    halo: np.ndarray,
    targets: np.ndarray,
    field: int,
    grid: np.ndarray,
) -> np.ndarray:
    """PRESS of every pixel, channel, target and penalty over a block of samples.

    Parameters
    ----------
    factors : SpectralFactors
        The tile's factors from all training pairs.
    halo : numpy.ndarray
        ``(n, h + 2b, w + 2b, C)`` normalised, zero-padded source halo block.
    targets : numpy.ndarray
        ``(T, n, h, w, C)`` normalised target pixels of the tile.
    field : int
        Odd receptive field size ``r``.
    grid : numpy.ndarray
        ``(L,)`` penalties.

    Returns
    -------
    numpy.ndarray
        ``(h, w, C, T, L)`` partial sums: add them over sample blocks.
    """
    from numpy.lib.stride_tricks import sliding_window_view

    n_samples = halo.shape[0]
    h, w, nc, n = factors.values.shape
    n_targets = factors.projected.shape[-1]
    out = np.empty((h, w, nc, n_targets, len(grid)))
    design = np.ones((w, nc, n_samples, n))
    for i in range(h):
        windows = sliding_window_view(halo[:, i : i + field], field, axis=2)
        # (n, dy, x, C, dx) -> (x, C, n, dy, dx): features in window order.
        design[..., : n - 1] = np.transpose(windows, (2, 3, 0, 1, 4)).reshape(
            w, nc, n_samples, n - 1
        )
        values = np.transpose(targets[:, :, i], (2, 3, 1, 0))  # (w, C, n, T)
        out[i] = press_scores(
            design.reshape(w * nc, n_samples, n),
            values.reshape(w * nc, n_samples, n_targets),
            factors.values[i].reshape(w * nc, n),
            factors.vectors[i].reshape(w * nc, n, n),
            factors.projected[i].reshape(w * nc, n, n_targets),
            grid,
        ).reshape(w, nc, n_targets, len(grid))
    return out


def select_lambda(scores: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The penalty of least finite score, the first in the grid on ties.

    Parameters
    ----------
    scores : numpy.ndarray
        ``(..., L)``.
    grid : numpy.ndarray
        ``(L,)`` penalties.

    Returns
    -------
    numpy.ndarray
        ``(...)`` float64 penalties.
    """
    finite = np.where(np.isfinite(scores), scores, np.inf)
    return np.asarray(grid, dtype=np.float64)[np.argmin(finite, axis=-1)]


def spectral_solve(
    values: np.ndarray, vectors: np.ndarray, projected: np.ndarray, lam: np.ndarray
) -> np.ndarray:
    """Ridge solutions ``V diag(1 / (s + lam)) V^T b`` with a penalty per system.

    Parameters
    ----------
    values, vectors, projected : numpy.ndarray
        ``(..., n)``, ``(..., n, n)``, ``(..., n, T)``.
    lam : numpy.ndarray
        ``(..., T)`` penalties.

    Returns
    -------
    numpy.ndarray
        ``(..., n, T)``.
    """
    return vectors @ (projected / (values[..., :, None] + lam[..., None, :]))


def _selected(
    solution: np.ndarray, lam: np.ndarray, validity: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(h, w, C, k + 1, T)`` solutions and ``(h, w, C, T)`` penalties, as stored."""
    solution = np.moveaxis(solution, -1, 0)  # (T, h, w, C, k + 1)
    k = solution.shape[-1] - 1
    weights = solution[..., :k] * validity[None, :, :, None, :]
    return weights, np.ascontiguousarray(solution[..., k]), np.moveaxis(lam, -1, 0)


def solve_gcv(
    stats: TileStatistics,
    field: int,
    grid: np.ndarray,
    validity: np.ndarray,
    rows_per_batch: int = 8,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Choose each pixel's penalty by GCV and solve with it, from statistics.

    Parameters
    ----------
    stats : TileStatistics
        Statistics with ``target_squares``, summed over all training pairs.
    field : int
        Odd receptive field size ``r``.
    grid : numpy.ndarray
        ``(L,)`` penalties to choose from.
    validity : numpy.ndarray
        ``(h, w, r * r)`` from :func:`window_validity`.
    rows_per_batch : int
        Tile rows decomposed at once.

    Returns
    -------
    weights : numpy.ndarray
        ``(T, h, w, C, r * r)``.
    bias, lam : numpy.ndarray
        ``(T, h, w, C)``: the bias and the chosen penalty.
    """
    if stats.target_squares is None:
        raise ValueError("GCV needs statistics with target_squares")
    n_targets, k, h, w, nc = stats.cross_sums.shape
    squares = np.moveaxis(stats.target_squares, 0, -1)  # (h, w, C, T)
    solution = np.empty((h, w, nc, k + 1, n_targets))
    lam = np.empty((h, w, nc, n_targets))
    rhs = rhs_of(stats)
    for i0 in range(0, h, rows_per_batch):
        rows = slice(i0, min(h, i0 + rows_per_batch))
        values, vectors, projected = _spectral_rows(stats, field, rows, rhs)
        scores = gcv_scores(values, projected, squares[rows], stats.count, grid)
        lam[rows] = select_lambda(scores, grid)
        solution[rows] = spectral_solve(values, vectors, projected, lam[rows])
    return _selected(solution, lam, validity)


def solve_selected(
    factors: SpectralFactors,
    scores: np.ndarray,
    grid: np.ndarray,
    validity: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Solve every pixel with the penalty of least score (e.g. PRESS).

    Parameters
    ----------
    factors : SpectralFactors
        The tile's factors.
    scores : numpy.ndarray
        ``(h, w, C, T, L)``, e.g. summed :func:`press_tile` results.
    grid : numpy.ndarray
        ``(L,)`` penalties.
    validity : numpy.ndarray
        ``(h, w, r * r)`` from :func:`window_validity`.

    Returns
    -------
    weights, bias, lam : numpy.ndarray
        As :func:`solve_gcv`.
    """
    lam = select_lambda(scores, grid)
    solution = spectral_solve(factors.values, factors.vectors, factors.projected, lam)
    return _selected(solution, lam, validity)
