"""Sparse slots against plain loops: CSR rows in and out, and the sparse product."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from helpers import TIGHT

from dmask.core import sparse


def random_rows(rng, d: int, most: int) -> sp.csr_matrix:
    """A CSR ``d x (d + 1)``: 0..most entries per row, some explicit zeros, a bias."""
    rows, cols, values = [], [], []
    for row in range(d):
        count = int(rng.integers(0, most + 1))
        for col in rng.choice(d, size=count, replace=False):
            rows.append(row)
            cols.append(int(col))
            values.append(0.0 if rng.random() < 0.1 else float(rng.normal()))
        if rng.random() < 0.8:
            rows.append(row)
            cols.append(d)
            values.append(float(rng.normal()))
    matrix = sp.csr_matrix((values, (rows, cols)), shape=(d, d + 1))
    matrix.sort_indices()
    return matrix


@pytest.mark.parametrize("d, most", [(1, 1), (12, 3), (35, 6)])
def test_slots_from_csr_by_loops(rng, d, most):
    matrix = random_rows(rng, d, most)
    index, weight, bias = sparse.slots_from_csr(matrix)
    dense = matrix.toarray()
    for row in range(d):
        start, stop = matrix.indptr[row], matrix.indptr[row + 1]
        entries = [
            (int(c), float(v))
            for c, v in zip(
                matrix.indices[start:stop], matrix.data[start:stop], strict=True
            )
            if c != d
        ]
        used = [
            (int(i), float(w))
            for i, w in zip(index[row], weight[row], strict=True)
            if i >= 0
        ]
        assert used == entries
        assert all(
            w == 0 for i, w in zip(index[row], weight[row], strict=True) if i < 0
        )
        assert bias[row] == dense[row, d]
    back = sparse.slots_to_csr(index, weight, bias)
    np.testing.assert_array_equal(back.toarray(), dense)
    # stored entries are kept (explicit zeros too), and every row's bias
    assert back.nnz == int(np.sum(matrix.indices != d)) + d


def test_slots_refuse_a_row_wider_than_asked(rng):
    matrix = random_rows(rng, 10, 4)
    widest = int(np.max(np.diff(matrix.indptr)))
    with pytest.raises(ValueError, match="slots"):
        sparse.slots_from_csr(matrix, slots=widest - 2)
    index, _, _ = sparse.slots_from_csr(matrix, slots=widest + 3)
    assert index.shape == (10, widest + 3)


def loop_apply(images, index, weight, bias):
    """``(T, N, h, w, C)``: every output value as its sum, one slot at a time."""
    n = images.shape[0]
    t_count, h, w, channels, slots = weight.shape
    out = np.zeros((t_count, n, h, w, channels))
    for t in range(t_count):
        for s in range(n):
            flat = images[s].reshape(-1)
            for y in range(h):
                for x in range(w):
                    for c in range(channels):
                        total = bias[t, y, x, c]
                        for k in range(slots):
                            i = index[t, y, x, c, k]
                            if i >= 0:
                                total += weight[t, y, x, c, k] * flat[i]
                        out[t, s, y, x, c] = total
    return out


@pytest.mark.parametrize("shape", [(5, 7, 1), (6, 4, 3)])
@pytest.mark.parametrize("slots", [1, 4])
def test_apply_sparse_by_loops(rng, shape, slots):
    height, width, channels = shape
    values = height * width * channels
    images = rng.random((3, *shape))
    index = rng.integers(-1, values, size=(2, height, width, channels, slots))
    weight = rng.normal(size=index.shape) * (index >= 0)
    bias = rng.normal(size=index.shape[:-1])
    got = sparse.apply_sparse(images, index, weight, bias)
    np.testing.assert_allclose(
        got, loop_apply(images, index, weight, bias), rtol=0, atol=TIGHT
    )
    # a tile of outputs (rows 1..3, columns 0..2) from the whole images
    part = (slice(None), slice(1, 3), slice(0, 2))
    tile = sparse.apply_sparse(images, index[part], weight[part], bias[part])
    np.testing.assert_array_equal(tile, got[:, :, 1:3, 0:2])


def test_slot_maps_by_loops(rng):
    height, width, channels, slots = 5, 6, 2, 3
    values = height * width * channels
    index = rng.integers(-1, values, size=(height, width, channels, slots))
    index[1, 2, 1, 0] = (1 * width + 2) * channels + 1  # reads itself
    weight = rng.normal(size=index.shape) * (index >= 0)
    own, elsewhere, distance = sparse.slot_maps(index, weight, width, channels, 1)
    for y in range(height):
        for x in range(width):
            o = e = moment = 0.0
            for s in range(slots):
                i = int(index[y, x, 1, s])
                if i < 0:
                    continue
                w = float(weight[y, x, 1, s])
                if i == (y * width + x) * channels + 1:
                    o += w
                else:
                    e += abs(w)
                pixel = i // channels
                moment += abs(w) * max(abs(pixel // width - y), abs(pixel % width - x))
            total = sum(
                abs(float(weight[y, x, 1, s]))
                for s in range(slots)
                if index[y, x, 1, s] >= 0
            )
            assert own[y, x] == pytest.approx(o, abs=TIGHT)
            assert elsewhere[y, x] == pytest.approx(e, abs=TIGHT)
            assert distance[y, x] == pytest.approx(moment / total if total else 0.0)
    assert own[1, 2] != 0


def test_slot_reach_by_loops(rng):
    height, width, channels = 4, 7, 3
    index = rng.integers(
        -1, height * width * channels, size=(2, height, width, channels, 2)
    )
    reach = 0
    for t in range(2):
        for y in range(height):
            for x in range(width):
                for c in range(channels):
                    for i in index[t, y, x, c]:
                        if i >= 0:
                            pixel = int(i) // channels
                            dy, dx = abs(pixel // width - y), abs(pixel % width - x)
                            reach = max(reach, dy, dx)
    assert sparse.slot_reach(index, height, width, channels) == reach
    assert sparse.slot_reach(np.full((1, 2, 2, 1, 1), -1), 2, 2, 1) == 0
