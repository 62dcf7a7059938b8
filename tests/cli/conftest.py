"""Fixtures of the command-line tests: a small synthetic dataset store."""

from __future__ import annotations

import pytest

from dmask.datasets.synthetic import make_synthetic_dataset


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """6 subjects of 24 x 20 RGB faces, 2 of them in the test split."""
    path = tmp_path_factory.mktemp("faces") / "faces.zarr"
    make_synthetic_dataset(path, 6, (24, 20), seed=3, test_fraction=0.34)
    return path
