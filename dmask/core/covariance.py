"""Covariance statistics: one GEMM per block of pixels, then a gather and solve."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dmask.core import _engine
from dmask.core.planning import subtiles

__all__ = ["CovarianceStatistics", "covariance_statistics", "solve_covariance"]


@dataclass
class CovarianceStatistics:
    """Statistics of one tile as per-block covariance matrices (tile GEMM form).

    The tile is cut into blocks of at most ``side`` x ``side`` pixels. For each
    block and channel, with ``F = [X, 1]`` (samples x (block-plus-halo pixels and
    a column of ones)) and ``T`` the targets at the block's pixels, it holds
    ``covariances = F^T F`` and ``cross = F^T T``: every Gram matrix entry, bias
    row and right-hand side of the block's pixels is one of their entries.

    Attributes
    ----------
    side : int
        Block side.
    shape : tuple of int
        ``(h, w)`` of the tile.
    covariances, cross : list of numpy.ndarray
        Per block: ``(C, m + 1, m + 1)`` and ``(C, m + 1, T, hb * wb)``.
    count : int
        Number of training pairs.
    """

    side: int
    shape: tuple[int, int]
    covariances: list[np.ndarray]
    cross: list[np.ndarray]
    count: int

    def __add__(self, other: CovarianceStatistics) -> CovarianceStatistics:
        return CovarianceStatistics(
            self.side,
            self.shape,
            [a + b for a, b in zip(self.covariances, other.covariances, strict=True)],
            [a + b for a, b in zip(self.cross, other.cross, strict=True)],
            self.count + other.count,
        )


def covariance_statistics(
    halo: np.ndarray, targets: np.ndarray, field: int, side: int = 16
) -> CovarianceStatistics:
    """Accumulate tile statistics with one GEMM per block and channel.

    Parameters
    ----------
    halo : numpy.ndarray
        ``(n, h + 2b, w + 2b, C)`` normalised, zero-padded source halo block.
    targets : numpy.ndarray
        ``(T, n, h, w, C)`` normalised target pixels of the tile.
    field : int
        Odd receptive field size ``r``.
    side : int
        Block side: the GEMM covers ``(side + 2b)^2`` pixels.

    Returns
    -------
    CovarianceStatistics
    """
    n, _, _, channels = halo.shape
    n_targets, _, h, w, _ = targets.shape
    b2 = 2 * (field // 2)
    covariances, cross = [], []
    for y0, y1, x0, x1 in subtiles(h, w, side):
        hb, wb = y1 - y0, x1 - x0
        m = (hb + b2) * (wb + b2)
        cov = np.empty((channels, m + 1, m + 1))
        crs = np.empty((channels, m + 1, n_targets, hb * wb))
        f = np.ones((n, m + 1))
        for c in range(channels):
            f[:, :m] = halo[:, y0 : y1 + b2, x0 : x1 + b2, c].reshape(n, m)
            t = np.ascontiguousarray(
                np.moveaxis(targets[:, :, y0:y1, x0:x1, c], 0, 1), np.float64
            ).reshape(n, n_targets * hb * wb)
            cov[c] = f.T @ f
            crs[c] = (f.T @ t).reshape(m + 1, n_targets, hb * wb)
        covariances.append(cov)
        cross.append(crs)
    return CovarianceStatistics(side, (h, w), covariances, cross, n)


def _gather_block(
    cov: np.ndarray,
    cross: np.ndarray,
    hb: int,
    wb: int,
    field: int,
    gram: np.ndarray,
    rhs: np.ndarray,
) -> None:
    """Copy a block's Gram matrices and right-hand sides out of its statistics.

    Pixel ``(py, px)`` reads covariance row/column ``(py + ya) * W + px + xa`` for
    window offset ``(ya, xa)`` (``W`` the block-plus-halo width), which is linear
    in every index: each piece is one strided view of the statistics, copied in
    C without index arrays.

    Parameters
    ----------
    cov : numpy.ndarray
        ``(m + 1, m + 1)`` covariance of one channel (last row/column: ones).
    cross : numpy.ndarray
        ``(m + 1, T, P)`` cross products of one channel.
    hb, wb : int
        Block shape; ``P = hb * wb``.
    field : int
        Receptive field size ``r``.
    gram, rhs : numpy.ndarray
        Outputs ``(P, k + 1, k + 1)`` and ``(P, k + 1, T)``.
    """
    from numpy.lib.stride_tricks import as_strided

    r = field
    k = r * r
    width = wb + 2 * (r // 2)
    size = cov.shape[0]
    last = size - 1
    n_targets, pixels = cross.shape[1], cross.shape[2]
    cov = np.ascontiguousarray(cov)
    cross = np.ascontiguousarray(cross)
    e = cov.itemsize
    g = gram.reshape(hb, wb, k + 1, k + 1)
    window = as_strided(
        cov,
        shape=(hb, wb, r, r, r, r),
        strides=tuple(
            e * v
            for v in (width * size + width, size + 1, width * size, size, width, 1)
        ),
    )
    g[:, :, :k, :k] = window.reshape(hb, wb, k, k)
    column = as_strided(
        cov[:, last:],
        shape=(hb, wb, r, r),
        strides=tuple(e * v for v in (width * size, size, width * size, size)),
    )
    g[:, :, :k, k] = column.reshape(hb, wb, k)
    row = as_strided(
        cov[last:],
        shape=(hb, wb, r, r),
        strides=tuple(e * v for v in (width, 1, width, 1)),
    )
    g[:, :, k, :k] = row.reshape(hb, wb, k)
    g[:, :, k, k] = cov[last, last]
    tp = n_targets * pixels
    q = rhs.reshape(hb, wb, k + 1, n_targets)
    windows = as_strided(
        cross,
        shape=(hb, wb, r, r, n_targets),
        strides=tuple(e * v for v in (width * tp + wb, tp + 1, width * tp, tp, pixels)),
    )
    q[:, :, :k] = windows.reshape(hb, wb, k, n_targets)
    q[:, :, k] = np.moveaxis(cross[last].reshape(n_targets, hb, wb), 0, -1)


def solve_covariance(
    stats: CovarianceStatistics, field: int, lam: float, validity: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Solve every pixel and channel of a tile from covariance statistics.

    Parameters and returns as :func:`solve_displacement`.
    """
    h, w = stats.shape
    channels, _, n_targets, _ = stats.cross[0].shape
    k = field * field
    weights = np.empty((n_targets, h, w, channels, k))
    bias = np.empty((n_targets, h, w, channels))
    # One buffer for every block: fresh ~10-100 MB arrays per block cost more in
    # page faults than the gather itself.
    side = min(stats.side, h) * min(stats.side, w)
    gram_buffer = np.empty(side * (k + 1) ** 2)
    rhs_buffer = np.empty(side * (k + 1) * n_targets)
    for j, (y0, y1, x0, x1) in enumerate(subtiles(h, w, stats.side)):
        hb, wb = y1 - y0, x1 - x0
        pixels = hb * wb
        gram = gram_buffer[: pixels * (k + 1) ** 2].reshape(pixels, k + 1, k + 1)
        rhs = rhs_buffer[: pixels * (k + 1) * n_targets].reshape(
            pixels, k + 1, n_targets
        )
        for c in range(channels):
            cov, cross = stats.covariances[j][c], stats.cross[j][c]
            solution = None
            if _engine.enabled():
                solution, ok = _engine.solve_covariance_block(
                    cov, cross, hb, wb, field, lam
                )
                if not ok.all():
                    solution = None  # rare: redo the block with numpy's LU
            if solution is None:
                _gather_block(cov, cross, hb, wb, field, gram, rhs)
                gram.reshape(hb * wb, -1)[:, :: k + 2] += lam
                solution = np.linalg.solve(gram, rhs)
            solution = solution.reshape(hb, wb, k + 1, n_targets)
            weights[:, y0:y1, x0:x1, c] = np.moveaxis(solution[:, :, :k], -1, 0)
            bias[:, y0:y1, x0:x1, c] = np.moveaxis(solution[:, :, k], -1, 0)
    weights *= validity[None, :, :, None, :]
    return weights, bias
