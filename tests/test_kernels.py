"""Numerical kernels against the slow per-pixel reference."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import random_pairs
from reference import reference_fit, reference_predict

from dmask import compiled, kernels


def _fit_whole(sources, targets, field, lam, method="displacement", side=16):
    b = field // 2
    height, width = sources.shape[1:3]
    halo = np.pad(sources, ((0, 0), (b, b), (b, b), (0, 0)))
    stats = kernels.tile_statistics(halo, targets[None], field, method, side)
    validity = kernels.window_validity(0, 0, height, width, (height, width), field)
    weights, bias = kernels.solve_tile(stats, field, lam, validity)
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
    np.testing.assert_allclose(weights, ref_w, rtol=0, atol=1e-8 * scale)
    np.testing.assert_allclose(bias, ref_b, rtol=0, atol=1e-8 * scale)
    predicted = kernels.apply_tile(halo, weights[None], bias[None], field)[0]
    expected = reference_predict(sources, ref_w, ref_b, field)
    np.testing.assert_allclose(predicted, expected, rtol=1e-10, atol=1e-8)


def test_out_of_image_weights_are_exactly_zero(rng):
    sources, targets = random_pairs(rng, 5, 5, 6, 1)
    _, weights, _ = _fit_whole(sources, targets, 5, 0.4)
    assert np.all(weights[0, 0, 0].reshape(5, 5)[:2, :] == 0)
    assert np.all(weights[-1, -1, 0].reshape(5, 5)[:, 3:] == 0)
    assert np.all(weights[2, 2, 0] != 0)


def test_statistics_add_over_sample_blocks(rng):
    sources, targets = random_pairs(rng, 10, 5, 7, 2)
    halo = np.pad(sources, ((0, 0), (1, 1), (1, 1), (0, 0)))
    whole = kernels.tile_statistics(halo, targets[None], 3)
    parts = kernels.tile_statistics(halo[:4], targets[None, :4], 3) + (
        kernels.tile_statistics(halo[4:], targets[None, 4:], 3)
    )
    assert parts.count == whole.count == 10
    np.testing.assert_allclose(parts.pair_sums, whole.pair_sums, rtol=1e-13)
    np.testing.assert_allclose(parts.cross_sums, whole.cross_sums, rtol=1e-13)


def test_displacements_cover_every_offset_pair():
    for field in (1, 3, 5):
        deltas = set(kernels.displacements(field))
        assert len(deltas) == ((2 * field - 1) ** 2 + 1) // 2
        offsets = kernels.window_offsets(field)
        for a in offsets:
            for b in offsets:
                d = tuple(int(v) for v in b - a)
                assert d in deltas or tuple(-v for v in d) in deltas


def test_minmax_parameters_constant_image():
    images = np.stack([np.full((3, 3, 1), 7.0), np.arange(9.0).reshape(3, 3, 1)])
    low, scale = kernels.minmax_parameters(images)
    assert scale[0] == 0 and low[1] == 0 and scale[1] == pytest.approx(1 / 8)
    normalized = kernels.normalize_block(images, low, scale)
    assert normalized.min() == 0 and normalized.max() == 1


def test_unknown_method_is_refused(rng):
    sources, targets = random_pairs(rng, 3, 4, 4, 1)
    with pytest.raises(ValueError, match="unknown statistics method"):
        kernels.tile_statistics(sources, targets[None, :, 1:3, 1:3], 3, "magic")


@pytest.mark.parametrize("field", [3, 5])
def test_indefinite_systems_fall_back_to_lu(rng, field, backend):
    # Fewer samples than unknowns and a negative penalty: indefinite Gram
    # matrices, which Cholesky refuses and LU still solves.
    sources, targets = random_pairs(rng, 4, 5, 6, 2)
    _, weights, bias = _fit_whole(sources, targets, field, -0.3)
    ref_w, ref_b = reference_fit(sources, targets, field, -0.3)
    scale = np.abs(ref_w).max() + np.abs(ref_b).max()
    np.testing.assert_allclose(weights, ref_w, rtol=0, atol=1e-8 * scale)
    np.testing.assert_allclose(bias, ref_b, rtol=0, atol=1e-8 * scale)


@pytest.mark.parametrize("size", [2, 9, 17, 40])
def test_solve_spd_mixed_batch(rng, size, backend):
    factors = rng.random((5, size, size + 3))
    gram = factors @ factors.transpose(0, 2, 1) + 0.1 * np.eye(size)
    gram[2] -= 50 * np.eye(size)  # indefinite, not singular
    rhs = rng.random((5, size, 3))
    before = gram.copy(), rhs.copy()
    solution = kernels.solve_spd(gram, rhs)
    np.testing.assert_allclose(solution, np.linalg.solve(gram, rhs), rtol=1e-9)
    np.testing.assert_array_equal(gram, before[0])
    np.testing.assert_array_equal(rhs, before[1])


@pytest.mark.skipif(not compiled.AVAILABLE, reason="numba is not installed")
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
def test_compiled_samples_last_matches_numpy(rng, dtype, monkeypatch):
    raw = (rng.random((11, 6, 7, 3)) * 200).astype(dtype)[:, 1:, 2:]
    low, high = kernels.sample_bounds(raw)
    scale = kernels.minmax_scale(low, high)
    padding = ((1, 2), (0, 3))
    fast = compiled.to_samples_last(raw, low, scale, padding)
    monkeypatch.setenv("DMASK_KERNELS", "numpy")
    slow = kernels.samples_last(raw, low, scale, padding)
    np.testing.assert_array_equal(fast, slow)
