"""The joint colour mode: every output channel regresses on the window in all channels.

Each pixel ``p`` has one design row ``[x_c'(p + u) for u in the window, c' in the
channels; 1]`` of ``k = r * r * C`` features and a bias, shared by its ``C``
output channels and every target: one Gram matrix per pixel, ``C * T``
right-hand sides. Feature ``a * C + c'`` reads offset ``a`` (row-major, as
:func:`dmask.core.windows.window_offsets`) in channel ``c'``. With one channel
it is the per-channel model.

The sums are those of :mod:`dmask.core.displacement` with channel pairs:
``pair_sums[d, q, c, c'] = sum_n x_c(q) x_c'(q + d)`` over the half-plane of
displacements. The penalty choice reuses :mod:`dmask.core.lambdas` with the
pixel's systems as one "channel" of ``C * T`` targets. Numpy only.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from dmask.core import lambdas
from dmask.core.cholesky import solve_spd
from dmask.core.displacement import TileStatistics
from dmask.core.windows import displacements, window_offsets

__all__ = [
    "JointStatistics",
    "joint_factors",
    "joint_statistics",
    "joint_validity",
    "press_joint",
    "solve_joint",
    "solve_joint_gcv",
]


class JointStatistics(TileStatistics):
    """Sufficient statistics of one tile in the joint colour mode.

    The fields of :class:`~dmask.core.displacement.TileStatistics`, with the
    other channel of each product as a last axis:

    ``pair_sums`` ``(n_displacements, Hh, Ww, C, C)``: ``sum_n x_c(q) x_c'(q + d)``;
    ``cross_sums`` ``(T, r * r, h, w, C, C)``: ``sum_n t_c(p) x_c'(p + u)``
    (output channel ``c`` first, input channel ``c'`` last). ``sums``,
    ``target_sums``, ``count`` and ``target_squares`` are as there.
    """


def joint_statistics(
    halo: np.ndarray, targets: np.ndarray, field: int, squares: bool = False
) -> JointStatistics:
    """Accumulate one tile's joint statistics over a block of training pairs.

    Parameters
    ----------
    halo : numpy.ndarray
        ``(n, h + 2b, w + 2b, C)`` normalised, zero-padded source halo block.
    targets : numpy.ndarray
        ``(T, n, h, w, C)`` normalised target pixels of the tile.
    field : int
        Odd receptive field size ``r``.
    squares : bool
        Also sum the squared targets.
    """
    x = np.ascontiguousarray(np.moveaxis(np.asarray(halo, np.float64), 0, -1))
    t = np.ascontiguousarray(np.moveaxis(np.asarray(targets, np.float64), 1, -1))
    hh, ww, nc, n = x.shape
    n_targets, h, w, _, _ = t.shape
    deltas = displacements(field)
    pair_sums = np.zeros((len(deltas), hh, ww, nc, nc))
    for d, (dy, dx) in enumerate(deltas):
        a_cols = slice(max(0, -dx), ww - max(0, dx))
        b_cols = slice(max(0, dx), ww - max(0, -dx))
        np.einsum(
            "ijcn,ijen->ijce",
            x[: hh - dy, a_cols],
            x[dy:, b_cols],
            out=pair_sums[d, : hh - dy, a_cols],
        )
    offsets = window_offsets(field) + field // 2
    cross_sums = np.empty((n_targets, len(offsets), h, w, nc, nc))
    for a, (oy, ox) in enumerate(offsets):
        np.einsum(
            "tijcn,ijen->tijce",
            t,
            x[oy : oy + h, ox : ox + w],
            out=cross_sums[:, a],
        )
    return JointStatistics(
        pair_sums,
        x.sum(axis=-1),
        cross_sums,
        t.sum(axis=-1),
        n,
        np.einsum("tijcn,tijcn->tijc", t, t) if squares else None,
    )


@cache
def _pairs(field: int) -> tuple[tuple[int, int, int, int, bool], ...]:
    """Per window offset pair ``a <= b``: displacement, halo offset, and order.

    ``(a, b, d, which, swapped)``: entry ``(a, b)`` of the Gram matrix reads
    ``pair_sums[d]`` at the halo position of offset ``a`` (not swapped) or
    ``b`` (swapped, with the channel axes exchanged).
    """
    offsets = window_offsets(field) + field // 2
    index = {delta: d for d, delta in enumerate(displacements(field))}
    out = []
    for a in range(len(offsets)):
        for b in range(a, len(offsets)):
            delta = tuple(int(v) for v in offsets[b] - offsets[a])
            if delta in index:
                out.append((a, b, index[delta], a, False))
            else:
                out.append((a, b, index[(-delta[0], -delta[1])], b, True))
    return tuple(out)


def joint_gram(
    stats: JointStatistics, field: int, rows: slice, lam: float
) -> np.ndarray:
    """Regularised Gram matrices ``(rows, w, k + 1, k + 1)`` of some tile rows."""
    offsets = window_offsets(field) + field // 2
    nc = stats.sums.shape[-1]
    w = stats.target_sums.shape[2]
    r2 = len(offsets)
    k = r2 * nc
    i0, i1 = rows.start, rows.stop
    gram = np.empty((i1 - i0, w, r2, nc, r2, nc))
    for a, b, d, which, swapped in _pairs(field):
        oy, ox = offsets[which]
        block = stats.pair_sums[d, i0 + oy : i1 + oy, ox : ox + w]
        if swapped:
            block = np.swapaxes(block, -1, -2)
        gram[:, :, a, :, b, :] = block
        gram[:, :, b, :, a, :] = np.swapaxes(block, -1, -2)
    out = np.empty((i1 - i0, w, k + 1, k + 1))
    out[..., :k, :k] = gram.reshape(i1 - i0, w, k, k)
    sums = np.stack(
        [stats.sums[i0 + oy : i1 + oy, ox : ox + w] for oy, ox in offsets], axis=2
    ).reshape(i1 - i0, w, k)
    out[..., :k, k] = sums
    out[..., k, :k] = sums
    out[..., k, k] = stats.count
    diag = np.arange(k + 1)
    out[..., diag, diag] += lam
    return out


def joint_rhs(stats: JointStatistics) -> np.ndarray:
    """Right-hand sides ``(h, w, k + 1, T * C)``: target-major, then channel."""
    n_targets, r2, h, w, nc, _ = stats.cross_sums.shape
    cross = np.moveaxis(stats.cross_sums, (0, 4), (4, 5))  # (r2, h, w, C', T, C)
    cross = np.moveaxis(cross, 0, 2).reshape(h, w, r2 * nc, n_targets * nc)
    bias = np.moveaxis(stats.target_sums, 0, -2).reshape(h, w, 1, n_targets * nc)
    return np.concatenate([cross, bias], axis=2)


def joint_validity(validity: np.ndarray, channels: int) -> np.ndarray:
    """``(h, w, r * r)`` offsets in the image, as ``(h, w, r * r * C)`` features."""
    return np.repeat(validity, channels, axis=-1)


def _as_model(
    solution: np.ndarray, n_targets: int, validity: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(h, w, k + 1, T * C)`` solutions as weights ``(T, h, w, C, k)`` and bias."""
    h, w, k1, _ = solution.shape
    per = solution.reshape(h, w, k1, n_targets, -1)
    per = np.moveaxis(per, (3, 4), (0, 3))  # (T, h, w, C, k + 1)
    nc = per.shape[3]
    weights = per[..., : k1 - 1] * joint_validity(validity, nc)[None, :, :, None]
    return np.ascontiguousarray(weights), np.ascontiguousarray(per[..., k1 - 1])


def solve_joint(
    stats: JointStatistics,
    field: int,
    lam: float,
    validity: np.ndarray,
    rows_per_batch: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """Solve every pixel of a tile in the joint mode.

    Returns weights ``(T, h, w, C, r * r * C)`` (zero for offsets outside the
    image) and bias ``(T, h, w, C)``.
    """
    n_targets, h = stats.cross_sums.shape[0], stats.cross_sums.shape[2]
    rhs = joint_rhs(stats)
    solution = np.empty(rhs.shape)
    for i0 in range(0, h, rows_per_batch):
        rows = slice(i0, min(h, i0 + rows_per_batch))
        solution[rows] = solve_spd(joint_gram(stats, field, rows, lam), rhs[rows])
    return _as_model(solution, n_targets, validity)


def joint_factors(
    stats: JointStatistics, field: int, rows_per_batch: int = 8
) -> lambdas.SpectralFactors:
    """Eigendecompositions of every pixel's joint Gram matrix, as one channel.

    :class:`dmask.core.lambdas.SpectralFactors` of shape ``(h, w, 1, k + 1)``
    with ``T * C`` right-hand sides.
    """
    rhs = joint_rhs(stats)
    h, w, k1, m = rhs.shape
    values = np.empty((h, w, 1, k1))
    vectors = np.empty((h, w, 1, k1, k1))
    projected = np.empty((h, w, 1, k1, m))
    for i0 in range(0, h, rows_per_batch):
        rows = slice(i0, min(h, i0 + rows_per_batch))
        s, v = np.linalg.eigh(joint_gram(stats, field, rows, 0.0))
        np.maximum(s, 0.0, out=s)
        values[rows, :, 0] = s
        vectors[rows, :, 0] = v
        projected[rows, :, 0] = np.swapaxes(v, -1, -2) @ rhs[rows]
    return lambdas.SpectralFactors(values, vectors, projected, stats.count)


def _selected(
    factors: lambdas.SpectralFactors,
    lam: np.ndarray,
    n_targets: int,
    validity: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The joint model with a penalty per pixel, channel and target: ``lam``
    ``(h, w, 1, T * C)``."""
    solution = lambdas.spectral_solve(
        factors.values, factors.vectors, factors.projected, lam
    )[:, :, 0]
    weights, bias = _as_model(solution, n_targets, validity)
    h, w = lam.shape[:2]
    chosen = np.moveaxis(lam[:, :, 0].reshape(h, w, n_targets, -1), 2, 0)
    return weights, bias, np.ascontiguousarray(chosen)


def solve_joint_gcv(
    stats: JointStatistics, field: int, grid: np.ndarray, validity: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Choose each pixel's, channel's and target's penalty by GCV, and solve.

    Returns weights, bias and the chosen penalty ``(T, h, w, C)``.
    """
    if stats.target_squares is None:
        raise ValueError("GCV needs statistics with target_squares")
    n_targets, _, h, w, _, _ = stats.cross_sums.shape
    factors = joint_factors(stats, field)
    squares = np.moveaxis(stats.target_squares, 0, -2).reshape(h, w, 1, -1)
    scores = lambdas.gcv_scores(
        factors.values, factors.projected, squares, stats.count, grid
    )
    lam = lambdas.select_lambda(scores, grid)
    return _selected(factors, lam, n_targets, validity)


def press_joint(
    factors: lambdas.SpectralFactors,
    halo: np.ndarray,
    targets: np.ndarray,
    field: int,
    grid: np.ndarray,
) -> np.ndarray:
    """Leave-one-out squared errors ``(h, w, 1, T * C, L)`` over a sample block."""
    from numpy.lib.stride_tricks import sliding_window_view

    n_samples, _, _, nc = halo.shape
    h, w, _, k1 = factors.values.shape
    n_targets = targets.shape[0]
    out = np.empty((h, w, 1, n_targets * nc, len(grid)))
    design = np.ones((w, n_samples, k1))
    for i in range(h):
        windows = sliding_window_view(halo[:, i : i + field], field, axis=2)
        # (n, dy, x, C, dx) -> (x, n, dy, dx, C): features offset-major, channel last
        design[..., : k1 - 1] = np.transpose(windows, (2, 0, 1, 4, 3)).reshape(
            w, n_samples, k1 - 1
        )
        values = np.transpose(targets[:, :, i], (2, 1, 0, 3)).reshape(
            w, n_samples, n_targets * nc
        )
        out[i, :, 0] = lambdas.press_scores(
            design, values, factors.values[i, :, 0], factors.vectors[i, :, 0],
            factors.projected[i, :, 0], grid,
        )  # fmt: skip
    return out


def select_joint(
    factors: lambdas.SpectralFactors,
    scores: np.ndarray,
    grid: np.ndarray,
    n_targets: int,
    validity: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Solve every pixel with its penalty of least score (summed PRESS)."""
    return _selected(factors, lambdas.select_lambda(scores, grid), n_targets, validity)
