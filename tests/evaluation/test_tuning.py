"""Per-pixel penalty selection (LOO, GCV) against brute force, and the sweeps."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import LOOSE, REFERENCE, SOLVER, TIGHT, assert_model_close, random_pairs
from reference import minmax, reference_fit

import dmask
from dmask.core import displacement, lambdas
from dmask.datasets.synthetic import make_synthetic_dataset
from dmask.evaluation.evaluate import evaluate
from dmask.evaluation.metrics import write_results
from dmask.evaluation.tune import best_setting, training_size_curve, tune
from dmask.graph import fit_tasks
from dmask.io import dataset_store

GRID = (0.001, 0.01, 0.1, 0.4, 1.0, 10.0, 100.0)


def brute_force_scores(
    sources: np.ndarray, targets: np.ndarray, field: int, grid: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """GCV scores and leave-one-out errors ``(H, W, C, L)`` by plain loops.

    GCV from one solve per pixel and penalty (``numpy.linalg.solve``) and the
    hat matrix's trace; leave-one-out by refitting without each sample in turn.
    The window is clipped at the border; the bias is penalised too.
    """
    n, height, width, channels = sources.shape
    b = field // 2
    gcv = np.zeros((height, width, channels, len(grid)))
    loo = np.zeros((height, width, channels, len(grid)))
    for i in range(height):
        for j in range(width):
            for c in range(channels):
                columns = [
                    sources[:, y, x, c]
                    for y in range(i - b, i + b + 1)
                    for x in range(j - b, j + b + 1)
                    if 0 <= y < height and 0 <= x < width
                ]
                design = np.column_stack([*columns, np.ones(n)])
                t = targets[:, i, j, c]
                eye = np.eye(design.shape[1])
                for q, lam in enumerate(grid):
                    system = design.T @ design + lam * eye
                    w = np.linalg.solve(system, design.T @ t)
                    rss = np.sum((t - design @ w) ** 2)
                    trace = np.trace(design @ np.linalg.solve(system, design.T))
                    gcv[i, j, c, q] = n * rss / (n - trace) ** 2
                    for s in range(n):
                        rest = np.arange(n) != s
                        a = design[rest]
                        w = np.linalg.solve(a.T @ a + lam * eye, a.T @ t[rest])
                        loo[i, j, c, q] += (t[s] - design[s] @ w) ** 2
    return gcv, loo


def assert_weights_match_fixed_lambda(model, sources, targets, field):
    """Each pixel's weights are those of a fit with its chosen penalty."""
    chosen = model.lam_map().values
    weights, bias = model.weights().values, model.bias().values
    for lam in np.unique(chosen):
        ref_w, ref_b = reference_fit(minmax(sources), minmax(targets), field, lam)
        where = chosen == lam
        assert_model_close(
            (weights[where], bias[where]), (ref_w[where], ref_b[where]), atol=REFERENCE
        )


@pytest.fixture(scope="module", params=[3, 5])
def case(request):
    """A small problem, its receptive field and brute-force scores.

    With r = 5 each pixel has more unknowns (26) than samples (11).
    """
    rng = np.random.default_rng(7)
    sources, targets = random_pairs(rng, 11, 5, 6, 2)
    field = request.param
    gcv, loo = brute_force_scores(minmax(sources), minmax(targets), field, GRID)
    return sources, targets, field, gcv, loo


@pytest.mark.parametrize("criterion", ["gcv", "loo"])
def test_choice_equals_brute_force(case, criterion, backend):
    sources, targets, field, gcv, loo = case
    scores = gcv if criterion == "gcv" else loo
    model = dmask.fit(
        sources, targets, field=field, lam=criterion, lam_grid=GRID, tile_shape=(3, 4)
    )
    expected = np.asarray(GRID)[np.argmin(scores, axis=-1)]
    chosen = model.lam_map().values
    assert chosen.dtype == np.float64 and chosen.shape == (5, 6, 2)
    np.testing.assert_array_equal(chosen, expected)
    assert len(np.unique(chosen)) > 1  # the case really chooses
    assert_weights_match_fixed_lambda(model, sources, targets, field)


def _halo(sources, field):
    b = field // 2
    return np.pad(minmax(sources), ((0, 0), (b, b), (b, b), (0, 0)))


def test_press_kernel_equals_refits(case):
    sources, targets, field, _, loo = case
    halo, t = _halo(sources, field), minmax(targets)[None]
    stats = displacement.displacement_statistics(halo, t, field)
    factors = lambdas.spectral_factors(stats, field)
    press = lambdas.press_tile(factors, halo, t, field, GRID)
    np.testing.assert_allclose(press[..., 0, :], loo, rtol=REFERENCE)
    parts = lambdas.press_tile(factors, halo[:4], t[:, :4], field, GRID)
    parts += lambdas.press_tile(factors, halo[4:], t[:, 4:], field, GRID)
    np.testing.assert_allclose(parts, press, rtol=TIGHT)


def test_gcv_kernel_equals_brute_force(case):
    sources, targets, field, gcv, _ = case
    halo = _halo(sources, field)
    stats = displacement.displacement_statistics(
        halo, minmax(targets)[None], field, squares=True
    )
    factors = lambdas.spectral_factors(stats, field)
    squares = np.moveaxis(stats.target_squares, 0, -1)
    scores = lambdas.gcv_scores(
        factors.values, factors.projected, squares, stats.count, np.asarray(GRID)
    )
    np.testing.assert_allclose(scores[..., 0, :], gcv, rtol=LOOSE)


@pytest.mark.parametrize("criterion", ["gcv", "loo"])
def test_selection_tiled_equals_untiled(rng, criterion):
    sources, targets = random_pairs(rng, 10, 7, 9, 3)
    named = {"a": targets, "b": np.sqrt(sources) + targets[::-1]}
    whole = dmask.fit(
        sources, named, field=5, lam=criterion, tile_shape=(7, 9), sample_block=10
    )
    tiled = dmask.fit(
        sources, named, field=5, lam=criterion, tile_shape=(3, 4), sample_block=3
    )
    for name in named:
        np.testing.assert_array_equal(
            tiled.lam_map(name).values, whole.lam_map(name).values
        )
        assert_model_close(tiled, whole, name, atol=SOLVER)
    assert whole.dataset.attrs["lam"] == criterion
    assert whole.dataset.attrs["lam_grid"] == list(lambdas.DEFAULT_LAM_GRID)
    assert math.isnan(whole.lam)


def test_selection_to_store_and_back(rng, tmp_path):
    sources, targets = random_pairs(rng, 9, 6, 7, 1)
    memory = dmask.fit(sources, targets, field=3, lam="loo", tile_shape=(3, 4))
    stored = dmask.fit(
        sources, targets, field=3, lam="loo", tile_shape=(3, 4), store=tmp_path / "m"
    )
    opened = dmask.open_model(tmp_path / "m")
    assert opened.dataset["lam_map"].dims == ("target", "y", "x", "channel")
    np.testing.assert_array_equal(opened.lam_map().values, memory.lam_map().values)
    assert_model_close(stored, memory, atol=0, bias=False)
    memory.save(tmp_path / "saved")
    np.testing.assert_array_equal(
        dmask.open_model(tmp_path / "saved").lam_map().values, memory.lam_map().values
    )
    fixed = dmask.fit(sources, targets, field=3, lam=0.4)
    assert "lam_map" not in fixed.dataset
    assert np.all(fixed.lam_map().values == 0.4)


def test_selection_resumes_to_the_same_model(rng, tmp_path, monkeypatch):
    from dmask.io import model_store

    sources, targets = random_pairs(rng, 8, 8, 8, 1)
    settings = {"field": 3, "lam": "gcv", "lam_grid": GRID, "tile_shape": (4, 4)}
    memory = dmask.fit(sources, targets, **settings)
    real = model_store.write_model_tile
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(fit_tasks, "write_model_tile", flaky)
    with pytest.raises(RuntimeError, match="disk full"):
        dmask.fit(sources, targets, **settings, store=tmp_path / "m")
    monkeypatch.setattr(fit_tasks, "write_model_tile", real)
    with pytest.raises(dmask.InputError, match="lam_grid"):
        dmask.fit(
            sources, targets, **{**settings, "lam_grid": (1.0,)},
            store=tmp_path / "m", resume=True,
        )  # fmt: skip
    resumed = dmask.fit(sources, targets, **settings, store=tmp_path / "m", resume=True)
    np.testing.assert_array_equal(resumed.lam_map().values, memory.lam_map().values)
    assert_model_close(resumed, memory, atol=0, bias=False)


def test_loo_on_cluster_equals_threaded(rng, cluster_client, tmp_path):
    sources, targets = random_pairs(rng, 9, 7, 6, 2)
    settings = {"field": 3, "lam": "loo", "tile_shape": (4, 4), "sample_block": 4}
    local = dmask.fit(sources, targets, **settings)
    with cluster_client.as_current():
        remote = dmask.fit(sources, targets, **settings, store=tmp_path / "m")
    np.testing.assert_array_equal(remote.lam_map().values, local.lam_map().values)
    assert_model_close(remote, local, atol=0, bias=False)


def test_default_grid():
    grid = lambdas.DEFAULT_LAM_GRID
    assert 0.4 in grid and grid[0] == 1e-3 and grid[-1] == 1e3 and len(grid) == 14
    assert list(grid) == sorted(grid)


def test_selection_rejects_bad_settings(rng):
    sources, targets = random_pairs(rng, 5, 4, 4, 1)
    with pytest.raises(dmask.InputError, match="lam_grid"):
        dmask.fit(sources, targets, lam="gcv", lam_grid=[0.1, -1])
    with pytest.raises(dmask.InputError, match="lam_grid"):
        dmask.fit(sources, targets, lam="gcv", lam_grid=[])
    with pytest.raises(dmask.InputError, match="lam_grid"):
        dmask.fit(sources, targets, lam=0.4, lam_grid=[0.1])
    with pytest.raises(dmask.InputError, match="covariance"):
        dmask.fit(sources, targets, lam="loo", method="covariance")
    with pytest.raises(dmask.InputError, match="lam"):
        dmask.fit(sources, targets, lam="aic")


# ------------------------------------------------------------------- sweeps


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    return make_synthetic_dataset(
        tmp_path_factory.mktemp("tune") / "f.zarr", 8, (16, 16), seed=1
    )


def test_tune_covers_the_grid(faces, tmp_path):
    fields, lams = (1, 3, 5), (0.1, 1, "gcv")
    rows = tune(faces, targets=["happy", "sad"], fields=fields, lams=lams)
    assert len(rows) == len(fields) * len(lams) * 3
    settings = {(r["field"], r["lam"]) for r in rows}
    assert settings == {(f, v) for f in fields for v in (0.1, 1.0, "gcv")}
    means = [r for r in rows if r["expression"] == "mean"]
    assert len(means) == len(settings)
    for row in rows:
        assert set(row) == {
            "field", "lam", "expression", "n_train", "n_test", "mse", "psnr", "best",
            "lam_median",  # the median penalty gcv chose per pixel; None for others
        }  # fmt: skip
        assert (row["lam_median"] is None) == (row["lam"] != "gcv")
        assert row["n_train"] == 6 and row["n_test"] == 2
        assert math.isfinite(row["mse"]) and row["mse"] > 0
        assert math.isfinite(row["psnr"])
    best = best_setting(rows)
    assert best["mse"] == min(r["mse"] for r in means)
    flagged = [r for r in rows if r["best"]]
    assert len(flagged) == 1 and flagged[0]["mse"] == best["mse"]
    for row in means:
        parts = [
            r["mse"] for r in rows
            if (r["field"], r["lam"]) == (row["field"], row["lam"]) and r is not row
        ]  # fmt: skip
        assert row["mse"] == pytest.approx(np.mean(parts))
    write_results(rows, tmp_path / "t.csv", tmp_path / "t.json")
    assert len((tmp_path / "t.csv").read_text().splitlines()) == len(rows) + 1


def test_tune_matches_fit_and_evaluate(faces):
    rows = tune(faces, targets=["angry"], fields=(3,), lams=(0.4,))
    src, tgt = dataset_store.stored_pairs(faces, "neutral", ["angry"], "train")
    model = dmask.fit(src, tgt, field=3, lam=0.4)
    expected = evaluate(model, faces, targets=["angry"])[0]
    assert rows[0]["mse"] == pytest.approx(expected["mse_mr"], rel=TIGHT)
    assert rows[0]["psnr"] == pytest.approx(expected["psnr_mr"], rel=TIGHT)


def test_tune_on_a_validation_split(faces):
    rows = tune(faces, targets=["happy"], fields=(3,), lams=(0.4,), split_fraction=0.34)
    assert rows[0]["n_train"] == 4 and rows[0]["n_test"] == 2
    with pytest.raises(dmask.InputError, match="split_fraction"):
        tune(faces, fields=(3,), lams=(0.4,), split_fraction=1.5)
    with pytest.raises(dmask.InputError, match="field"):
        tune(faces, fields=(2,), lams=(0.4,))


def test_training_size_curve(faces):
    rows = training_size_curve(
        faces, targets=["happy", "surprised"], sizes=(2, 4, 6, 50), field=3
    )
    assert [r["n_train"] for r in rows if r["expression"] == "mean"] == [
        2, 2, 4, 4, 6, 6
    ]  # fmt: skip
    assert {r["method"] for r in rows} == {"mr", "full_ridge"}
    for row in rows:
        assert math.isfinite(row["mse"]) and row["mse"] > 0
        assert math.isfinite(row["psnr"]) and row["n_test"] == 2
        assert row["field"] == (3 if row["method"] == "mr" else None)
    mr = {r["n_train"]: r["mse"] for r in rows if r["method"] == "mr"
          and r["expression"] == "mean"}  # fmt: skip
    assert mr[6] < 2 * mr[2]  # loose: more subjects do not make MR much worse
    only_mr = training_size_curve(
        faces, targets=["happy"], sizes=(3,), include_full_ridge=False
    )
    assert {r["method"] for r in only_mr} == {"mr"} and len(only_mr) == 2
    with pytest.raises(dmask.InputError, match="sizes"):
        training_size_curve(faces, sizes=(0, 3))
    with pytest.raises(dmask.InputError, match="exceeds"):
        training_size_curve(faces, sizes=(100,))


def test_full_ridge_rows_match_a_direct_dual_solve(faces):
    """The curve's full ridge error equals a plain dual-form solve written here."""
    rows = training_size_curve(
        faces, targets=["sad"], sizes=(4,), lam=0.4, include_full_ridge=True
    )
    ridge = next(r for r in rows if r["method"] == "full_ridge")
    src, tgt = dataset_store.pair_indices(faces, "neutral", ["sad"], "train")
    test_src, test_tgt = dataset_store.pair_indices(faces, "neutral", ["sad"], "test")
    images = faces["images"].values

    def flat(index):
        return minmax(images[index]).reshape(len(index), -1)

    x = np.hstack([flat(src[:4]), np.ones((4, 1))])
    y = flat(tgt["sad"][:4])
    alpha = np.linalg.solve(x @ x.T + 0.4 * np.eye(4), y)
    x_test = np.hstack([flat(test_src), np.ones((len(test_src), 1))])
    predicted = x_test @ x.T @ alpha
    mse = ((predicted - flat(test_tgt["sad"])) ** 2).mean(axis=1)
    assert ridge["mse"] == pytest.approx(mse.mean(), rel=SOLVER)
    assert ridge["psnr"] == pytest.approx(np.mean(10 * np.log10(1 / mse)), rel=SOLVER)
