"""Shared fixtures: small random images and a real multi-process Dask cluster."""

from __future__ import annotations

import numpy as np
import pytest

import dmask


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


def random_pairs(
    rng: np.random.Generator, n: int, height: int, width: int, channels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Random sources and targets where the target depends locally on the source."""
    sources = rng.random((n, height, width, channels)) * 200 + 10
    noise = rng.random((n, height, width, channels)) * 50
    shifted = np.roll(sources, 1, axis=2)
    targets = 0.6 * sources + 0.3 * shifted + noise
    return sources, targets


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
