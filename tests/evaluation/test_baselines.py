"""The paper's baselines against slow, obviously right references."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import EXACT, LOOSE, REORDERED, SOLVER
from sklearn.linear_model import Lasso, LassoLars, OrthogonalMatchingPursuit

from dmask.errors import InputError
from dmask.evaluation import baselines, pixelwise


def _data(rng, n, d, n_test=4):
    x = rng.random((n + n_test, d))
    y = 0.5 * x + 0.3 * np.roll(x, 1, axis=1) + 0.1 * rng.random((n + n_test, d))
    return x[:n], y[:n], x[n:]


def _reference_ridge(x, y, lam):
    """One ridge problem per output pixel: the normal equations, bias in A."""
    a = np.hstack([x, np.ones((x.shape[0], 1))])
    gram = a.T @ a + lam * np.eye(a.shape[1])
    return np.stack(
        [np.linalg.solve(gram, a.T @ y[:, j]) for j in range(y.shape[1])], axis=1
    )


def _augment(x):
    return np.hstack([x, np.ones((x.shape[0], 1))])


@pytest.mark.parametrize("n, d", [(5, 12), (30, 6)])
def test_full_ridge_dual_primal_and_reference_agree(rng, n, d):
    x, y, x_test = _data(rng, n, d)
    expected = _reference_ridge(x, y, 0.4)
    auto = baselines.FullRidge(0.4).fit(x, y)
    assert auto.solved_dual_ == (n < d + 1)
    for form in ("auto", "primal", "dual"):
        model = baselines.FullRidge(0.4, form=form).fit(x, y)
        np.testing.assert_allclose(
            model.weights(), expected, rtol=SOLVER, atol=REORDERED
        )
        np.testing.assert_allclose(
            model.predict(x_test),
            _augment(x_test) @ expected,
            rtol=SOLVER,
            atol=REORDERED,
        )
        assert model.n_parameters == d * (d + 1)


def test_full_ridge_penalises_the_bias(rng):
    # Constant targets and zero inputs: only the bias can fit, and it shrinks.
    x = np.zeros((4, 3))
    y = np.ones((4, 3))
    model = baselines.FullRidge(lam=4.0).fit(x, y)
    np.testing.assert_allclose(model.predict(np.zeros((1, 3))), 0.5)  # 4 / (4 + 4)


@pytest.mark.parametrize("n, d", [(6, 10), (25, 5)])
def test_reduced_rank_full_rank_is_full_ridge(rng, n, d):
    x, y, x_test = _data(rng, n, d)
    full = baselines.FullRidge(0.4).fit(x, y)
    reduced = baselines.ReducedRankRidge(0.4, rank=min(n, d)).fit(x, y)
    np.testing.assert_allclose(reduced.weights(), full.weights(), atol=EXACT)
    np.testing.assert_allclose(
        reduced.predict(x_test), full.predict(x_test), atol=EXACT
    )


@pytest.mark.parametrize("n, d", [(6, 10), (25, 5)])
def test_reduced_rank_projects_onto_top_output_directions(rng, n, d):
    x, y, x_test = _data(rng, n, d)
    w = _reference_ridge(x, y, 0.4)
    _, _, vt = np.linalg.svd(_augment(x) @ w)
    p = vt[:2].T
    model = baselines.ReducedRankRidge(0.4, rank=2).fit(x, y)
    np.testing.assert_allclose(model.weights(), w @ p @ p.T, atol=EXACT)
    assert np.linalg.matrix_rank(model.weights()) == 2
    assert np.linalg.matrix_rank(model.predict(x_test)) == 2
    assert model.n_parameters == 2 * (d + 1) + 2 * d


def test_reduced_rank_clips_rank_to_the_data(rng):
    x, y, _ = _data(rng, 4, 7)
    model = baselines.ReducedRankRidge(0.4, rank=50).fit(x, y)
    assert model.rank_ == 4


@pytest.mark.parametrize("gamma", [None, 0.3])
def test_kernel_ridge_matches_the_direct_formula(rng, gamma):
    x, y, x_test = _data(rng, 7, 5)
    g = 1.0 / (x.shape[1] * x.var()) if gamma is None else gamma

    def k(a, b):
        return np.array([[np.exp(-g * np.sum((ai - bj) ** 2)) for bj in b] for ai in a])

    mean = y.mean(axis=0)
    alpha = np.linalg.solve(k(x, x) + 0.4 * np.eye(len(x)), y - mean)
    model = baselines.KernelRidge(0.4, gamma=gamma).fit(x, y)
    assert model.gamma_ == pytest.approx(g)
    np.testing.assert_allclose(
        model.predict(x_test), k(x_test, x) @ alpha + mean, rtol=EXACT
    )
    assert model.n_parameters == 7 * 5 + 5


def test_lasso_is_sklearn_per_pixel_and_splits(rng):
    x, y, x_test = _data(rng, 8, 10)
    model = pixelwise.PixelLasso(alpha=0.002).fit(x, y)
    for j in range(y.shape[1]):
        one = LassoLars(alpha=0.002, fit_intercept=True).fit(x, y[:, j])
        np.testing.assert_allclose(model.coef_[[j]].toarray()[0], one.coef_, atol=EXACT)
        assert model.intercept_[j] == pytest.approx(one.intercept_, abs=EXACT)
        np.testing.assert_allclose(
            model.predict(x_test)[:, j], one.predict(x_test), atol=EXACT
        )
    assert model.n_parameters == model.coef_.nnz + y.shape[1]
    parts = [
        pixelwise.PixelLasso(alpha=0.002).fit(x, y, pixels=np.arange(0, 4)),
        pixelwise.PixelLasso(alpha=0.002).fit(x, y, pixels=np.arange(4, 10)),
    ]
    joined = pixelwise.PixelLasso.concatenate(parts)
    np.testing.assert_array_equal(joined.pixels_, np.arange(10))
    np.testing.assert_allclose(joined.predict(x_test), model.predict(x_test))
    np.testing.assert_allclose(
        np.hstack([p.predict(x_test) for p in parts]), model.predict(x_test)
    )


def test_lasso_solves_the_lasso_problem(rng):
    # Well conditioned (N > d): coordinate descent's solution is the same one.
    x, y, _ = _data(rng, 60, 5)
    model = pixelwise.PixelLasso(alpha=0.001).fit(x, y)
    for j in range(y.shape[1]):
        cd = Lasso(alpha=0.001, tol=1e-12, max_iter=100_000).fit(x, y[:, j])
        np.testing.assert_allclose(model.coef_[[j]].toarray()[0], cd.coef_, atol=LOOSE)


def test_omp_is_sklearn_per_pixel_and_splits(rng):
    x, y, x_test = _data(rng, 9, 12)
    model = pixelwise.PixelOMP(n_nonzero=3).fit(x, y)
    dense = model.coef_.toarray()
    for j in range(y.shape[1]):
        one = OrthogonalMatchingPursuit(n_nonzero_coefs=3).fit(x, y[:, j])
        np.testing.assert_allclose(dense[j], one.coef_, atol=SOLVER)
        assert model.intercept_[j] == pytest.approx(one.intercept_, abs=SOLVER)
    assert (np.count_nonzero(dense, axis=1) <= 3).all()
    odd = pixelwise.PixelOMP(n_nonzero=3).fit(x, y, pixels=[1, 5, 7])
    np.testing.assert_allclose(odd.predict(x_test), model.predict(x_test)[:, [1, 5, 7]])


def test_trivial_baselines(rng):
    x, y, x_test = _data(rng, 5, 6)
    identity = baselines.Identity().fit(x, y)
    np.testing.assert_array_equal(identity.predict(x_test), x_test)
    assert identity.n_parameters == 0
    shift = baselines.MeanDifference().fit(x, y)
    np.testing.assert_allclose(shift.predict(x_test), x_test + (y - x).mean(axis=0))
    assert shift.n_parameters == 6


def test_refusals_name_the_problem(rng):
    limit = pixelwise.MAX_PIXELWISE_FEATURES
    for cls in (pixelwise.PixelLasso, pixelwise.PixelOMP):
        with pytest.raises(InputError, match=f"d = {limit + 1} .* limit of {limit}"):
            cls().check(10, limit + 1)
        with pytest.raises(InputError, match="limit"):
            cls().fit(np.zeros((2, limit + 1)), np.zeros((2, limit + 1)))
        cls().check(10, limit)  # at the limit: fine
    needed = baselines.FullRidge.memory_needed(100, 10_000)
    assert needed > 100 * 10_000 * 8
    message = (
        r"^needs 24.2 MB, more than the memory budget of 1.0 MB \(memory_budget\)$"
    )
    with pytest.raises(InputError, match=message):
        baselines.FullRidge().check(100, 10_000, memory_budget=2**20)
    baselines.FullRidge().check(100, 10_000, memory_budget=needed)
    # Primal (N >= d + 1) needs the (d + 1) x (d + 1) Gram matrix.
    assert baselines.FullRidge.memory_needed(5000, 3000) > 2 * 3001**2 * 8


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: baselines.FullRidge(lam=0), "lam must be a positive"),
        (lambda: baselines.KernelRidge(gamma=-1), "gamma must be a positive"),
        (lambda: baselines.ReducedRankRidge(rank=0), "rank must be a positive"),
        (lambda: pixelwise.PixelOMP(n_nonzero=2.5), "n_nonzero must be a positive"),
        (lambda: baselines.FullRidge().fit(np.zeros(3), np.zeros(3)), "X must be"),
        (lambda: baselines.FullRidge().fit(np.zeros((3, 2)), np.zeros((4, 2))), "3 s"),
        (
            lambda: baselines.FullRidge().fit(np.full((3, 2), np.nan), np.ones((3, 2))),
            "X has NaN",
        ),
        (lambda: baselines.FullRidge().predict(np.zeros((1, 2))), "not fitted"),
        (
            lambda: (
                baselines.FullRidge()
                .fit(np.ones((3, 2)), np.ones((3, 2)))
                .predict(np.ones((1, 3)))
            ),
            "X has 3 pixels but the fit had 2",
        ),
        (
            lambda: pixelwise.PixelLasso().fit(
                np.ones((3, 2)), np.ones((3, 2)), pixels=[2]
            ),
            r"pixels must lie in \[0, 2\)",
        ),
    ],
)
def test_bad_input_raises_input_error(call, match):
    with pytest.raises(InputError, match=match):
        call()
