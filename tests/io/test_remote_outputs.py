"""Staged overwrites and chunk manifests through fsspec, as on object storage.

fsspec's in-process memory filesystem stands in for a bucket: the code path is
the one ``s3://`` URLs take (no rename: copy, then delete), run on dask's
threaded scheduler in this process.
"""

from __future__ import annotations

import uuid

import fsspec
import pytest

import dmask
from dmask.datasets.synthetic import make_synthetic_dataset
from dmask.io import dataset_store


@pytest.fixture
def bucket():
    name = f"/dmask-test-{uuid.uuid4().hex[:8]}"
    fs = fsspec.filesystem("memory")
    fs.mkdir(name)
    yield fs, name
    fs.rm(name, recursive=True)


def test_overwrite_and_integrity_on_a_remote_filesystem(bucket):
    fs, root = bucket
    faces = f"memory://{root}/faces.zarr"
    make_synthetic_dataset(faces, 3, (16, 16), seed=1)
    ds = make_synthetic_dataset(faces, 4, (16, 16), seed=2, overwrite=True)
    assert ds.sizes["sample"] == 28
    assert fs.ls(root, detail=False) == [f"{root}/faces.zarr"]  # no staging left

    src, tgt = dataset_store.select_pairs(ds, "neutral", ["happy"], "train")
    model = f"memory://{root}/m.zarr"
    dmask.fit(src, tgt, field=3, store=model)
    with pytest.raises(dmask.InputError):  # fails after the old model is kept
        dmask.fit(src, tgt, field=3, store=model, overwrite=True, tile_shape=(0, 4))
    assert dmask.open_model(model).field == 3
    dmask.fit(src, tgt, field=5, store=model, overwrite=True)
    assert dmask.open_model(model).field == 5
    assert sorted(fs.ls(root, detail=False)) == [f"{root}/faces.zarr", f"{root}/m.zarr"]

    chunk = next(f for f in fs.find(f"{root}/m.zarr") if "/weight/c/" in f)
    fs.rm(chunk)
    with pytest.raises(dmask.StoreError, match="missing chunk weight/c/"):
        dmask.open_model(model)
