"""Numerical kernels of masked ridge regression on numpy arrays.

Nothing here knows about Dask, Zarr or xarray. Arrays are float64 and laid out
as ``(sample, y, x, channel)`` unless said otherwise. A *halo block* is a tile
of the zero-padded, normalised source images: the tile's pixels plus ``b = r //
2`` pixels on every side.

The per-pixel Gram matrices are assembled from sums of products per
*displacement*: ``P_d(q) = sum_n x_n(q) x_n(q + d)`` for the ``(2r - 1)^2 / 2``
displacements of one half-plane, which every pair of window offsets maps onto.

Per-pixel penalty selection (leave-one-out or generalised cross-validation) works
on one eigendecomposition of each pixel's unregularised Gram matrix
(:class:`SpectralFactors`): every penalty of a grid then costs a few vector
operations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

from dmask import compiled

__all__ = [
    "DEFAULT_LAM_GRID",
    "METHODS",
    "CovarianceStatistics",
    "SpectralFactors",
    "TileStatistics",
    "covariance_statistics",
    "displacement_statistics",
    "gcv_scores",
    "press_scores",
    "press_tile",
    "select_lambda",
    "solve_gcv",
    "solve_selected",
    "spectral_factors",
    "spectral_solve",
    "solve_covariance",
    "solve_displacement",
    "apply_tile",
    "displacements",
    "minmax_parameters",
    "minmax_scale",
    "raw_displacement_statistics",
    "sample_bounds",
    "samples_last",
    "solve_spd",
    "subtiles",
    "normalize_block",
    "solve_tile",
    "tile_statistics",
    "window_offsets",
    "window_validity",
]


def window_offsets(field: int) -> np.ndarray:
    """Offsets ``(dy, dx)`` of an ``r x r`` window in row-major order.

    Parameters
    ----------
    field : int
        Odd receptive field size ``r``.

    Returns
    -------
    numpy.ndarray
        Integer array ``(r * r, 2)``; feature ``a`` reads pixel ``p + offsets[a]``.
    """
    b = field // 2
    dy, dx = np.meshgrid(np.arange(-b, b + 1), np.arange(-b, b + 1), indexing="ij")
    return np.stack([dy.ravel(), dx.ravel()], axis=1)


@cache
def displacements(field: int) -> tuple[tuple[int, int], ...]:
    """Half-plane of displacements between two window offsets.

    Parameters
    ----------
    field : int
        Odd receptive field size ``r``.

    Returns
    -------
    tuple of (int, int)
        ``(dy, dx)`` with ``dy > 0``, or ``dy == 0`` and ``dx >= 0``.
    """
    span = field - 1
    out = []
    for dy in range(0, span + 1):
        for dx in range(-span, span + 1):
            if dy > 0 or dx >= 0:
                out.append((dy, dx))
    return tuple(out)


def minmax_parameters(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image offset and scale of min-max normalisation.

    Parameters
    ----------
    images : numpy.ndarray
        ``(sample, y, x, channel)``.

    Returns
    -------
    low, scale : numpy.ndarray
        ``(sample,)`` float64 each, so that ``(image - low) * scale`` lies in
        ``[0, 1]``. A constant image gets scale 0 (it normalises to zeros).
    """
    low, high = sample_bounds(images)
    return low, minmax_scale(low, high)


def sample_bounds(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image minimum and maximum over all pixels and channels, as float64."""
    flat = images.reshape(images.shape[0], -1)
    return flat.min(axis=1).astype(np.float64), flat.max(axis=1).astype(np.float64)


def minmax_scale(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """``1 / (high - low)`` per image, 0 where the image is constant."""
    span = np.asarray(high, dtype=np.float64) - np.asarray(low, dtype=np.float64)
    return np.divide(1.0, span, out=np.zeros_like(span), where=span > 0)


def normalize_block(
    images: np.ndarray, low: np.ndarray | None, scale: np.ndarray | None
) -> np.ndarray:
    """Normalise a block of images with per-image parameters, as float64.

    Parameters
    ----------
    images : numpy.ndarray
        ``(sample, y, x, channel)`` of any real dtype.
    low, scale : numpy.ndarray or None
        ``(sample,)`` parameters from :func:`minmax_parameters`; None leaves the
        values as they are.

    Returns
    -------
    numpy.ndarray
        Float64 copy.
    """
    out = np.array(images, dtype=np.float64, copy=True)
    if low is not None and scale is not None:
        shape = (-1,) + (1,) * (out.ndim - 1)
        out -= np.asarray(low, dtype=np.float64).reshape(shape)
        out *= np.asarray(scale, dtype=np.float64).reshape(shape)
    return out


def window_validity(
    y0: int, x0: int, height: int, width: int, image_shape: tuple[int, int], field: int
) -> np.ndarray:
    """Which window offsets of each tile pixel fall inside the image.

    Parameters
    ----------
    y0, x0 : int
        Global position of the tile's first pixel.
    height, width : int
        Tile shape.
    image_shape : tuple of int
        ``(H, W)`` of the whole image.
    field : int
        Receptive field size.

    Returns
    -------
    numpy.ndarray
        Boolean ``(height, width, r * r)``.
    """
    offsets = window_offsets(field)
    ys = np.arange(y0, y0 + height)[:, None, None] + offsets[None, None, :, 0]
    xs = np.arange(x0, x0 + width)[None, :, None] + offsets[None, None, :, 1]
    return (ys >= 0) & (ys < image_shape[0]) & (xs >= 0) & (xs < image_shape[1])


def solve_spd(gram: np.ndarray, rhs: np.ndarray, overwrite: bool = False) -> np.ndarray:
    """Solve a stack of symmetric positive definite systems.

    With the compiled kernels, a Cholesky factorisation per system, without the
    GIL (n = 10: 0.29 us against 0.89 us for numpy's batched LU; n = 122: 56
    against 105 us, one core); systems that are not numerically positive
    definite, and every system without them, go to ``numpy.linalg.solve``.

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
    if not compiled.enabled():
        return np.linalg.solve(gram, rhs)
    n, n_rhs = rhs.shape[-2:]
    a = np.ascontiguousarray(gram, dtype=np.float64).reshape(-1, n, n)
    b = rhs.reshape(-1, n, n_rhs)
    if not (overwrite and b.flags.c_contiguous and np.shares_memory(b, rhs)):
        b = np.array(b, dtype=np.float64, order="C")
    ok = compiled.cholesky_solve(a, b)
    if not ok.all():
        bad = ~ok
        b[bad] = np.linalg.solve(a[bad], rhs.reshape(-1, n, n_rhs)[bad])
    return b.reshape(rhs.shape)


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
        return TileStatistics(
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
    if compiled.enabled():  # the compiled kernel reads the samples-first layout
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
    if not compiled.enabled():
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
        compiled.rolling_displacement_sums(
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


def _gram_rows(
    stats: TileStatistics, field: int, rows: slice, lam: float
) -> np.ndarray:
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


def _rhs(stats: TileStatistics) -> np.ndarray:
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
    if compiled.enabled():
        solution, ok = compiled.solve_displacement_tile(
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
    rhs_all = _rhs(stats)
    for i0 in range(0, h, rows_per_batch):
        rows = slice(i0, min(h, i0 + rows_per_batch))
        gram = _gram_rows(stats, field, rows, lam)
        solution = solve_spd(gram, rhs_all[rows])  # (rows, w, C, k + 1, T)
        solution = np.moveaxis(solution, -1, 0)
        weights[:, rows] = solution[..., :k]
        bias[:, rows] = solution[..., k]
    weights *= validity[None, :, :, None, :]
    return weights, bias


# ------------------------------------------------------------ lambda selection

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
    values, vectors = np.linalg.eigh(_gram_rows(stats, field, rows, 0.0))
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
    rhs = _rhs(stats)
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
    rhs = _rhs(stats)
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


def apply_tile(
    halo: np.ndarray, weights: np.ndarray, bias: np.ndarray, field: int
) -> np.ndarray:
    """Predict one tile of every target from a halo block.

    Parameters
    ----------
    halo : numpy.ndarray
        ``(n, h + 2b, w + 2b, C)`` normalised, zero-padded source halo block.
    weights : numpy.ndarray
        ``(T, h, w, C, r * r)``.
    bias : numpy.ndarray
        ``(T, h, w, C)``.
    field : int
        Odd receptive field size ``r``.

    Returns
    -------
    numpy.ndarray
        ``(T, n, h, w, C)`` float64.
    """
    n_targets, h, w, nc, _ = weights.shape
    n = halo.shape[0]
    out = np.empty((n_targets, n, h, w, nc))
    out[:] = np.asarray(bias, dtype=np.float64)[:, None]
    offsets = window_offsets(field) + field // 2
    for a, (oy, ox) in enumerate(offsets):
        window = halo[:, oy : oy + h, ox : ox + w]
        out += weights[:, None, :, :, :, a] * window[None]
    return out


# ------------------------------------------------------- covariance (tile GEMM)


def subtiles(height: int, width: int, side: int) -> list[tuple[int, int, int, int]]:
    """Half-open ``(y0, y1, x0, x1)`` blocks of at most ``side`` x ``side`` pixels."""
    return [
        (y0, min(height, y0 + side), x0, min(width, x0 + side))
        for y0 in range(0, height, side)
        for x0 in range(0, width, side)
    ]


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
            if compiled.enabled():
                solution, ok = compiled.solve_covariance_block(
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


#: Ways of accumulating the statistics.
METHODS = ("displacement", "covariance")


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
    raise ValueError(f"unknown statistics method {method!r}; expected {METHODS}")


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
    if isinstance(stats, CovarianceStatistics):
        return solve_covariance(stats, field, lam, validity)
    return solve_displacement(stats, field, lam, validity)
