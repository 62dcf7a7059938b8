"""Sufficient statistics in image layout, and any smaller field's tile statistics.

Everything masked ridge regression needs from its training pairs is a sum over
them (:class:`dmask.core.displacement.TileStatistics`). Kept for a largest
field ``r_max`` in *image layout*, one value per image pixel instead of per
tile halo, they hold the statistics of every odd field ``r <= r_max``: its
displacements and window offsets are subsets of ``r_max``'s, and its halo is a
window of the image arrays padded with zeros. Numpy only.

Image layout, for an ``(H, W, C)`` image and ``T`` targets:

``pair_sums``      ``(D, H, W, C)``: ``sum_n x(q) x(q + d)`` (0 where ``q + d``
                   leaves the image), ``D`` the half-plane displacements of ``r_max``.
``sums``           ``(H, W, C)``: ``sum_n x(q)``.
``cross_sums``     ``(T, r_max^2, H, W, C)``: ``sum_n x(p + u) t(p)``.
``target_sums``    ``(T, H, W, C)``: ``sum_n t(p)``.
``target_squares`` ``(T, H, W, C)``: ``sum_n t(p)^2``.

In the joint colour mode (:mod:`dmask.core.joint`) ``pair_sums`` and
``cross_sums`` have a last axis more, the other channel of each product.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from dmask.core.displacement import TileStatistics
from dmask.core.joint import JointStatistics
from dmask.core.planning import Tile
from dmask.core.windows import displacements, window_offsets

__all__ = [
    "IMAGE_PARTS",
    "displacement_subset",
    "field_statistics",
    "image_parts",
    "offset_subset",
    "reach",
    "statistics_bytes",
]

#: The arrays of the image layout, in order.
IMAGE_PARTS = ("pair_sums", "sums", "cross_sums", "target_sums", "target_squares")


@cache
def displacement_subset(field: int, largest: int) -> np.ndarray:
    """Indices among ``largest``'s displacements of ``field``'s, in its order."""
    if field % 2 == 0 or field > largest:
        raise ValueError(f"field {field} is not an odd size up to {largest}")
    index = {delta: d for d, delta in enumerate(displacements(largest))}
    out = np.array([index[delta] for delta in displacements(field)], dtype=np.int64)
    out.flags.writeable = False
    return out


@cache
def offset_subset(field: int, largest: int) -> np.ndarray:
    """Indices among ``largest``'s window offsets of ``field``'s, row-major."""
    if field % 2 == 0 or field > largest:
        raise ValueError(f"field {field} is not an odd size up to {largest}")
    index = {tuple(o): a for a, o in enumerate(window_offsets(largest).tolist())}
    out = np.array([index[tuple(o)] for o in window_offsets(field).tolist()])
    out.flags.writeable = False
    return out


def reach(tile: Tile, field: int, image_shape: tuple[int, int]) -> Tile:
    """The tile to accumulate at ``field`` so that ``tile``'s sums are complete.

    A tile's halo statistics hold ``sum x(q) x(q + d)`` only where ``q + d`` is
    in its halo; image layout needs it wherever ``q`` is in the tile, so the
    tile is grown by ``field // 2`` below and on both sides (within the image).
    """
    b = field // 2
    height, width = image_shape
    return Tile(
        tile.index, tile.y0, min(height, tile.y1 + b),
        max(0, tile.x0 - b), min(width, tile.x1 + b),
    )  # fmt: skip


def image_parts(
    stats: TileStatistics | JointStatistics, field: int, tile: Tile, grown: Tile
) -> dict[str, np.ndarray]:
    """``tile``'s statistics in image layout, from those of its :func:`reach`.

    ``stats`` are ``grown``'s halo statistics at ``field`` with target squares
    (:func:`dmask.core.displacement.displacement_statistics` with ``squares``).
    """
    if stats.target_squares is None:
        raise ValueError("image-layout statistics need the sums of squared targets")
    b = field // 2
    h, w = tile.shape
    oy, ox = tile.y0 - grown.y0, tile.x0 - grown.x0
    inner = (slice(oy, oy + h), slice(ox, ox + w))
    halo = (slice(oy + b, oy + b + h), slice(ox + b, ox + b + w))
    return {
        "pair_sums": stats.pair_sums[:, halo[0], halo[1]],
        "sums": stats.sums[halo],
        "cross_sums": stats.cross_sums[:, :, inner[0], inner[1]],
        "target_sums": stats.target_sums[:, inner[0], inner[1]],
        "target_squares": stats.target_squares[:, inner[0], inner[1]],
    }


def field_statistics(
    halo: dict[str, np.ndarray],
    count: int,
    field: int,
    largest: int,
    padding: tuple[tuple[int, int], tuple[int, int]],
    joint: bool = False,
) -> TileStatistics | JointStatistics:
    """One tile's statistics at ``field`` from image-layout windows at ``largest``.

    Parameters
    ----------
    halo : dict of numpy.ndarray
        The image-layout arrays (:data:`IMAGE_PARTS`) read over the tile's halo
        at ``field`` clipped to the image (``pair_sums`` and ``sums``) and over
        the tile itself (the others).
    count : int
        Training pairs summed.
    field, largest : int
        The field to solve, and the field the statistics were kept for.
    padding : tuple
        ``((top, bottom), (left, right))`` of the halo outside the image.
    joint : bool
        Statistics of the joint colour mode.

    Returns
    -------
    TileStatistics or JointStatistics
        Equal to the statistics of the tile accumulated at ``field``.
    """

    def padded(array: np.ndarray, lead: int) -> np.ndarray:
        if not any(sum(padding, ())):
            return array
        rest = [(0, 0)] * (array.ndim - lead - 2)
        return np.pad(array, [(0, 0)] * lead + [*padding] + rest)

    pairs = padded(halo["pair_sums"][displacement_subset(field, largest)], 1)
    sums = padded(halo["sums"], 0)
    cross = halo["cross_sums"][:, offset_subset(field, largest)]
    kind = JointStatistics if joint else TileStatistics
    return kind(
        np.ascontiguousarray(pairs),
        np.ascontiguousarray(sums),
        np.ascontiguousarray(cross),
        np.ascontiguousarray(halo["target_sums"]),
        int(count),
        np.ascontiguousarray(halo["target_squares"]),
    )


def statistics_bytes(
    image_shape: tuple[int, int],
    channels: int,
    field: int,
    n_targets: int,
    joint: bool = False,
) -> int:
    """Bytes of one fold of image-layout statistics (float64) at ``field``."""
    pairs = channels if joint else 1  # products with every other channel
    per_value = (
        len(displacements(field)) * pairs + 1 + n_targets * (field * field * pairs + 2)
    )
    return 8 * per_value * image_shape[0] * image_shape[1] * channels
