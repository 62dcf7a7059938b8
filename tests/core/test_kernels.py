"""Numerical kernels against the slow per-pixel reference."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import (
    EXACT,
    REFERENCE,
    ROUNDOFF,
    SOLVER,
    TIGHT,
    assert_model_close,
    random_pairs,
)
from reference import reference_fit, reference_predict

from dmask.core import (
    _engine,
    cholesky,
    displacement,
    forward,
    methods,
    minmax,
    windows,
)


def _fit_whole(sources, targets, field, lam, method="displacement", side=16):
    b = field // 2
    height, width = sources.shape[1:3]
    halo = np.pad(sources, ((0, 0), (b, b), (b, b), (0, 0)))
    stats = methods.tile_statistics(halo, targets[None], field, method, side)
    validity = windows.window_validity(0, 0, height, width, (height, width), field)
    weights, bias = methods.solve_tile(stats, field, lam, validity)
    return halo, weights[0], bias[0]


@pytest.mark.parametrize(
    ("method", "side"), [("displacement", 16), ("covariance", 16), ("covariance", 4)]
)
@pytest.mark.parametrize("field", [1, 3, 5, 7])
@pytest.mark.parametrize("shape", [(6, 9, 1), (9, 5, 3), (4, 4, 2)])
def test_solve_matches_reference(rng, field, shape, method, side, backend):
    sources, targets = random_pairs(rng, 12, *shape)
    halo, weights, bias = _fit_whole(sources, targets, field, 0.4, method, side)
    ref_w, ref_b = reference_fit(sources, targets, field, 0.4)
    scale = np.abs(ref_w).max() + np.abs(ref_b).max()
    assert_model_close((weights, bias), (ref_w, ref_b), atol=REFERENCE * scale)
    predicted = forward.apply_tile(halo, weights[None], bias[None], field)[0]
    expected = reference_predict(sources, ref_w, ref_b, field)
    np.testing.assert_allclose(predicted, expected, rtol=EXACT, atol=REFERENCE)


def test_out_of_image_weights_are_exactly_zero(rng):
    sources, targets = random_pairs(rng, 5, 5, 6, 1)
    _, weights, _ = _fit_whole(sources, targets, 5, 0.4)
    assert np.all(weights[0, 0, 0].reshape(5, 5)[:2, :] == 0)
    assert np.all(weights[-1, -1, 0].reshape(5, 5)[:, 3:] == 0)
    assert np.all(weights[2, 2, 0] != 0)


def test_statistics_add_over_sample_blocks(rng):
    sources, targets = random_pairs(rng, 10, 5, 7, 2)
    halo = np.pad(sources, ((0, 0), (1, 1), (1, 1), (0, 0)))
    whole = methods.tile_statistics(halo, targets[None], 3)
    parts = methods.tile_statistics(halo[:4], targets[None, :4], 3) + (
        methods.tile_statistics(halo[4:], targets[None, 4:], 3)
    )
    assert parts.count == whole.count == 10
    np.testing.assert_allclose(parts.pair_sums, whole.pair_sums, rtol=ROUNDOFF)
    np.testing.assert_allclose(parts.cross_sums, whole.cross_sums, rtol=ROUNDOFF)


def test_displacements_cover_every_offset_pair():
    for field in (1, 3, 5):
        deltas = set(windows.displacements(field))
        assert len(deltas) == ((2 * field - 1) ** 2 + 1) // 2
        offsets = windows.window_offsets(field)
        for a in offsets:
            for b in offsets:
                d = tuple(int(v) for v in b - a)
                assert d in deltas or tuple(-v for v in d) in deltas


def test_minmax_parameters_constant_image():
    images = np.stack([np.full((3, 3, 1), 7.0), np.arange(9.0).reshape(3, 3, 1)])
    low, scale = minmax.minmax_parameters(images)
    assert scale[0] == 0 and low[1] == 0 and scale[1] == pytest.approx(1 / 8)
    normalized = minmax.normalize_block(images, low, scale)
    assert normalized.min() == 0 and normalized.max() == 1


def test_unknown_method_is_refused(rng):
    sources, targets = random_pairs(rng, 3, 4, 4, 1)
    with pytest.raises(ValueError, match="unknown statistics method"):
        methods.tile_statistics(sources, targets[None, :, 1:3, 1:3], 3, "magic")


@pytest.mark.parametrize("field", [3, 5])
def test_indefinite_systems_fall_back_to_lu(rng, field, backend):
    # Fewer samples than unknowns and a negative penalty: indefinite Gram
    # matrices, which Cholesky refuses and LU still solves.
    sources, targets = random_pairs(rng, 4, 5, 6, 2)
    _, weights, bias = _fit_whole(sources, targets, field, -0.3)
    ref_w, ref_b = reference_fit(sources, targets, field, -0.3)
    scale = np.abs(ref_w).max() + np.abs(ref_b).max()
    assert_model_close((weights, bias), (ref_w, ref_b), atol=REFERENCE * scale)


@pytest.mark.parametrize("size", [2, 9, 17, 40])
def test_solve_spd_mixed_batch(rng, size, backend):
    factors = rng.random((5, size, size + 3))
    gram = factors @ factors.transpose(0, 2, 1) + 0.1 * np.eye(size)
    gram[2] -= 50 * np.eye(size)  # indefinite, not singular
    rhs = rng.random((5, size, 3))
    before = gram.copy(), rhs.copy()
    solution = cholesky.solve_spd(gram, rhs)
    np.testing.assert_allclose(solution, np.linalg.solve(gram, rhs), rtol=SOLVER)
    np.testing.assert_array_equal(gram, before[0])
    np.testing.assert_array_equal(rhs, before[1])


def _loop_statistics(halo, targets, field):
    """Displacement statistics by their definition, one pixel at a time."""
    _, hh, ww, channels = halo.shape
    n_targets, _, h, w, _ = targets.shape
    deltas = windows.displacements(field)
    pair = np.zeros((len(deltas), hh, ww, channels))
    for d, (dy, dx) in enumerate(deltas):
        for y in range(hh):
            for x in range(ww):
                if y + dy < hh and 0 <= x + dx < ww:
                    pair[d, y, x] = (halo[:, y, x] * halo[:, y + dy, x + dx]).sum(0)
    offsets = windows.window_offsets(field) + field // 2
    cross = np.zeros((n_targets, len(offsets), h, w, channels))
    for t in range(n_targets):
        for a, (oy, ox) in enumerate(offsets):
            for y in range(h):
                for x in range(w):
                    cross[t, a, y, x] = (
                        halo[:, y + oy, x + ox] * targets[t, :, y, x]
                    ).sum(0)
    return pair, halo.sum(0), cross, targets.sum(1), (targets**2).sum(1)


@pytest.mark.parametrize("field", [1, 3, 5, 7])
@pytest.mark.parametrize(
    ("shape", "padding"),
    [
        ((7, 9, 1), ((1, 1), (1, 1))),
        ((6, 11, 3), ((0, 2), (2, 0))),
        ((9, 5, 2), ((2, 0), (0, 0))),
    ],
)
def test_raw_displacement_statistics_match_loops(rng, field, shape, padding, backend):
    # A tile of ``shape`` whose raw window is cut from a larger image, zero
    # padding on some sides only (a tile at a border), min-max parameters per
    # sample, two targets.
    b = field // 2
    (top, bottom), (left, right) = padding
    n, h, w, channels = 9, *shape
    pad = ((min(top, b), min(bottom, b)), (min(left, b), min(right, b)))
    height = h + 2 * b - sum(pad[0])
    width = w + 2 * b - sum(pad[1])
    raw = (rng.random((n, height + 2, width + 3, channels)) * 250).astype(np.uint8)
    raw = raw[:, 1 : 1 + height, 2 : 2 + width]
    targets = [
        (rng.random((n, h, w, channels)) * 60000).astype(np.uint16) for _ in range(2)
    ]
    low, high = minmax.sample_bounds(raw)
    source_params = (low, minmax.minmax_scale(low, high))
    target_params = [(None, None), (np.full(n, 3.0), np.full(n, 1 / 60000))]
    stats = displacement.raw_displacement_statistics(
        raw, targets, source_params, target_params, pad, field, squares=True
    )
    halo = np.pad(minmax.normalize_block(raw, *source_params), ((0, 0), *pad, (0, 0)))
    normalised = np.stack(
        [
            minmax.normalize_block(t, *p)
            for t, p in zip(targets, target_params, strict=True)
        ]
    )
    expected = _loop_statistics(halo, normalised, field)
    got = (
        stats.pair_sums,
        stats.sums,
        stats.cross_sums,
        stats.target_sums,
        stats.target_squares,
    )
    for value, reference in zip(got, expected, strict=True):
        np.testing.assert_allclose(value, reference, rtol=TIGHT, atol=SOLVER)
    assert stats.count == n


def _tile_solver_args(rng, field, n, height, width):
    """``solve_displacement_tile``'s arguments (up to lambda) for random pairs
    of ``n`` two-channel images of ``height x width``."""
    sources, targets = random_pairs(rng, n, height, width, 2)
    b = field // 2
    halo = np.pad(sources, ((0, 0), (b, b), (b, b), (0, 0)))
    stats = methods.tile_statistics(halo, targets[None], field)
    return (
        stats.pair_sums, stats.sums, stats.cross_sums, stats.target_sums, stats.count,
        displacement._gram_table(field), windows.window_offsets(field) + b,
    )  # fmt: skip


@pytest.mark.skipif(not _engine.AVAILABLE, reason="numba is not installed")
@pytest.mark.parametrize("field", [3, 5])
def test_lane_solver_equals_one_at_a_time(rng, field):
    # Systems solved eight at a time, one per vector lane, give the bits of the
    # one-at-a-time Cholesky (r = 3) and flag lanes whose pivot is not
    # positive; a row of 13 pixels leaves five lanes of the second group idle.
    args = _tile_solver_args(rng, field, 30, 6, 13)
    lanes, ok = _engine.solve_displacement_tile(*args, 0.4)
    assert ok.all()
    if field == 3:
        single, _ = _engine.solve_displacement_tile(*args, 0.4, lanes=False)
        np.testing.assert_array_equal(lanes, single)
    _, ok = _engine.solve_displacement_tile(*args, -5.0)
    assert not ok.all()


def _spd_stack(rng, count, size, rhs=3):
    factors = rng.random((count, size, size + 5)) - 0.5
    gram = factors @ factors.transpose(0, 2, 1) + 0.5 * np.eye(size)
    return gram, rng.random((count, size, rhs)) - 0.5


@pytest.mark.skipif(not _engine.AVAILABLE, reason="numba is not installed")
@pytest.mark.parametrize("size", [10, 26, 50, 122])
def test_lane_cholesky_equals_one_system_at_a_time(rng, size):
    # 11 systems: a full group of lanes and one of three with five idle lanes.
    gram, rhs = _spd_stack(rng, 11, size)
    lanes, single = rhs.copy(), rhs.copy()
    assert _engine.cholesky_solve(gram, lanes, lanes=True).all()
    assert _engine.cholesky_solve(gram, single, lanes=False).all()
    scale = np.abs(single).max()
    np.testing.assert_allclose(lanes, single, rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(gram @ lanes, rhs, rtol=0, atol=1e-9)
    if size <= _engine.SMALL_SYSTEM:  # the inlined Cholesky: the same order
        np.testing.assert_array_equal(lanes, single)


@pytest.mark.skipif(not _engine.AVAILABLE, reason="numba is not installed")
@pytest.mark.parametrize("size", [10, 50])
def test_lane_cholesky_bits_do_not_depend_on_the_lane(rng, size):
    gram, rhs = _spd_stack(rng, _engine.LANES, size, rhs=2)
    alone = rhs.copy()
    assert _engine.cholesky_solve(gram, alone, lanes=True).all()
    for shift in range(1, _engine.LANES + 3):
        order = np.roll(np.arange(len(gram)), shift)
        padded = np.concatenate([gram[:1]] * (shift // _engine.LANES) + [gram[order]])
        moved = np.concatenate([rhs[:1]] * (shift // _engine.LANES) + [rhs[order]])
        assert _engine.cholesky_solve(padded, moved, lanes=True).all()
        np.testing.assert_array_equal(moved[len(moved) - len(gram) :], alone[order])


@pytest.mark.skipif(not _engine.AVAILABLE, reason="numba is not installed")
@pytest.mark.parametrize("size", [10, 26, 50])
def test_lane_cholesky_flags_and_falls_back(rng, size):
    # One indefinite system among positive definite ones: only its lane is
    # flagged and left unsolved, and solve_spd still solves it (by LU).
    gram, rhs = _spd_stack(rng, 9, size)
    gram[3] -= 100 * np.eye(size)
    solved = rhs.copy()
    ok = _engine.cholesky_solve(gram, solved, lanes=True)
    assert ok.tolist() == [i != 3 for i in range(9)]
    np.testing.assert_array_equal(solved[3], rhs[3])
    good = np.arange(9) != 3
    np.testing.assert_allclose(
        solved[good], np.linalg.solve(gram[good], rhs[good]), rtol=0, atol=1e-9
    )
    full = cholesky.solve_spd(gram, rhs)
    np.testing.assert_allclose(full, np.linalg.solve(gram, rhs), rtol=1e-9, atol=1e-9)


@pytest.mark.skipif(not _engine.AVAILABLE, reason="numba is not installed")
@pytest.mark.parametrize("field", [7, 9])
def test_block_lane_tile_solver_equals_one_at_a_time(rng, field):
    # The register-blocked lanes (k + 1 > LANE_SYSTEM) against LAPACK one
    # system at a time; a row of 7 pixels leaves a group with one idle lane.
    args = _tile_solver_args(rng, field, 120, 3, 7)
    lanes, ok = _engine.solve_displacement_tile(*args, 0.4, lanes=True)
    single, ok_single = _engine.solve_displacement_tile(*args, 0.4, lanes=False)
    assert ok.all() and ok_single.all()
    scale = np.abs(single).max()
    np.testing.assert_allclose(lanes, single, rtol=0, atol=1e-12 * scale)
    # The same pixels one column further on land in other lanes: same bits.
    shifted_args = (
        args[0][:, :, 1:], args[1][:, 1:], args[2][..., 1:, :],
        args[3][..., 1:, :], args[4], *args[5:],
    )  # fmt: skip
    moved, _ = _engine.solve_displacement_tile(*shifted_args, 0.4, lanes=True)
    np.testing.assert_array_equal(moved, lanes[:, 1:])


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32", "float64"])
@pytest.mark.parametrize("field", [1, 3, 5, 7])
@pytest.mark.parametrize("shape", [(5, 9, 3), (7, 4, 1), (6, 6, 2)])
def test_predict_block_matches_reference_on_tiles(rng, field, shape, dtype, backend):
    """Tiles of a raw, unpadded image block with per-image min-max: the
    compiled forward pass and numpy's against the per-pixel loop, each tile
    reading its halo as it lies inside the image (borders padded by zeros)."""
    height, width, channels = shape
    n, targets, b = 4, 2, field // 2
    raw = rng.random((n, height, width, channels)) * 250
    raw = raw.astype(dtype)
    low, scale = minmax.minmax_parameters(raw)
    weights = rng.standard_normal((targets, height, width, channels, field * field))
    bias = rng.standard_normal((targets, height, width, channels))
    normalised = minmax.normalize_block(raw, low, scale)
    expected = np.stack(
        [reference_predict(normalised, weights[t], bias[t], field) for t in range(2)]
    )
    out = np.empty_like(expected)
    for y0, y1 in ((0, 2), (2, height)):
        for x0, x1 in ((0, 3), (3, width)):
            r0, r1 = max(0, y0 - b), min(height, y1 + b)
            c0, c1 = max(0, x0 - b), min(width, x1 + b)
            padding = ((r0 - (y0 - b), y1 + b - r1), (c0 - (x0 - b), x1 + b - c1))
            out[:, :, y0:y1, x0:x1] = forward.predict_block(
                raw[:, r0:r1, c0:c1],
                low,
                scale,
                padding,
                weights[:, y0:y1, x0:x1],
                bias[:, y0:y1, x0:x1],
                field,
            )
    np.testing.assert_allclose(out, expected, rtol=EXACT, atol=REFERENCE)


def test_compiled_forward_pass_is_numpy_bit_for_bit(rng):
    """The compiled kernel does numpy's operations in numpy's order."""
    if not _engine.AVAILABLE:
        pytest.skip("numba is not installed")
    import dmask

    raw = (rng.random((3, 11, 10, 3)) * 255).astype(np.uint8)
    low, scale = minmax.minmax_parameters(raw)
    weights = rng.standard_normal((1, 9, 8, 3, 9))
    bias = rng.standard_normal((1, 9, 8, 3))
    runs = {}
    for kernels in ("numba", "numpy"):
        with dmask.set_options(kernels=kernels):
            runs[kernels] = forward.predict_block(
                raw[:, :, :8], low, scale, ((0, 0), (1, 1)), weights, bias, 3
            )
    np.testing.assert_array_equal(runs["numba"], runs["numpy"])
