"""Planning: tiles, sample blocks, prediction tiles and the memory a task needs."""

from __future__ import annotations

import numpy as np
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
