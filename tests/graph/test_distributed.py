"""A real multi-process LocalCluster gives the same numbers as a local run."""

from __future__ import annotations

import numpy as np
from helpers import assert_model_close, random_pairs

import dmask
from dmask.apply.store import apply_to_store
from dmask.datasets.synthetic import make_synthetic_dataset
from dmask.io import dataset_store


def test_fit_on_cluster_equals_threaded(rng, cluster_client, tmp_path):
    sources, targets = random_pairs(rng, 13, 11, 9, 3)
    named = {"a": targets, "b": np.sqrt(sources)}
    local = dmask.fit(sources, named, field=5, tile_shape=(4, 4), sample_block=5)
    with cluster_client.as_current():
        remote = dmask.fit(sources, named, field=5, tile_shape=(4, 4), sample_block=5)
        stored = dmask.fit(
            sources,
            named,
            field=5,
            tile_shape=(4, 4),
            sample_block=5,
            store=tmp_path / "m.zarr",
        )
        remote_pred = stored.predict(sources)
    for name in ("a", "b"):
        assert_model_close(remote, local, name, atol=0, bias=False)
        assert_model_close(stored, local, name, atol=0)
    local_pred = local.predict(sources)
    np.testing.assert_array_equal(remote_pred["a"], local_pred["a"])


def test_dataset_pipeline_on_cluster_equals_local(cluster_client, tmp_path):
    local_ds = make_synthetic_dataset(tmp_path / "local.zarr", 5, (20, 28), seed=7)
    with cluster_client.as_current():
        remote_ds = make_synthetic_dataset(
            tmp_path / "remote.zarr", 5, (20, 28), seed=7
        )
    np.testing.assert_array_equal(remote_ds["images"].values, local_ds["images"].values)

    src, tgt = dataset_store.select_pairs(
        local_ds, "neutral", ["happy", "angry"], "train"
    )
    local_model = dmask.fit(src, tgt, field=3, tile_shape=(8, 8))
    with cluster_client.as_current():
        remote_model = dmask.fit(
            src, tgt, field=3, tile_shape=(8, 8), store=tmp_path / "m.zarr"
        )
        remote_out = apply_to_store(
            remote_model, remote_ds, tmp_path / "out.zarr", split="test"
        )
    assert_model_close(remote_model, local_model, "angry", atol=0, bias=False)
    test_src, _ = dataset_store.select_pairs(local_ds, "neutral", ["happy"], "test")
    expected = local_model.predict(test_src.values)
    got = remote_out["images"].values
    n = test_src.sizes["sample"]
    assert list(remote_out["expression"].values) == ["happy"] * n + ["angry"] * n
    np.testing.assert_allclose(got[:n], expected["happy"].astype("float32"))
    np.testing.assert_allclose(got[n:], expected["angry"].astype("float32"))
