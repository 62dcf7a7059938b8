"""The Python API as xarray and scikit-learn users hold it.

Inputs are matched by dimension name; predictions of xarray inputs are
labelled with their target; pairs come from a dataset store by subject; MR is
a scikit-learn estimator.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from helpers import assert_model_close, random_pairs

import dmask

DIMS = ("sample", "y", "x", "channel")


@pytest.fixture(scope="module")
def pairs():
    return random_pairs(np.random.default_rng(3), 12, 9, 11, 2)


def _array(images: np.ndarray, expression: str = "neutral") -> xr.DataArray:
    n = images.shape[0]
    return xr.DataArray(
        images,
        dims=DIMS,
        coords={
            "subject": ("sample", [f"s{i}" for i in range(n)]),
            "expression": ("sample", [expression] * n),
        },
    )


def test_a_transposed_dataarray_trains_the_same_model(pairs):
    sources, targets = pairs
    reference = dmask.fit(sources, targets, field=3, lam=0.5, normalize="minmax")
    src = _array(sources).transpose("channel", "x", "sample", "y")
    tgt = _array(targets, "happy").transpose("x", "y", "channel", "sample")
    model = dmask.fit(src, tgt, field=3, lam=0.5, normalize="minmax")
    assert_model_close(model, reference)
    assert_model_close(model, reference, atol=0.0)  # the same numbers exactly


def test_a_dataarray_without_channel_is_one_channel(pairs):
    sources, targets = pairs
    one = (sources[..., :1], targets[..., :1])
    reference = dmask.fit(*one, field=3, lam=0.5)
    src = xr.DataArray(one[0][..., 0], dims=("sample", "y", "x"))
    tgt = xr.DataArray(one[1][..., 0], dims=("sample", "y", "x"))
    assert_model_close(dmask.fit(src, tgt, field=3, lam=0.5), reference, atol=0.0)


@pytest.mark.parametrize(
    ("dims", "named"),
    [
        (("sample", "height", "width", "channel"), "unknown ['height', 'width']"),
        (("sample", "y", "x", "band"), "unknown ['band']"),
    ],
)
def test_unknown_dimension_names_are_refused_by_name(pairs, dims, named):
    sources, targets = pairs
    src = xr.DataArray(sources, dims=dims)
    with pytest.raises(dmask.InputError, match="sources has dimensions") as info:
        dmask.fit(src, targets, field=3)
    assert named in str(info.value)
    assert "\n" not in str(info.value)


def test_a_channel_first_array_is_warned_about(pairs):
    sources, targets = pairs
    first = np.ascontiguousarray(np.moveaxis(sources[:, :9, :9], 3, 1))  # N, 2, 9, 9
    tgt = np.ascontiguousarray(np.moveaxis(targets[:, :9, :9], 3, 1))
    with pytest.warns(UserWarning, match="9 channels.*channel-first"):
        dmask.fit(first, tgt, field=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # four channels or fewer: no warning
        dmask.fit(sources, targets, field=1)


def test_predictions_of_a_dataarray_are_labelled_with_their_target(pairs):
    sources, targets = pairs
    model = dmask.fit(_array(sources), _array(targets, "happy"), field=3, lam=0.5,
                      normalize="minmax")  # fmt: skip
    src = _array(sources[:4]).transpose("x", "channel", "y", "sample")
    predicted = model.predict(src)
    assert isinstance(predicted, xr.DataArray)
    assert predicted.dims == DIMS
    assert predicted.coords["target"].item() == model.targets[0]
    assert set(predicted["expression"].values.tolist()) == {model.targets[0]}
    assert set(predicted["source_expression"].values.tolist()) == {"neutral"}
    assert list(predicted["subject"].values) == ["s0", "s1", "s2", "s3"]
    assert predicted.attrs["value_range"] == [0.0, 1.0]
    assert predicted.attrs["normalize"] == "minmax"
    np.testing.assert_array_equal(predicted.values, model.predict(sources[:4]))


def test_several_targets_give_a_dataset_with_a_target_dimension(pairs):
    sources, targets = pairs
    model = dmask.fit(sources, {"happy": targets, "sad": targets[::-1]}, field=1)
    predicted = model.predict(_array(sources[:3]))
    assert isinstance(predicted, xr.Dataset)
    assert predicted["images"].dims == ("target", *DIMS)
    assert list(predicted["target"].values) == ["happy", "sad"]
    numpy = model.predict(sources[:3])
    for name in ("happy", "sad"):
        np.testing.assert_array_equal(
            predicted["images"].sel(target=name).values, numpy[name]
        )
    assert "expression" not in predicted.coords


def test_pairs_from_a_dataset_store_and_predict_a_dataset(tmp_path: Path):
    from dmask.datasets.synthetic import make_synthetic_dataset

    store = tmp_path / "faces.zarr"
    make_synthetic_dataset(store, 8, image_shape=(20, 16), seed=1)
    ds = dmask.open_dataset(store)
    sources, targets = dmask.select_pairs(ds, "neutral", ["happy"], split="train")
    assert list(sources["subject"].values) == list(targets["happy"]["subject"].values)
    assert set(sources["expression"].values.tolist()) == {"neutral"}
    model = dmask.fit(sources, targets["happy"], field=3, lam=0.4, normalize="minmax")
    test_sources, _ = dmask.select_pairs(ds, "neutral", ["happy"], split="test")
    predicted = model.predict(test_sources)
    assert set(predicted["expression"].values.tolist()) == {"happy"}
    everything = model.predict(ds)  # the whole dataset's images
    assert everything.sizes["sample"] == ds.sizes["sample"]
    with pytest.raises(dmask.InputError, match="'images' variable"):
        model.predict(ds.rename({"images": "faces"}))


def test_the_estimator_fits_in_grid_search_and_pipelines(pairs):
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import Pipeline

    sources, targets = pairs
    estimator = dmask.MaskedRidgeRegression(field=3, lam=0.5)
    assert estimator.get_params() == {
        "field": 3, "lam": 0.5, "normalize": "none", "image_shape": None,
    }  # fmt: skip
    assert clone(estimator).set_params(lam=2.0).lam == 2.0
    estimator.fit(sources, targets)
    np.testing.assert_array_equal(
        estimator.predict(sources),
        dmask.fit(sources, targets, 3, 0.5, normalize="none").predict(sources),
    )
    search = GridSearchCV(
        dmask.MaskedRidgeRegression(), {"field": [1, 3], "lam": [0.1, 10.0]}, cv=3
    )
    search.fit(sources, targets)
    assert set(search.best_params_) == {"field", "lam"}
    assert np.isfinite(search.best_score_) and search.best_score_ <= 1.0
    # flat rows, as a Pipeline's other steps see them
    rows = sources.reshape(len(sources), -1)
    pipe = Pipeline(
        [("mr", dmask.MaskedRidgeRegression(field=3, lam=0.5, image_shape=(9, 11, 2)))]
    )
    pipe.fit(rows, targets.reshape(len(targets), -1))
    np.testing.assert_array_equal(
        pipe.predict(rows), estimator.predict(sources).reshape(len(sources), -1)
    )
    score = pipe.score(rows, targets.reshape(len(targets), -1))
    expected = (
        1
        - ((estimator.predict(sources) - targets) ** 2).sum()
        / (
            (
                targets
                - targets.reshape(len(targets), -1).mean(0).reshape(targets.shape[1:])
            )
            ** 2
        ).sum()
    )
    assert score == pytest.approx(expected, rel=1e-12)


def test_the_estimator_reads_dataarrays_by_dimension_name(pairs):
    sources, targets = pairs
    estimator = dmask.MaskedRidgeRegression(field=3, lam=0.5)
    reference = estimator.fit(sources, targets).predict(sources)
    src = _array(sources).transpose("x", "sample", "channel", "y")
    tgt = _array(targets).transpose("channel", "y", "x", "sample")
    again = dmask.MaskedRidgeRegression(field=3, lam=0.5).fit(src, tgt)
    np.testing.assert_array_equal(again.predict(src), reference)


def test_select_pairs_takes_one_name_and_all(tmp_path: Path):
    from dmask.datasets.synthetic import make_synthetic_dataset

    store = tmp_path / "faces.zarr"
    make_synthetic_dataset(store, 8, image_shape=(16, 16), seed=1)
    ds = dmask.open_dataset(store)
    sources, targets = dmask.select_pairs(ds, "neutral", "happy", split="all")
    assert list(targets) == ["happy"] and sources.sizes["sample"] == 8
    assert set(sources["split"].values.tolist()) == {"train", "test"}


def test_the_estimator_scores_minmax_in_the_models_scale(pairs):
    sources, targets = pairs
    estimator = dmask.MaskedRidgeRegression(field=3, lam=0.5, normalize="minmax")
    score = estimator.fit(sources, targets).score(sources, targets)
    assert 0.0 < score <= 1.0  # against raw targets it would be far below 0


def test_the_estimator_refuses_rows_without_a_shape(pairs):
    from sklearn.exceptions import NotFittedError

    sources, targets = pairs
    with pytest.raises(NotFittedError):
        dmask.MaskedRidgeRegression().predict(sources)
    with pytest.raises(dmask.InputError, match="give image_shape"):
        dmask.MaskedRidgeRegression().fit(sources.reshape(12, -1), targets)


def test_model_shows_itself_in_notebooks_and_the_package_is_typed(pairs):
    sources, targets = pairs
    page = dmask.fit(sources, {"happy": targets}, field=3)._repr_html_()
    assert "dmask.Model" in page and "happy" in page and "field r" in page
    assert (Path(dmask.__file__).parent / "py.typed").is_file()
