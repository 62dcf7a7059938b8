"""The two forms of the statistics, chosen per fit: displacement or covariance."""

from __future__ import annotations

import numpy as np

from dmask.core.covariance import (
    CovarianceStatistics,
    covariance_statistics,
    solve_covariance,
)
from dmask.core.displacement import (
    TileStatistics,
    displacement_statistics,
    solve_displacement,
)
from dmask.errors import InputError

__all__ = ["STATISTICS_METHODS", "solve_tile", "tile_statistics"]


#: Ways of accumulating the statistics.
STATISTICS_METHODS = ("displacement", "covariance")


def tile_statistics(
    halo: np.ndarray,
    targets: np.ndarray,
    field: int,
    method: str = "displacement",
    side: int = 16,
) -> TileStatistics | CovarianceStatistics:
    """Accumulate the statistics of one tile over a block of training pairs.

    Parameters
    ----------
    halo : numpy.ndarray
        ``(n, h + 2b, w + 2b, C)`` normalised, zero-padded source halo block.
    targets : numpy.ndarray
        ``(T, n, h, w, C)`` normalised target pixels of the tile.
    field : int
        Odd receptive field size ``r``.
    method : {"displacement", "covariance"}
        Sums per displacement (few FLOPs, memory bound: small ``r``) or one GEMM
        per block (more FLOPs at BLAS speed: large ``r``).
    side : int
        Block side of the covariance method.
    """
    if method == "displacement":
        return displacement_statistics(halo, targets, field)
    if method == "covariance":
        return covariance_statistics(halo, targets, field, side)
    raise ValueError(
        f"unknown statistics method {method!r}; expected {STATISTICS_METHODS}"
    )


def solve_tile(
    stats: TileStatistics | CovarianceStatistics,
    field: int,
    lam: float,
    validity: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Solve every pixel and channel of a tile, whichever form its statistics have.

    Returns
    -------
    weights : numpy.ndarray
        ``(T, h, w, C, r * r)`` float64, exactly zero outside the image.
    bias : numpy.ndarray
        ``(T, h, w, C)`` float64.
    """
    try:
        if isinstance(stats, CovarianceStatistics):
            return solve_covariance(stats, field, lam, validity)
        return solve_displacement(stats, field, lam, validity)
    except np.linalg.LinAlgError as exc:
        raise InputError(
            f"lam = {lam:g} leaves a pixel's ridge system singular ({exc}); "
            "use a larger lam"
        ) from None
