"""Displacement statistics of a tile and the per-pixel solve from them.

The per-pixel Gram matrices are assembled from sums of products per
*displacement*: ``P_d(q) = sum_n x_n(q) x_n(q + d)`` for the ``(2r - 1)^2 / 2``
displacements of one half-plane, which every pair of window offsets maps onto.
Arrays are float64 and laid out as ``(sample, y, x, channel)`` unless said
otherwise. A *halo block* is a tile of the zero-padded, normalised source
images: the tile's pixels plus ``b = r // 2`` pixels on every side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

from dmask.core import _engine, _engine_sums
from dmask.core.cholesky import solve_spd
from dmask.core.windows import displacements, window_offsets

__all__ = [
    "TileStatistics",
    "displacement_statistics",
    "raw_displacement_statistics",
    "samples_last",
    "solve_displacement",
]


@dataclass
class TileStatistics:
    """Sufficient statistics of one tile, summed over training pairs.

    Attributes
    ----------
    pair_sums : numpy.ndarray
        ``(n_displacements, Hh, Ww, C)``: ``sum_n x(q) x(q + d)`` over the halo.
    sums : numpy.ndarray
        ``(Hh, Ww, C)``: ``sum_n x(q)`` over the halo.
    cross_sums : numpy.ndarray
        ``(T, r * r, h, w, C)``: ``sum_n x(p + u) t(p)`` for every target.
    target_sums : numpy.ndarray
        ``(T, h, w, C)``: ``sum_n t(p)``.
    count : int
        Number of training pairs.
    target_squares : numpy.ndarray or None
        ``(T, h, w, C)``: ``sum_n t(p)^2``, when asked for (generalised
        cross-validation needs it; the fixed-penalty solve does not).
    """

    pair_sums: np.ndarray
    sums: np.ndarray
    cross_sums: np.ndarray
    target_sums: np.ndarray
    count: int
    target_squares: np.ndarray | None = None

    def __add__(self, other: TileStatistics) -> TileStatistics:
        squares = None
        if self.target_squares is not None and other.target_squares is not None:
            squares = self.target_squares + other.target_squares
        return type(self)(
            self.pair_sums + other.pair_sums,
            self.sums + other.sums,
            self.cross_sums + other.cross_sums,
            self.target_sums + other.target_sums,
            self.count + other.count,
            squares,
        )


def samples_last(
    block: np.ndarray,
    low: np.ndarray | None = None,
    scale: np.ndarray | None = None,
    padding: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0)),
) -> np.ndarray:
    """Normalise, zero-pad and move the sample axis last, in one float64 copy.

    Parameters
    ----------
    block : numpy.ndarray
        ``(n, y, x, C)`` raw images.
    low, scale : numpy.ndarray or None
        ``(n,)`` min-max parameters; None leaves values as they are.
    padding : tuple
        ``((top, bottom), (left, right))`` zeros around the window.

    Returns
    -------
    numpy.ndarray
        ``(y + top + bottom, x + left + right, C, n)`` float64.
    """
    n, h, w, channels = block.shape
    (top, bottom), (left, right) = padding
    out = np.zeros((h + top + bottom, w + left + right, channels, n))
    inner = out[top : top + h, left : left + w]
    np.copyto(inner, np.moveaxis(block, 0, -1), casting="unsafe")
    if low is not None and scale is not None:
        inner -= np.asarray(low, dtype=np.float64)
        inner *= np.asarray(scale, dtype=np.float64)
    return out


def displacement_statistics(
    halo: np.ndarray,
    targets: np.ndarray,
    field: int,
    sample_last: bool = False,
    squares: bool = False,
) -> TileStatistics:
    """Accumulate the statistics of one tile over a block of training pairs.

    Parameters
    ----------
    halo : numpy.ndarray
        ``(n, h + 2b, w + 2b, C)`` normalised, zero-padded source halo block, or
        ``(h + 2b, w + 2b, C, n)`` when ``sample_last``.
    targets : numpy.ndarray
        ``(T, n, h, w, C)`` normalised target pixels of the tile, or
        ``(T, h, w, C, n)`` when ``sample_last``.
    field : int
        Odd receptive field size ``r``.
    sample_last : bool
        Whether the arrays already have the sample axis last (see
        :func:`samples_last`), which saves a copy.
    squares : bool
        Also sum the squared targets (``target_squares``).

    Returns
    -------
    TileStatistics
    """
    if _engine.enabled():  # the compiled kernel reads the samples-first layout
        if sample_last:
            halo = np.moveaxis(halo, -1, 0)
            targets = np.moveaxis(targets, -1, 1)
        none = (None, None)
        return raw_displacement_statistics(
            np.asarray(halo, dtype=np.float64),
            list(np.asarray(targets, dtype=np.float64)),
            none,
            [none] * len(targets),
            ((0, 0), (0, 0)),
            field,
            squares,
        )
    # Sample axis last and contiguous: every sum below is a dot product over it.
    if sample_last:
        x = np.ascontiguousarray(halo, dtype=np.float64)
        t = np.ascontiguousarray(targets, dtype=np.float64)
    else:
        x = np.ascontiguousarray(np.moveaxis(np.asarray(halo, np.float64), 0, -1))
        t = np.ascontiguousarray(np.moveaxis(np.asarray(targets, np.float64), 1, -1))
    hh, ww, nc, n = x.shape
    n_targets, h, w, _, _ = t.shape
    deltas = displacements(field)
    target_squares = np.einsum("tijcn,tijcn->tijc", t, t) if squares else None
    pair_sums = np.zeros((len(deltas), hh, ww, nc))
    for d, (dy, dx) in enumerate(deltas):
        a_cols = slice(max(0, -dx), ww - max(0, dx))
        b_cols = slice(max(0, dx), ww - max(0, -dx))
        np.einsum(
            "ijcn,ijcn->ijc",
            x[: hh - dy, a_cols],
            x[dy:, b_cols],
            out=pair_sums[d, : hh - dy, a_cols],
        )
    sums = x.sum(axis=-1)
    offsets = window_offsets(field) + field // 2
    cross_sums = np.empty((n_targets, len(offsets), h, w, nc))
    for a, (oy, ox) in enumerate(offsets):
        np.einsum(
            "ijcn,tijcn->tijc", x[oy : oy + h, ox : ox + w], t, out=cross_sums[:, a]
        )
    target_sums = t.sum(axis=-1)
    return TileStatistics(pair_sums, sums, cross_sums, target_sums, n, target_squares)


def raw_displacement_statistics(
    source: np.ndarray,
    targets: Sequence[np.ndarray],
    source_params: tuple[np.ndarray | None, np.ndarray | None],
    target_params: Sequence[tuple[np.ndarray | None, np.ndarray | None]],
    padding: tuple[tuple[int, int], tuple[int, int]],
    field: int,
    squares: bool = False,
) -> TileStatistics:
    """Statistics of one tile from raw images: normalised, padded, summed.

    The compiled kernels normalise the halo a few rows at a time, in cache,
    instead of copying the whole block first.

    Parameters
    ----------
    source : numpy.ndarray
        ``(n, y, x, C)`` raw source window (the halo before zero padding).
    targets : sequence of numpy.ndarray
        ``T`` raw target blocks ``(n, h, w, C)`` of the tile.
    source_params : (numpy.ndarray or None, numpy.ndarray or None)
        ``(low, scale)`` min-max parameters of the sources (None: as they are).
    target_params : sequence of such pairs
        The same for each target.
    padding : tuple
        ``((top, bottom), (left, right))`` zeros around the source window.
    field : int
        Odd receptive field size ``r``.
    squares : bool
        Also sum the squared targets (``target_squares``).

    Returns
    -------
    TileStatistics
    """
    n = source.shape[0]
    if not _engine.enabled():
        halo = samples_last(source, *source_params, padding)
        stacked = np.stack(
            [samples_last(t, *p) for t, p in zip(targets, target_params, strict=True)]
        )
        return displacement_statistics(
            halo, stacked, field, sample_last=True, squares=squares
        )

    def params(pair: tuple[np.ndarray | None, np.ndarray | None]) -> tuple:
        low, scale = pair
        if low is None or scale is None:
            return np.zeros(n), np.ones(n)
        return low, scale

    low, scale = params(source_params)
    target_low, target_scale = zip(*(params(p) for p in target_params), strict=True)
    pair_sums, sums, cross_sums, target_sums, target_squares = (
        _engine_sums.rolling_displacement_sums(
            source, low, scale, np.stack(targets), np.stack(target_low),
            np.stack(target_scale), padding, field, squares,
        )
    )  # fmt: skip
    return TileStatistics(pair_sums, sums, cross_sums, target_sums, n, target_squares)


@cache
def _gram_table(field: int) -> np.ndarray:
    """``(k, k, 3)``: displacement index and halo offset of Gram entry ``(a, b)``."""
    offsets = window_offsets(field) + field // 2
    deltas = {delta: d for d, delta in enumerate(displacements(field))}
    k = len(offsets)
    table = np.zeros((k, k, 3), dtype=np.int64)
    for a in range(k):
        ya, xa = offsets[a]
        for b in range(k):
            yb, xb = offsets[b]
            d = deltas.get((yb - ya, xb - xa))
            if d is not None:
                table[a, b] = d, ya, xa
            else:
                table[a, b] = deltas[(ya - yb, xa - xb)], yb, xb
    table.flags.writeable = False
    return table


def gram_rows(stats: TileStatistics, field: int, rows: slice, lam: float) -> np.ndarray:
    """Regularised Gram matrices ``(rows, w, C, k + 1, k + 1)`` of some tile rows."""
    offsets = window_offsets(field) + field // 2
    k = len(offsets)
    deltas = {delta: d for d, delta in enumerate(displacements(field))}
    _, w, nc = stats.target_sums.shape[1:]
    i0, i1 = rows.start, rows.stop
    gram = np.empty((i1 - i0, w, nc, k + 1, k + 1))
    for a in range(k):
        ya, xa = offsets[a]
        for b in range(a, k):
            yb, xb = offsets[b]
            d = deltas.get((yb - ya, xb - xa))
            if d is not None:
                oy, ox = ya, xa
            else:
                d = deltas[(ya - yb, xa - xb)]
                oy, ox = yb, xb
            block = stats.pair_sums[d, i0 + oy : i1 + oy, ox : ox + w]
            gram[..., a, b] = block
            gram[..., b, a] = block
        block = stats.sums[i0 + ya : i1 + ya, xa : xa + w]
        gram[..., a, k] = block
        gram[..., k, a] = block
    gram[..., k, k] = stats.count
    diag = np.arange(k + 1)
    gram[..., diag, diag] += lam
    return gram


def rhs_of(stats: TileStatistics) -> np.ndarray:
    """Right-hand sides ``A^T t`` of every pixel, ``(h, w, C, k + 1, T)``."""
    rhs = np.concatenate([stats.cross_sums, stats.target_sums[:, None]], axis=1)
    return np.moveaxis(rhs, (0, 1), (-1, -2))


def solve_displacement(
    stats: TileStatistics,
    field: int,
    lam: float,
    validity: np.ndarray,
    rows_per_batch: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """Solve every pixel and channel of a tile from displacement statistics.

    Parameters
    ----------
    stats : TileStatistics
        Statistics summed over all training pairs.
    field : int
        Odd receptive field size ``r``.
    lam : float
        Ridge penalty, applied to the weights and the bias alike.
    validity : numpy.ndarray
        ``(h, w, r * r)`` from :func:`window_validity`; weights of offsets outside
        the image are set to exactly zero.
    rows_per_batch : int
        Tile rows whose Gram matrices are built and solved at once.

    Returns
    -------
    weights : numpy.ndarray
        ``(T, h, w, C, r * r)`` float64.
    bias : numpy.ndarray
        ``(T, h, w, C)`` float64.
    """
    n_targets, k, h, w, nc = stats.cross_sums.shape
    if _engine.enabled():
        solution, ok = _engine.solve_displacement_tile(
            stats.pair_sums,
            stats.sums,
            stats.cross_sums,
            stats.target_sums,
            stats.count,
            _gram_table(field),
            window_offsets(field) + field // 2,
            lam,
        )
        if ok.all():  # otherwise (rare) the whole tile again with numpy's LU
            solution = np.moveaxis(solution, -1, 0)  # (T, h, w, C, k + 1)
            weights = solution[..., :k] * validity[None, :, :, None, :]
            return weights, np.ascontiguousarray(solution[..., k])
    weights = np.empty((n_targets, h, w, nc, k))
    bias = np.empty((n_targets, h, w, nc))
    rhs_all = rhs_of(stats)
    for i0 in range(0, h, rows_per_batch):
        rows = slice(i0, min(h, i0 + rows_per_batch))
        gram = gram_rows(stats, field, rows, lam)
        solution = solve_spd(gram, rhs_all[rows])  # (rows, w, C, k + 1, T)
        solution = np.moveaxis(solution, -1, 0)
        weights[:, rows] = solution[..., :k]
        bias[:, rows] = solution[..., k]
    weights *= validity[None, :, :, None, :]
    return weights, bias
