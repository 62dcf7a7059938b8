"""Synthetic faces and the dataset store layout."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import REORDERED, assert_model_close

from dmask import errors
from dmask.datasets.drawing import EXPRESSIONS, render_face, subject_params
from dmask.datasets.synthetic import make_synthetic_dataset, render_samples
from dmask.io import dataset_store


def test_synthetic_faces_are_deterministic_and_local():
    params = subject_params(0, 3)
    neutral = render_face(params, "neutral", 96, 80)
    assert neutral.shape == (96, 80, 3) and neutral.dtype == np.float32
    assert 0 <= neutral.min() and neutral.max() <= 1
    np.testing.assert_array_equal(
        neutral, render_face(subject_params(0, 3), "neutral", 96, 80)
    )
    for expression in EXPRESSIONS[1:]:
        changed = (
            np.abs(render_face(params, expression, 96, 80) - neutral).max(-1) > 0.02
        )
        assert 0.005 < changed.mean() < 0.25, expression
    other = render_face(subject_params(0, 4), "neutral", 96, 80)
    assert np.abs(other - neutral).mean() > 0.02
    with pytest.raises(ValueError, match="bored"):
        render_face(params, "bored", 32, 32)


def test_dataset_store_layout_and_split(tmp_path):
    ds = make_synthetic_dataset(
        tmp_path / "f.zarr", 8, (40, 24), seed=1, test_fraction=0.25
    )
    assert ds["images"].dims == ("sample", "y", "x", "channel")
    assert ds["images"].shape == (8 * 7, 40, 24, 3)
    assert ds["images"].dtype == np.uint8
    assert ds.attrs["format"] == "dmask-dataset" and ds.attrs["complete"]
    subjects = ds["subject"].values.astype(str)
    splits = ds["split"].values.astype(str)
    train = set(subjects[splits == "train"])
    test = set(subjects[splits == "test"])
    assert len(test) == 2 and len(train) == 6 and not train & test
    assert list(ds["expression"].values[::8]) == list(EXPRESSIONS)
    assert list(ds["subject"].values[8:16]) == [f"s{i:05d}" for i in range(8)]
    np.testing.assert_array_equal(
        ds["images"].values[7:14], render_samples(1, 8, 7, 14, 40, 24)
    )
    src, tgt = dataset_store.select_pairs(ds, "neutral", ["happy", "sad"], "test")
    assert list(src["subject"].values) == list(tgt["sad"]["subject"].values)
    assert set(src["expression"].values) == {"neutral"}
    assert set(tgt["happy"]["expression"].values) == {"happy"}


def test_existing_dataset_store_is_refused(tmp_path):
    make_synthetic_dataset(tmp_path / "f.zarr", 2, (16, 16))
    with pytest.raises(errors.StoreError, match="already exists"):
        make_synthetic_dataset(tmp_path / "f.zarr", 2, (16, 16))
    make_synthetic_dataset(tmp_path / "f.zarr", 3, (16, 16), overwrite=True)
    assert dataset_store.open_dataset(tmp_path / "f.zarr").sizes["sample"] == 21


def test_stored_images_give_the_same_model_as_arrays(tmp_path):
    ds = make_synthetic_dataset(
        tmp_path / "f.zarr", 9, (20, 18), seed=2, test_fraction=0.34
    )
    src_ref, tgt_ref = dataset_store.stored_pairs(
        ds, "neutral", ["sad", "afraid"], "train"
    )
    src_arr, tgt_arr = dataset_store.select_pairs(
        ds, "neutral", ["sad", "afraid"], "train"
    )
    assert src_ref.shape == src_arr.shape == (6, 20, 18, 3)
    np.testing.assert_array_equal(
        dataset_store.read_images(src_ref.path, src_ref.index), src_arr.values
    )
    import dmask

    from_refs = dmask.fit(src_ref, tgt_ref, field=3, tile_shape=(8, 8), sample_block=4)
    from_arrays = dmask.fit(src_arr.values, {k: v.values for k, v in tgt_arr.items()})
    assert_model_close(from_refs, from_arrays, "afraid", atol=REORDERED, bias=False)
    test_ref, _ = dataset_store.stored_pairs(ds, "neutral", ["sad"], "test")
    lazy = from_refs.predict(test_ref, sample_block=2)
    expected = from_arrays.predict(
        dataset_store.read_images(ds.encoding["dmask_path"], test_ref.index)
    )
    np.testing.assert_allclose(lazy["sad"].compute(), expected["sad"], atol=REORDERED)
