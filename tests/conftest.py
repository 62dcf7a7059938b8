"""Shared fixtures: a random generator, both kernel backends, a real Dask cluster.

Non-fixture helpers (random_pairs, tolerances, assert_model_close,
CountingScheduler) are in helpers.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import dmask


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture(params=["numba", "numpy"])
def backend(request, monkeypatch) -> str:
    """Run a test with the compiled kernels and again with numpy's alone."""
    from dmask.core import _engine

    if request.param == "numba" and not _engine.AVAILABLE:
        pytest.skip("numba is not installed: compiled kernels unavailable")
    with dmask.set_options(kernels=request.param):
        yield request.param


@pytest.fixture(scope="session")
def cluster_client():
    """A real LocalCluster of two worker processes on 127.0.0.1."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            memory_limit="2GB",
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client
