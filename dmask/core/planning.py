"""Planning: spatial tiles, halos, sample blocks and the memory they need.

Pure Python and numpy; no Dask, no Zarr. A plan says which pixels each task
solves, which source pixels it reads, and how many samples it holds at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

from dmask.core import _engine
from dmask.core.windows import displacements
from dmask.errors import InputError

__all__ = [
    "FitPlan",
    "FitWork",
    "PENALTY_KINDS",
    "Rates",
    "bounds_block",
    "bounds_groups",
    "bounds_tasks",
    "estimate_seconds",
    "fit_work",
    "graph_tasks",
    "model_bytes",
    "plan_for_workers",
    "read_bytes",
    "solve_flops",
    "statistics_flops",
    "task_memory_parts",
    "tree_tasks",
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
    """About the tasks of a fit's graph (the shared per-block bounds left out).

    Per tile: one statistics task per sample block (reading its inputs itself),
    the ``blocks - 1`` sums of their tree, a solve and a write (one task for
    statistics and solve with one block); with penalties chosen per pixel, a
    factor and a scoring task per block more.
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


# ------------------------------------------------------------------ dry runs
# What ``dmask train --plan`` prints: the tasks of a fit's graph, the work they
# do and the time it takes at given rates. Each count mirrors the graph that
# :func:`dmask.graph.training.fit_tiles` and the bounds pass build (a test
# compares them with a real run's graph).

#: Bytes of images one bounds task reads (``dmask.graph.inputs``' block).
BOUNDS_BLOCK_BYTES = 64 * 2**20
#: Scheduler seconds per task on this kind of machine (design notes, section
#: 2: 2000 trivial tasks took 4.8 s on a 2-worker LocalCluster).
TASK_OVERHEAD = 2.4e-3

#: Ways a fit's penalty is set: one fixed value, or chosen per pixel.
PENALTY_KINDS = ("fixed", "gcv", "loo")


def bounds_block(sample_bytes: int) -> int:
    """Samples one bounds task reads: :data:`BOUNDS_BLOCK_BYTES` of whole images."""
    return int(max(1, BOUNDS_BLOCK_BYTES // max(1, sample_bytes)))


def tree_tasks(parts: int, fan_in: int = COMBINE_FAN_IN) -> int:
    """``combine`` tasks of a tree that adds ``parts`` results ``fan_in`` at a time.

    At each level a group of one (the rest when the level's count is not a
    multiple of ``fan_in``) is carried up as it is, with no task.
    """
    count = 0
    while parts > 1:
        count += parts // fan_in + (1 if parts % fan_in > 1 else 0)
        parts = -(-parts // fan_in)
    return count


def graph_tasks(
    plan: FitPlan,
    n_targets: int,
    penalty: str = "fixed",
    written: bool = True,
) -> dict[str, int]:
    """Tasks of a fit's graph by function name (as the dashboard groups them).

    Inputs from a dataset store make no tasks of their own: each statistics
    (and ``press``) task reads its window of its sample block itself.

    Parameters
    ----------
    plan : FitPlan
        The fit's plan.
    n_targets : int
        Targets trained together.
    penalty : {"fixed", "gcv", "loo"}
        A fixed penalty, or one chosen per pixel by GCV or leave-one-out.
    written : bool
        Each tile written to a model store (``write_tile``).

    Returns
    -------
    dict of str to int
        Counts per task name, only names with tasks; ``sample_block_bounds``
        are the graph's shared per-block values.
    """
    if penalty not in PENALTY_KINDS:
        raise ValueError(f"penalty must be one of {PENALTY_KINDS}, got {penalty!r}")
    del n_targets  # every target is read by the same task as the sources
    tiles, blocks = len(plan.tiles), len(plan.blocks)
    counts = {"sample_block_bounds": blocks}
    if blocks == 1 and penalty != "loo":
        counts["statistics_and_solve"] = tiles
    else:
        counts["statistics"] = tiles * blocks
        combines = tree_tasks(blocks)
        if penalty == "loo":
            counts["factor"] = tiles
            counts["press"] = tiles * blocks
            combines += tree_tasks(blocks)
            counts["select"] = tiles
        else:
            counts["solve"] = tiles
        counts["combine"] = tiles * combines
    if written:
        counts["write_tile"] = tiles
    return {name: count for name, count in counts.items() if count}


def bounds_groups(
    index: Sequence[int], sample_chunk: int, sample_bytes: int
) -> list[tuple[int, int]]:
    """Which samples each bounds task reads: ``(start, stop)`` positions in ``index``.

    Every read decodes whole chunks, so a task reads whole chunks of the
    store's sample axis (``sample_chunk`` samples each): as many as make
    :func:`bounds_block` samples, at least one. ``index`` holds the store's
    sample indices in the order they are used; a task's samples are
    consecutive positions of it and lie in chunks no other task reads (when
    ``index`` is sorted).
    """
    chunk = max(1, int(sample_chunk))
    per_task = max(1, bounds_block(sample_bytes) // chunk)
    groups: list[tuple[int, int]] = []
    start, seen = 0, set()
    for position, sample in enumerate(index):
        which = int(sample) // chunk
        if which not in seen and len(seen) == per_task:
            groups.append((start, position))
            start, seen = position, set()
        seen.add(which)
    if len(index) > start:
        groups.append((start, len(index)))
    return groups


def bounds_tasks(
    indices: Sequence[Sequence[int]], sample_chunk: int, sample_bytes: int
) -> dict[str, int]:
    """Tasks of the pass that finds every image's minimum and maximum.

    One ``read_bounds`` task per group of :func:`bounds_groups` of each image
    array's ``indices`` (the sources and each target) and one
    ``concat_bounds`` per array.
    """
    reads = sum(
        len(bounds_groups(index, sample_chunk, sample_bytes)) for index in indices
    )
    return {"read_bounds": reads, "concat_bounds": len(indices)}


def statistics_flops(
    tile_shape: tuple[int, int],
    channels: int,
    field: int,
    n_targets: int,
    n_samples: int,
    method: str = "displacement",
) -> float:
    """Floating-point operations of one tile's statistics over ``n_samples``.

    Displacement sums: a multiply and an add per sample, halo pixel, channel
    and displacement, and per tile pixel, target and window offset (the cross
    sums). Covariance blocks: the GEMM of each block with its halo and the
    cross products with the targets. The joint mode is planned as
    displacement sums over ``C * C`` channel pairs (``channels`` given so).
    """
    h, w = tile_shape
    b2 = 2 * (field // 2)
    k = field * field
    if method in ("displacement", "joint"):
        halo = (h + b2) * (w + b2)
        per_sample = len(displacements(field)) * halo + n_targets * k * h * w + halo
        return 2.0 * n_samples * channels * per_sample
    total = 0.0
    for y0, y1, x0, x1 in subtiles(h, w, COVARIANCE_SIDE):
        hb, wb = y1 - y0, x1 - x0
        m1 = (hb + b2) * (wb + b2) + 1
        total += 2.0 * n_samples * channels * m1 * (m1 + n_targets * hb * wb)
    return total


def solve_flops(
    tile_shape: tuple[int, int],
    channels: int,
    field: int,
    n_targets: int,
    n_lams: int = 0,
    features: int | None = None,
) -> float:
    """Floating-point operations of solving every pixel of a tile.

    A Cholesky factorisation of each ``(k+1) x (k+1)`` Gram matrix and its
    triangular solves (one pair per target); with ``n_lams`` penalties to
    choose from, an eigendecomposition (about ``9 n^3``) and the scores of each
    penalty instead. ``features`` is ``k`` where it is not ``r * r`` (joint).
    """
    h, w = tile_shape
    n = (features if features is not None else field * field) + 1
    if n_lams:
        per_pixel = 9.0 * n**3 + 2.0 * n * n * n_targets * (1 + n_lams)
    else:
        per_pixel = n**3 / 3.0 + 2.0 * n * n * n_targets
    return h * w * channels * per_pixel


def _touched(start: int, stop: int, chunk: int, size: int) -> int:
    """Elements of the chunks along one axis that ``[start, stop)`` touches."""
    if stop <= start:
        return 0
    first, last = start // chunk, (stop - 1) // chunk
    return min(size, (last + 1) * chunk) - first * chunk


def _touched_samples(index: Sequence[int], chunk: int, size: int) -> int:
    """Samples held by the chunks along the sample axis that ``index`` touches."""
    return sum(
        min(size, (c + 1) * chunk) - c * chunk for c in {i // chunk for i in index}
    )


def read_bytes(
    plan: FitPlan,
    field: int,
    indices: Sequence[Sequence[int]],
    store_shape: tuple[int, int, int, int],
    chunks: tuple[int, int, int, int],
    itemsize: int,
    penalty: str = "fixed",
) -> tuple[int, int]:
    """Bytes a fit decodes from a dataset store: its tiles' reads, and the bounds'.

    Every read decodes whole chunks, so a tile's window with its halo costs
    the chunks it touches (a tile smaller than a chunk decodes more than it
    uses).

    Parameters
    ----------
    plan : FitPlan
        The fit's plan.
    field : int
        Receptive field (the source window's halo is ``field // 2``).
    indices : sequence of sequences of int
        Store sample indices of the sources, then of each target, in order.
    store_shape, chunks : tuple of int
        ``(sample, y, x, channel)`` shape and chunk shape of the store's images.
    itemsize : int
        Bytes per pixel value.
    penalty : {"fixed", "gcv", "loo"}
        ``loo`` reads every block a second time.

    Returns
    -------
    fit, bounds : int
        Decoded bytes of the fit's reads and of the bounds pass.
    """
    n_all, height, width, channels = store_shape
    cs, cy, cx, cc = chunks
    depth = _touched(0, channels, cc, channels)
    halo = field // 2
    spatial = 0  # touched chunk pixels, summed over tiles, per image read
    inner_spatial = 0
    for tile in plan.tiles:
        rows, cols, _ = tile.halo(halo, plan.image_shape)
        spatial += _touched(rows.start, rows.stop, cy, height) * _touched(
            cols.start, cols.stop, cx, width
        )
        inner_spatial += _touched(tile.y0, tile.y1, cy, height) * _touched(
            tile.x0, tile.x1, cx, width
        )
    fit = 0
    for number, index in enumerate(indices):
        samples = sum(
            _touched_samples(index[s0:s1], cs, n_all) for s0, s1 in plan.blocks
        )
        fit += samples * (spatial if number == 0 else inner_spatial)
    if penalty == "loo":
        fit *= 2
    sample_bytes = height * width * channels * itemsize
    whole = _touched(0, height, cy, height) * _touched(0, width, cx, width)
    bounds = sum(
        _touched_samples(index[s0:s1], cs, n_all) * whole
        for index in indices
        for s0, s1 in bounds_groups(index, cs, sample_bytes)
    )
    return int(fit * depth * itemsize), int(bounds * depth * itemsize)


def model_bytes(
    image_shape: tuple[int, int],
    channels: int,
    features: int,
    n_targets: int,
    itemsize: int = 8,
    lam_map: bool = False,
) -> int:
    """Uncompressed bytes of a model store: weights, bias and the penalty map."""
    height, width = image_shape
    per_value = n_targets * height * width * channels
    return per_value * ((features + 1) * itemsize + (8 if lam_map else 0))


@dataclass(frozen=True)
class Rates:
    """How fast one worker thread works, for estimates.

    Attributes
    ----------
    statistics_flops, combine_flops, solve_flops : float
        Floating-point operations per second of the statistics, of adding
        statistics together, and of solving.
    read_bytes : float
        Bytes per second decoded from a dataset store.
    write_bytes : float
        Bytes per second of a model written.
    task_overhead : float
        Seconds of the scheduler's time per task (it schedules one at a time).
    """

    statistics_flops: float
    combine_flops: float
    solve_flops: float
    read_bytes: float
    write_bytes: float
    task_overhead: float = TASK_OVERHEAD

    @classmethod
    def names(cls) -> list[str]:
        """The rates' names."""
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(
        cls, values: dict[str, float], fallback: Rates | None = None
    ) -> Rates:
        """Rates from a mapping of their names; every value positive and finite.

        Names not in ``values`` are taken from ``fallback`` (``task_overhead``
        is :data:`TASK_OVERHEAD` without one).

        Raises
        ------
        InputError
            A name unknown, or missing with no fallback, or a value not a
            positive number.
        """
        names = cls.names()
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise InputError(f"unknown rate(s) {unknown}; rates are {names}")
        out = {}
        for name in names:
            if name not in values:
                if fallback is not None:
                    out[name] = getattr(fallback, name)
                    continue
                if name == "task_overhead":
                    continue
                raise InputError(f"rate {name} is missing; rates are {names}")
            value = values[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InputError(f"rate {name} must be a number, got {value!r}")
            if not (math.isfinite(value) and value > 0):
                raise InputError(f"rate {name} must be positive, got {value!r}")
            out[name] = float(value)
        return cls(**out)


@dataclass(frozen=True)
class FitWork:
    """What a fit does in all: tasks, operations and bytes, per phase."""

    tasks: dict[str, int]
    bounds_tasks: dict[str, int]
    statistics_flops: float
    combine_flops: float
    solve_flops: float
    read_bytes: int
    bounds_bytes: int
    write_bytes: int

    @property
    def task_total(self) -> int:
        """Every task of the bounds pass and of the fit."""
        return sum(self.tasks.values()) + sum(self.bounds_tasks.values())


def fit_work(
    plan: FitPlan,
    channels: int,
    field: int,
    n_targets: int,
    indices: Sequence[Sequence[int]],
    store_shape: tuple[int, int, int, int],
    chunks: tuple[int, int, int, int],
    itemsize: int,
    penalty: str = "fixed",
    n_lams: int = 0,
    weights_itemsize: int = 8,
) -> FitWork:
    """Tasks, operations and bytes of a fit from a dataset store to a model store.

    ``plan.method == "joint"`` is the joint colour mode (sums over ``C * C``
    channel pairs, ``k = r * r * C`` features shared by the ``C`` outputs).
    """
    joint = plan.method == "joint"
    k = field * field * (channels if joint else 1)
    sum_channels = channels * channels if joint else channels
    n_samples = plan.blocks[-1][1] if plan.blocks else 0
    stats_flops = 0.0
    solve = 0.0
    combine = 0.0
    combines = tree_tasks(len(plan.blocks)) * (2 if penalty == "loo" else 1)
    for tile in plan.tiles:
        stats_flops += statistics_flops(
            tile.shape, sum_channels, field, n_targets, n_samples, plan.method
        )
        solve += solve_flops(
            tile.shape, 1 if joint else channels, field,
            n_targets * (channels if joint else 1), n_lams, k,
        )  # fmt: skip
        stats = estimate_statistics_bytes(
            tile.shape, sum_channels, field, n_targets,
            "displacement" if joint else plan.method,
        )  # fmt: skip
        combine += combines * (COMBINE_FAN_IN - 1) * stats / 8
    if penalty == "loo":  # the second pass: residuals of every penalty
        stats_flops *= 1 + n_lams / max(1, len(displacements(field)))
    fit, bounds = read_bytes(
        plan, field, indices, store_shape, chunks, itemsize, penalty
    )
    _, height, width, _ = store_shape
    sample_bytes = height * width * channels * itemsize
    return FitWork(
        tasks=graph_tasks(plan, n_targets, penalty),
        bounds_tasks=bounds_tasks(indices, chunks[0], sample_bytes),
        statistics_flops=stats_flops,
        combine_flops=combine,
        solve_flops=solve,
        read_bytes=fit,
        bounds_bytes=bounds,
        write_bytes=model_bytes(
            plan.image_shape,
            channels,
            k,
            n_targets,
            weights_itemsize,
            penalty != "fixed",
        ),
    )


def estimate_seconds(
    work: FitWork, rates: Rates, workers: int, threads_per_worker: int = 1
) -> dict[str, float]:
    """Wall seconds of a fit on ``workers`` x ``threads_per_worker`` threads.

    Each phase's thread-seconds (its work at the rate of one thread) are shared
    by the threads, or by its tasks where there are fewer of them; the
    scheduler, which hands out one task at a time, bounds each pass from below
    (``task_overhead`` per task). Starting the cluster and writing the model's
    template are left out.

    Returns
    -------
    dict of str to float
        Thread-seconds per phase (``read``, ``statistics``, ``combine``,
        ``solve``, ``write``, ``bounds``), then the wall seconds of the bounds
        pass (``bounds_wall``), of the fit (``fit_wall``), of the scheduler
        alone (``scheduler``) and in all (``total``).
    """
    if workers < 1 or threads_per_worker < 1:
        raise InputError("workers and threads per worker must be at least 1")
    slots = workers * threads_per_worker
    phases = {
        "read": work.read_bytes / rates.read_bytes,
        "statistics": work.statistics_flops / rates.statistics_flops,
        "combine": work.combine_flops / rates.combine_flops,
        "solve": work.solve_flops / rates.solve_flops,
        "write": work.write_bytes / rates.write_bytes,
        "bounds": work.bounds_bytes / rates.read_bytes,
    }
    parallel = work.tasks.get("statistics", work.tasks.get("statistics_and_solve", 1))
    fit_tasks = sum(work.tasks.values())
    bound_tasks = sum(work.bounds_tasks.values())
    fit_compute = sum(v for k, v in phases.items() if k != "bounds") / min(
        slots, max(1, parallel)
    )
    bounds_compute = phases["bounds"] / min(
        slots, max(1, work.bounds_tasks.get("read_bounds", 1))
    )
    fit_wall = max(fit_compute, fit_tasks * rates.task_overhead)
    bounds_wall = max(bounds_compute, bound_tasks * rates.task_overhead)
    return {
        **phases,
        "bounds_wall": bounds_wall,
        "fit_wall": fit_wall,
        "scheduler": (fit_tasks + bound_tasks) * rates.task_overhead,
        "total": bounds_wall + fit_wall,
    }


def task_memory_parts(
    plan: FitPlan,
    channels: int,
    field: int,
    n_targets: int,
    n_lams: int = 0,
) -> dict[str, int]:
    """What one task of a fit holds, in bytes, and the peak of its largest task.

    ``input`` is a sample block's source window with its halo and the targets'
    tile (float64, with a rearranged copy); ``statistics`` one tile's sums;
    ``combine`` the sums a combine task holds; ``gram`` one solve batch's Gram
    matrices; ``weights`` the tile's solved weights and bias (float64); ``peak``
    the plan's estimate of its largest task (:func:`estimate_fit_task_bytes`).
    """
    joint = plan.method == "joint"
    method = "displacement" if joint else plan.method
    sum_channels = channels * channels if joint else channels
    h, w = plan.tile_shape
    b2 = 2 * (field // 2)
    k = field * field * (channels if joint else 1)
    stats = estimate_statistics_bytes(
        plan.tile_shape, sum_channels, field, n_targets, method
    )
    batch = COVARIANCE_SIDE**2 if method == "covariance" else 8 * w * sum_channels
    halo_pixels = (h + b2) * (w + b2) * sum_channels
    return {
        "input": 2 * 8 * plan.sample_block
        * (halo_pixels + n_targets * h * w * sum_channels),
        "statistics": stats,
        "combine": (COMBINE_FAN_IN + 1) * stats if len(plan.blocks) > 1 else 0,
        "gram": 2 * 8 * batch * ((k + 1) ** 2 + 2 * (k + 1) * n_targets),
        "weights": 8 * n_targets * h * w * channels * (k + 1),
        "peak": plan.task_bytes,
    }  # fmt: skip


def plan_for_workers(
    n_samples: int,
    image_shape: tuple[int, int],
    channels: int,
    field: int,
    n_targets: int,
    thread_memory: int,
    tile_shape: tuple[int, int] | None = None,
    sample_block: int | None = None,
    method: str = "auto",
    n_lams: int = 0,
    max_tasks: int | None = None,
) -> FitPlan:
    """The plan a fit makes on workers whose threads each have ``thread_memory``.

    As :func:`dmask.fit` plans on a cluster: the task budget is 40% of a
    thread's memory (clamped to 128 MiB .. 2 GiB, and at most 80% of it),
    ``method="joint"`` is planned as displacement sums of ``C * C`` channel
    pairs, and the plan is refused (:func:`check_plan`) when it has more than
    ``max_tasks`` tasks or a task larger than a thread's memory.
    """
    joint = method == "joint"
    plan_channels, plan_method = (
        (channels * channels, "displacement") if joint else (channels, method)
    )
    budget = int(min(2 * 2**30, max(128 * 2**20, int(0.4 * thread_memory))))
    plan = plan_fit(
        n_samples, image_shape, plan_channels, field, n_targets,
        tile_shape=tile_shape, sample_block=sample_block,
        memory_limit=min(budget, int(0.8 * thread_memory)), method=plan_method,
        n_lams=n_lams,
    )  # fmt: skip
    if max_tasks is not None:
        check_plan(plan, max_tasks, thread_memory, selecting=bool(n_lams))
    if joint:
        from dataclasses import replace

        plan = replace(plan, method="joint")
    return plan
