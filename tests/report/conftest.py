"""The report tests' model: a tiny synthetic dataset and MR trained on it."""

from __future__ import annotations

import pytest

import dmask
from dmask.datasets.synthetic import make_synthetic_dataset
from dmask.io import dataset_store

#: The targets of :func:`trained`'s model.
TARGETS = ["happy", "sad"]


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A tiny synthetic dataset and a model stored on disk (lazy weights)."""
    folder = tmp_path_factory.mktemp("report")
    make_synthetic_dataset(folder / "f.zarr", 8, (24, 20), seed=1)
    ds = dataset_store.open_dataset(folder / "f.zarr")
    sources, targets = dataset_store.stored_pairs(ds, "neutral", TARGETS, "train")
    model = dmask.fit(sources, targets, field=3, lam=0.4, store=folder / "m.zarr")
    return ds, model
