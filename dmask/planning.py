"""Planning: spatial tiles, halos, sample blocks and the memory they need.

Pure Python and numpy; no Dask, no Zarr. A plan says which pixels each task
solves, which source pixels it reads, and how many samples it holds at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dmask.kernels import displacements

__all__ = [
    "FitPlan",
    "Tile",
    "estimate_fit_task_bytes",
    "plan_fit",
    "plan_tiles",
    "sample_blocks",
]

#: Bytes one task may hold when nothing else is said.
DEFAULT_TASK_MEMORY = 512 * 2**20
#: Pixels per tile aimed at: a few thousand, so a task does tenths of a second.
DEFAULT_TILE_PIXELS = 64 * 64


@dataclass(frozen=True)
class Tile:
    """A rectangle of output pixels and the source window it reads.

    Attributes
    ----------
    index : tuple of int
        ``(tile_row, tile_column)`` in the tile grid.
    y0, y1, x0, x1 : int
        Half-open pixel bounds of the tile.
    """

    index: tuple[int, int]
    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` of the tile."""
        return self.y1 - self.y0, self.x1 - self.x0

    @property
    def pixels(self) -> int:
        """Number of pixels in the tile."""
        return (self.y1 - self.y0) * (self.x1 - self.x0)

    def halo(
        self, halo: int, image_shape: tuple[int, int]
    ) -> tuple[slice, slice, tuple[tuple[int, int], tuple[int, int]]]:
        """Source slices of the tile plus ``halo`` pixels, clipped to the image.

        Returns
        -------
        rows, cols : slice
            What to read from the image.
        padding : tuple
            ``((top, bottom), (left, right))`` zeros to add after reading.
        """
        height, width = image_shape
        ya, yb = self.y0 - halo, self.y1 + halo
        xa, xb = self.x0 - halo, self.x1 + halo
        rows = slice(max(0, ya), min(height, yb))
        cols = slice(max(0, xa), min(width, xb))
        padding = (
            (rows.start - ya, yb - rows.stop),
            (cols.start - xa, xb - cols.stop),
        )
        return rows, cols, padding


def plan_tiles(image_shape: tuple[int, int], tile_shape: tuple[int, int]) -> list[Tile]:
    """Cut an image into a grid of tiles (the last row and column may be smaller).

    Parameters
    ----------
    image_shape : tuple of int
        ``(H, W)``.
    tile_shape : tuple of int
        ``(tile_height, tile_width)``, each at least 1.

    Returns
    -------
    list of Tile
        Row-major order.
    """
    height, width = image_shape
    th, tw = tile_shape
    if th < 1 or tw < 1:
        raise ValueError(f"tile shape must be positive, got {tile_shape}")
    tiles = []
    for ty, y0 in enumerate(range(0, height, th)):
        for tx, x0 in enumerate(range(0, width, tw)):
            tiles.append(
                Tile((ty, tx), y0, min(height, y0 + th), x0, min(width, x0 + tw))
            )
    return tiles


def sample_blocks(n_samples: int, block: int) -> list[tuple[int, int]]:
    """Half-open ``(start, stop)`` ranges of at most ``block`` samples."""
    if block < 1:
        raise ValueError(f"sample block must be positive, got {block}")
    return [(s, min(n_samples, s + block)) for s in range(0, n_samples, block)]


def estimate_fit_task_bytes(
    tile_shape: tuple[int, int],
    channels: int,
    field: int,
    n_targets: int,
    block: int,
) -> int:
    """Peak bytes of one statistics task and of the solve that follows.

    Counts the float64 halo block and targets (twice: read and transposed), the
    statistics, and one batch of Gram matrices.
    """
    h, w = tile_shape
    b = field // 2
    k = field * field
    halo_pixels = (h + 2 * b) * (w + 2 * b) * channels
    pixels = h * w * channels
    data = 2 * 8 * block * (halo_pixels + n_targets * pixels)
    stats = 8 * (len(displacements(field)) * halo_pixels + n_targets * (k + 1) * pixels)
    gram = 8 * 8 * w * channels * ((k + 1) ** 2 + 2 * (k + 1) * n_targets)
    return data + 2 * stats + gram


@dataclass(frozen=True)
class FitPlan:
    """Tiles and sample blocks of one training run."""

    image_shape: tuple[int, int]
    tile_shape: tuple[int, int]
    sample_block: int
    tiles: tuple[Tile, ...]
    blocks: tuple[tuple[int, int], ...]
    task_bytes: int


def plan_fit(
    n_samples: int,
    image_shape: tuple[int, int],
    channels: int,
    field: int,
    n_targets: int,
    tile_shape: tuple[int, int] | None = None,
    sample_block: int | None = None,
    memory_limit: int = DEFAULT_TASK_MEMORY,
) -> FitPlan:
    """Choose tiles and sample blocks that fit a task memory budget.

    Parameters
    ----------
    n_samples : int
        Training pairs.
    image_shape : tuple of int
        ``(H, W)``.
    channels, field, n_targets : int
        Channels, receptive field size, number of targets.
    tile_shape : tuple of int, optional
        Fixed tile shape; chosen from the budget when omitted.
    sample_block : int, optional
        Fixed samples per statistics task; chosen from the budget when omitted.
    memory_limit : int
        Bytes one task may use.

    Returns
    -------
    FitPlan
    """
    height, width = image_shape
    if tile_shape is None:
        side = int(math.sqrt(DEFAULT_TILE_PIXELS))
        while side > 8 and (
            estimate_fit_task_bytes((side, side), channels, field, n_targets, 1)
            > memory_limit // 4
        ):
            side //= 2
        tile_shape = (min(height, side), min(width, side))
    if sample_block is None:
        fixed = estimate_fit_task_bytes(tile_shape, channels, field, n_targets, 0)
        per_sample = (
            estimate_fit_task_bytes(tile_shape, channels, field, n_targets, 1) - fixed
        )
        room = max(1, (memory_limit - fixed) // max(1, per_sample))
        sample_block = int(max(1, min(n_samples, room, 1024)))
    tiles = tuple(plan_tiles(image_shape, tile_shape))
    blocks = tuple(sample_blocks(n_samples, sample_block))
    task_bytes = estimate_fit_task_bytes(
        tile_shape, channels, field, n_targets, sample_block
    )
    return FitPlan(image_shape, tile_shape, sample_block, tiles, blocks, task_bytes)
