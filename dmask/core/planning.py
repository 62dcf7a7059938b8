"""Planning: spatial tiles, halos, sample blocks and the memory they need.

Pure Python and numpy; no Dask, no Zarr. A plan says which pixels each task
solves, which source pixels it reads, and how many samples it holds at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from dmask.core import _engine
from dmask.core.windows import displacements
from dmask.errors import InputError

__all__ = [
    "FitPlan",
    "prediction_tile_shape",
    "resolve_method",
    "Tile",
    "estimate_fit_task_bytes",
    "estimate_selection_bytes",
    "estimate_statistics_bytes",
    "plan_fit",
    "plan_tiles",
    "check_field",
    "check_plan",
    "format_bytes",
    "sample_blocks",
    "task_count",
    "subtiles",
    "tile_grid",
]

#: Bytes one task may hold when nothing else is said.
DEFAULT_TASK_MEMORY = 1024 * 2**20
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


def tile_grid(image_shape: Sequence[int], tile_shape: Sequence[int]) -> tuple[int, int]:
    """Rows and columns of tiles that cut an ``(H, W)`` image (last ones smaller)."""
    (height, width), (th, tw) = image_shape, tile_shape
    return -(-height // th), -(-width // tw)


def subtiles(height: int, width: int, side: int) -> list[tuple[int, int, int, int]]:
    """``(y0, y1, x0, x1)`` of the squares of ``side`` that cut an ``H x W`` tile."""
    return [(t.y0, t.y1, t.x0, t.x1) for t in plan_tiles((height, width), (side, side))]


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


#: Statistics of this many sample blocks are added in one ``combine`` task.
COMBINE_FAN_IN = 2
#: Block side of the covariance (tile GEMM) statistics.
COVARIANCE_SIDE = 16


def estimate_statistics_bytes(
    tile_shape: tuple[int, int],
    channels: int,
    field: int,
    n_targets: int,
    method: str = "covariance",
) -> int:
    """Bytes of one tile's statistics (independent of the number of samples)."""
    h, w = tile_shape
    b2 = 2 * (field // 2)
    k = field * field
    if method == "displacement":
        halo_pixels = (h + b2) * (w + b2) * channels
        return 8 * (
            len(displacements(field)) * halo_pixels
            + n_targets * (k + 1) * h * w * channels
        )
    side = COVARIANCE_SIDE
    total = 0
    for y0, y1, x0, x1 in subtiles(h, w, side):
        hb, wb = y1 - y0, x1 - x0
        m1 = (hb + b2) * (wb + b2) + 1
        total += 8 * channels * m1 * (m1 + n_targets * hb * wb)
    return total


def estimate_selection_bytes(
    tile_shape: tuple[int, int], channels: int, field: int, n_targets: int, n_lams: int
) -> int:
    """Bytes of a tile's spectral factors and scores when penalties are chosen."""
    h, w = tile_shape
    n = field * field + 1
    return 8 * h * w * channels * (n * n + n + n * n_targets + n_targets * n_lams)


def estimate_fit_task_bytes(
    tile_shape: tuple[int, int],
    channels: int,
    field: int,
    n_targets: int,
    block: int,
    method: str = "covariance",
    combined: bool = True,
    n_lams: int = 0,
) -> int:
    """Peak bytes of the largest task of a tile: statistics, combine or solve.

    Counts the float64 halo block and targets (twice: read and rearranged), the
    statistics (``COMBINE_FAN_IN + 1`` of them in a combine task, when there are
    several sample blocks to combine), and the Gram matrices of one solve batch.
    With ``n_lams`` penalties to choose from, also the tile's spectral factors
    and scores, and the leave-one-out pass's per-row arrays.
    """
    h, w = tile_shape
    b2 = 2 * (field // 2)
    k = field * field
    halo_pixels = (h + b2) * (w + b2) * channels
    data = 2 * 8 * block * (halo_pixels + n_targets * h * w * channels)
    stats = estimate_statistics_bytes(tile_shape, channels, field, n_targets, method)
    batch = COVARIANCE_SIDE**2 if method == "covariance" else 8 * w * channels
    gram = 2 * 8 * batch * ((k + 1) ** 2 + 2 * (k + 1) * n_targets)
    combine = (COMBINE_FAN_IN + 1) * stats if combined else 0
    if n_lams:
        factors = estimate_selection_bytes(
            tile_shape, channels, field, n_targets, n_lams
        )
        rows = 8 * block * w * channels * (k + 1 + 3 * n_targets * n_lams)
        return max(data + stats, combine, stats + gram + factors, data + factors + rows)
    return max(data + stats, combine, stats + gram)


@dataclass(frozen=True)
class FitPlan:
    """Tiles and sample blocks of one training run."""

    image_shape: tuple[int, int]
    tile_shape: tuple[int, int]
    sample_block: int
    tiles: tuple[Tile, ...]
    blocks: tuple[tuple[int, int], ...]
    task_bytes: int
    method: str = "covariance"


def resolve_method(field: int, method: str = "auto") -> str:
    """The statistics method to use: ``auto`` picks the faster, as measured.

    With the compiled kernels, displacement sums at every receptive field size
    (r = 3 to 15, N = 200 and 2000 on 2 cores); with numpy's alone, displacement
    sums for ``r <= 3`` and covariance blocks above (see
    ``pipelines/bench_train.py --method``).
    """
    if method == "auto":
        return "displacement" if field <= 3 or _engine.enabled() else "covariance"
    if method not in ("covariance", "displacement"):
        raise ValueError(f"unknown statistics method {method!r}")
    return method


def plan_fit(
    n_samples: int,
    image_shape: tuple[int, int],
    channels: int,
    field: int,
    n_targets: int,
    tile_shape: tuple[int, int] | None = None,
    sample_block: int | None = None,
    memory_limit: int = DEFAULT_TASK_MEMORY,
    method: str = "auto",
    n_lams: int = 0,
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
    method : {"auto", "covariance", "displacement"}
        How statistics are accumulated (see :func:`resolve_method` and
        :func:`dmask.core.methods.tile_statistics`).
    n_lams : int
        Penalties each pixel chooses from (0: one fixed penalty); their factors
        and scores count against the budget too.

    Returns
    -------
    FitPlan
    """
    method = resolve_method(field, method)
    height, width = image_shape

    def fixed_bytes(shape: tuple[int, int]) -> int:
        return estimate_fit_task_bytes(
            shape, channels, field, n_targets, 0, method, n_lams=n_lams
        )

    if tile_shape is None:
        side = int(math.sqrt(DEFAULT_TILE_PIXELS))
        while side > 8 and fixed_bytes((side, side)) > memory_limit // 2:
            side //= 2
        tile_shape = (min(height, side), min(width, side))
    if sample_block is None:
        h, w = tile_shape
        b2 = 2 * (field // 2)
        per_sample = 16 * channels * ((h + b2) * (w + b2) + n_targets * h * w)
        stats = estimate_statistics_bytes(
            tile_shape, channels, field, n_targets, method
        )
        if n_lams:
            k1 = field * field + 1
            per_sample += 8 * w * channels * (k1 + 3 * n_targets * n_lams)
            stats += estimate_selection_bytes(
                tile_shape, channels, field, n_targets, n_lams
            )
        room = max(1, (memory_limit - stats) // per_sample)
        sample_block = int(max(1, min(n_samples, room, 1024)))
    tiles = tuple(plan_tiles(image_shape, tile_shape))
    blocks = tuple(sample_blocks(n_samples, sample_block))
    task_bytes = estimate_fit_task_bytes(
        tile_shape, channels, field, n_targets, sample_block, method, len(blocks) > 1,
        n_lams,
    )  # fmt: skip
    return FitPlan(
        image_shape, tile_shape, sample_block, tiles, blocks, task_bytes, method
    )


#: Smallest tile side aimed at in prediction: its tasks do enough work.
PREDICT_TILE_SIDE = 128


def prediction_tile_shape(
    image_shape: tuple[int, int], model_tile: tuple[int, int]
) -> tuple[int, int]:
    """Prediction tiles: whole multiples of the model's tiles, about 128 pixels.

    Each prediction tile then reads whole weight chunks and does enough work to
    outweigh the scheduling of its task.
    """
    return tuple(  # type: ignore[return-value]
        min(size, tile * max(1, -(-PREDICT_TILE_SIDE // tile)))
        for size, tile in zip(image_shape, model_tile, strict=True)
    )


#: Largest tile of a sparse model's slots, in memory.
SPARSE_TILE_BYTES = 32 * 2**20


def sparse_tile_shape(height: int, width: int, per_pixel: int) -> tuple[int, int]:
    """Tiles of a sparse model: the whole image when its slots are small, else
    square tiles (a multiple of 16 pixels) of at most :data:`SPARSE_TILE_BYTES`.
    """
    if height * width * per_pixel <= SPARSE_TILE_BYTES:
        return height, width
    side = max(16, math.isqrt(SPARSE_TILE_BYTES // per_pixel) // 16 * 16)
    return min(side, height), min(side, width)


def format_bytes(n: float) -> str:
    """Bytes as a short human string (``"1.2 GB"``, decimal units)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def check_field(field: int, image_shape: Sequence[int], name: str = "images") -> None:
    """Refuse a receptive field larger than the image it is trained on."""
    height, width = image_shape
    if field > max(height, width):
        raise InputError(
            f"field {field} is larger than the {height}x{width} {name}: "
            f"use a field of at most {max(height, width)}"
        )


def task_count(plan: FitPlan, selecting: bool = False) -> int:
    """About the tasks of a fit's graph, input reads left out.

    Per tile: one statistics task per sample block, the sums of their tree, a
    solve and a write (one task for statistics and solve with one block); with
    penalties chosen per pixel, a factor and a scoring task per block more.
    """
    blocks = len(plan.blocks)
    per_tile = 2 if blocks == 1 else 2 * blocks + 1
    if selecting:
        per_tile += 2 * blocks + 1
    return len(plan.tiles) * per_tile


def check_plan(
    plan: FitPlan, max_tasks: int, memory_per_task: int | None, selecting: bool = False
) -> None:
    """Refuse a fit that cannot finish: too many tasks, or tasks too large.

    Parameters
    ----------
    plan : FitPlan
        The fit's plan.
    max_tasks : int
        Most tasks one graph may hold (option ``max-tasks``).
    memory_per_task : int, optional
        Bytes a worker thread has (a worker's memory limit over its threads).
    """
    tasks = task_count(plan, selecting)
    if tasks > max_tasks:
        raise InputError(
            f"this fit would make about {tasks:,} tasks ({len(plan.tiles):,} tiles of "
            f"{plan.tile_shape[0]}x{plan.tile_shape[1]}, {len(plan.blocks):,} sample "
            f"blocks of {plan.sample_block}), over the limit of {max_tasks:,} "
            "(option max-tasks): use larger tiles or sample blocks"
        )
    if memory_per_task is not None and plan.task_bytes > memory_per_task:
        raise InputError(
            f"one task of this fit needs about {format_bytes(plan.task_bytes)} but "
            f"a worker thread has {format_bytes(memory_per_task)}: give the "
            "workers more memory, or use smaller tiles, sample blocks or field"
        )
