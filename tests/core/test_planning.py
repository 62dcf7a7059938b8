"""Planning: tiles, sample blocks, prediction tiles and the memory a task needs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dmask.core import planning

#: Fast and reproducible: no example database written, no per-example deadline.
PROPERTY = settings(max_examples=100, deadline=None, database=None)

sides = st.integers(min_value=1, max_value=80)
shapes = st.tuples(sides, sides)


def test_tiles_cover_the_image_once():
    tiles = planning.plan_tiles((10, 7), (4, 3))
    covered = np.zeros((10, 7), dtype=int)
    for tile in tiles:
        covered[tile.y0 : tile.y1, tile.x0 : tile.x1] += 1
    assert (covered == 1).all()
    rows, cols, pad = tiles[0].halo(2, (10, 7))
    assert (rows, cols, pad) == (slice(0, 6), slice(0, 5), ((2, 0), (2, 0)))


def test_task_memory_does_not_grow_with_image_or_samples():
    small = planning.plan_fit(100, (128, 128), 3, 7, 6)
    large = planning.plan_fit(100_000, (2048, 4096), 3, 7, 6)
    assert small.tile_shape == large.tile_shape
    assert large.task_bytes <= planning.DEFAULT_TASK_MEMORY
    assert large.sample_block < 100_000
    tight = planning.plan_fit(10_000, (512, 512), 3, 9, 6, memory_limit=64 * 2**20)
    assert tight.task_bytes <= 64 * 2**20


def test_prediction_tiles_are_whole_multiples_of_model_tiles():
    assert planning.prediction_tile_shape((512, 512), (32, 32)) == (128, 128)
    assert planning.prediction_tile_shape((512, 300), (64, 48)) == (128, 144)
    assert planning.prediction_tile_shape((40, 24), (16, 16)) == (40, 24)


def test_a_single_sample_block_needs_no_combine_memory():
    one = planning.plan_fit(
        200, (512, 512), 3, 7, 1, tile_shape=(64, 64), method="covariance"
    )
    many = planning.plan_fit(
        200, (512, 512), 3, 7, 1, tile_shape=(64, 64), sample_block=50,
        method="covariance",
    )  # fmt: skip
    assert len(one.blocks) == 1 and len(many.blocks) == 4
    assert one.task_bytes < many.task_bytes


@PROPERTY
@given(image_shape=shapes, tile_shape=st.tuples(sides, sides))
def test_tiles_cover_every_pixel_exactly_once(image_shape, tile_shape):
    height, width = image_shape
    th, tw = tile_shape
    tiles = planning.plan_tiles(image_shape, tile_shape)
    covered = np.zeros(image_shape, dtype=int)
    for tile in tiles:
        # inside the image and never empty (slicing would clip silently)
        assert 0 <= tile.y0 < tile.y1 <= height and 0 <= tile.x0 < tile.x1 <= width
        assert tile.shape[0] <= th and tile.shape[1] <= tw
        assert tile.pixels == tile.shape[0] * tile.shape[1]
        covered[tile.y0 : tile.y1, tile.x0 : tile.x1] += 1
    assert (covered == 1).all()
    assert sum(tile.pixels for tile in tiles) == height * width
    rows, cols = -(-height // th), -(-width // tw)
    assert [tile.index for tile in tiles] == [
        (ty, tx) for ty in range(rows) for tx in range(cols)
    ]  # row-major grid


@PROPERTY
@given(n=st.integers(min_value=0, max_value=5000), block=st.integers(1, 700))
def test_sample_blocks_cover_every_sample_once_in_order(n, block):
    blocks = planning.sample_blocks(n, block)
    covered = [i for start, stop in blocks for i in range(start, stop)]
    assert covered == list(range(n))  # each once, in order
    for start, stop in blocks:
        assert 1 <= stop - start <= block


# ------------------------------------------------------------------ dry runs


@pytest.mark.parametrize("blocks", [1, 2, 3, 4, 5, 8, 9])
def test_combine_trees_add_every_block_once(blocks):
    parts, combines = list(range(blocks)), 0
    while len(parts) > 1:  # as dmask.graph.training.tree_sum builds them
        groups = [
            parts[i : i + planning.COMBINE_FAN_IN]
            for i in range(0, len(parts), planning.COMBINE_FAN_IN)
        ]
        parts = [sum(group) for group in groups]
        combines += sum(len(group) > 1 for group in groups)  # one is carried up
    assert parts == [sum(range(blocks))]
    assert planning.tree_tasks(blocks) == combines
    # every combine adds two parts: one fewer part each
    assert planning.tree_tasks(blocks) == blocks - 1


@pytest.mark.parametrize("sample_block", [None, 7, 50])
@pytest.mark.parametrize("penalty", ["fixed", "loo"])
def test_graph_tasks_count_what_task_count_does(sample_block, penalty):
    plan = planning.plan_fit(
        200, (100, 70), 3, 5, 2, tile_shape=(32, 32), sample_block=sample_block
    )
    tasks = planning.graph_tasks(plan, 2, penalty)
    blocks, tiles = len(plan.blocks), len(plan.tiles)
    assert "read_images" not in tasks  # statistics and press tasks read
    assert tasks["sample_block_bounds"] == blocks
    # task_count ("about") counts a solve in every tile: exact for a fixed
    # penalty
    approximate = planning.task_count(plan, selecting=penalty == "loo")
    exact = sum(tasks.values()) - blocks
    if penalty == "fixed":
        assert exact == approximate
    else:
        assert -tiles <= exact - approximate <= tiles
    assert ("statistics_and_solve" in tasks) == (blocks == 1 and penalty == "fixed")
    unwritten = planning.graph_tasks(plan, 2, penalty, written=False)
    assert "write_tile" not in unwritten


def test_bounds_tasks_read_64_mib_of_whole_chunks_each():
    # 2048 x 2048 RGB uint8: 12.6 MB a sample, 5 samples a task
    sample = 2048 * 2048 * 3
    assert planning.bounds_block(sample) == 5
    halves = [range(200), range(200, 400)]
    assert planning.bounds_tasks(halves, 1, sample) == {
        "read_bounds": 80,
        "concat_bounds": 2,
    }
    # chunks of 25 samples: one chunk a task (not 5 tasks each decoding it all)
    assert planning.bounds_tasks(halves, 25, sample) == {
        "read_bounds": 16,
        "concat_bounds": 2,
    }
    assert planning.bounds_groups(range(10, 60), 25, sample) == [
        (0, 15),
        (15, 40),
        (40, 50),
    ]
    # small images: as many whole chunks as make 64 MiB
    assert planning.bounds_groups(range(100), 8, 2**20) == [(0, 64), (64, 100)]
    # a split's samples: each task's chunks are its own
    every_other = list(range(0, 100, 2))
    groups = planning.bounds_groups(every_other, 10, sample)
    assert groups == [(i, i + 5) for i in range(0, 50, 5)]
    assert planning.bounds_block(2**40) == 1
    assert planning.bounds_groups([], 4, sample) == []


def test_reads_decode_whole_chunks():
    plan = planning.plan_fit(8, (64, 64), 1, 1, 1, tile_shape=(16, 16), sample_block=4)
    indices = [range(8), range(8, 16)]
    store = (16, 64, 64, 1)
    once = 2 * 8 * 64 * 64
    aligned, bounds = planning.read_bytes(plan, 1, indices, store, (4, 16, 16, 1), 1)
    assert aligned == once and bounds == once
    # a halo of 1 reaches into the neighbouring chunks
    halo, _ = planning.read_bytes(plan, 3, indices, store, (4, 16, 16, 1), 1)
    assert once < halo < 9 * once
    # chunks of 8 samples: each block of 4 decodes 8
    wide, _ = planning.read_bytes(plan, 1, indices, store, (8, 16, 16, 1), 2)
    assert wide == 2 * 2 * once
    # whole-image chunks: every tile decodes the whole image
    whole, _ = planning.read_bytes(plan, 1, indices, store, (4, 64, 64, 1), 1)
    assert whole == 16 * once
    loo, _ = planning.read_bytes(plan, 1, indices, store, (4, 16, 16, 1), 1, "loo")
    assert loo == 2 * once


def test_model_bytes_are_the_weights_bias_and_penalties():
    assert planning.model_bytes((10, 20), 3, 25, 2) == 2 * 10 * 20 * 3 * 26 * 8
    assert planning.model_bytes((10, 20), 3, 25, 2, itemsize=4) == 2 * 600 * 26 * 4
    assert planning.model_bytes((10, 20), 3, 25, 2, 8, lam_map=True) == (
        2 * 600 * 27 * 8
    )


def test_operations_grow_with_samples_targets_and_field():
    flops = planning.statistics_flops
    base = flops((16, 16), 3, 3, 1, 100)
    assert flops((16, 16), 3, 3, 1, 200) == pytest.approx(2 * base)
    assert flops((16, 16), 3, 3, 2, 100) > base
    assert flops((16, 16), 3, 5, 1, 100) > base
    # r = 1: one displacement and one offset per pixel, plus the plain sums
    assert flops((4, 4), 1, 1, 1, 10) == 2 * 10 * (16 + 16 + 16)
    assert flops((16, 16), 1, 3, 1, 10, "covariance") > flops((16, 16), 1, 3, 1, 10)
    # Cholesky of each (k + 1) x (k + 1) system and one solve per target
    assert planning.solve_flops((2, 2), 1, 1, 1) == 4 * (8 / 3 + 8)
    assert planning.solve_flops((2, 2), 1, 3, 1, n_lams=5) > planning.solve_flops(
        (2, 2), 1, 3, 1
    )


RATES = planning.Rates(1e9, 1e9, 1e9, 1e8, 1e8, task_overhead=1e-9)


def _work(tiles: int = 64, blocks: int = 4) -> planning.FitWork:
    plan = planning.plan_fit(
        100, (16 * tiles, 16), 1, 3, 1, tile_shape=(16, 16),
        sample_block=-(-100 // blocks),
    )  # fmt: skip
    return planning.fit_work(
        plan, 1, 3, 1, [range(100), range(100, 200)], (200, 16 * tiles, 16, 1),
        (25, 16, 16, 1), 1,
    )  # fmt: skip


def test_estimates_divide_the_work_until_the_scheduler_bounds_them():
    work = _work()
    one = planning.estimate_seconds(work, RATES, 1)
    four = planning.estimate_seconds(work, RATES, 2, threads_per_worker=2)
    assert four["fit_wall"] == pytest.approx(one["fit_wall"] / 4)
    assert one["statistics"] == pytest.approx(work.statistics_flops / 1e9)
    assert one["read"] == pytest.approx(work.read_bytes / 1e8)
    assert one["total"] == pytest.approx(one["bounds_wall"] + one["fit_wall"])
    # with more threads than statistics tasks the extra ones idle
    many = planning.estimate_seconds(work, RATES, 10_000)
    assert many["fit_wall"] == pytest.approx(one["fit_wall"] / work.tasks["statistics"])
    slow = planning.Rates(1e9, 1e9, 1e9, 1e8, 1e8, task_overhead=1.0)
    assert planning.estimate_seconds(work, slow, 1)["fit_wall"] == sum(
        work.tasks.values()
    )
    with pytest.raises(planning.InputError):
        planning.estimate_seconds(work, RATES, 0)


def test_rates_are_checked():
    values = {name: 1.0 for name in planning.Rates.names()}
    assert planning.Rates.from_dict(values).task_overhead == 1.0
    del values["task_overhead"]
    assert planning.Rates.from_dict(values).task_overhead == planning.TASK_OVERHEAD
    assert planning.Rates.from_dict({"solve_flops": 5.0}, RATES).solve_flops == 5.0
    for bad in ({"x": 1}, {"solve_flops": 0}, {"solve_flops": "fast"}, {}):
        with pytest.raises(planning.InputError):
            planning.Rates.from_dict({**values, **bad} if bad != {} else {})


def test_plan_for_workers_is_the_fits_plan_on_such_workers():
    gib = 2**30
    plan = planning.plan_for_workers(1000, (512, 512), 3, 7, 6, 4 * gib)
    assert plan == planning.plan_fit(
        1000, (512, 512), 3, 7, 6, memory_limit=int(0.4 * 4 * gib)
    )
    small = planning.plan_for_workers(1000, (512, 512), 3, 7, 6, 100 * 2**20)
    assert small == planning.plan_fit(
        1000, (512, 512), 3, 7, 6, memory_limit=80 * 2**20
    )
    joint = planning.plan_for_workers(10, (32, 32), 3, 3, 1, gib, method="joint")
    assert joint.method == "joint"
    with pytest.raises(planning.InputError, match="max-tasks"):
        planning.plan_for_workers(
            10, (512, 512), 1, 3, 1, gib, tile_shape=(8, 8), max_tasks=100
        )
    parts = planning.task_memory_parts(plan, 3, 7, 6)
    assert parts["peak"] == plan.task_bytes
    assert parts["input"] > 0 and parts["weights"] == 8 * 6 * 64 * 64 * 3 * 50
