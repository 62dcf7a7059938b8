"""Runs that cannot finish are refused up front, with the figure that is needed."""

from __future__ import annotations

import time

import pytest
from helpers import LOCAL_CLUSTER, cli_error, random_pairs

import dmask
from dmask.datasets.synthetic import make_synthetic_dataset


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    path = tmp_path_factory.mktemp("faces") / "faces.zarr"
    make_synthetic_dataset(path, 6, (16, 16), seed=3, test_fraction=0.34)
    return path


def test_a_field_larger_than_the_image(capsys, small, tmp_path, rng):
    out = tmp_path / "m.zarr"
    message = cli_error(
        capsys, "train", small, "--out", out, "--field", "33", *LOCAL_CLUSTER
    )
    assert "field 33" in message and "16x16" in message and "at most 16" in message
    assert not out.exists()
    sources, targets = random_pairs(rng, 4, 48, 40, 1)
    with pytest.raises(dmask.InputError, match="field 101 is larger than the 48x40"):
        dmask.fit(sources, targets, field=101)


def test_a_graph_too_large(capsys, small, tmp_path):
    out = tmp_path / "m.zarr"
    with dmask.set_options(max_tasks=1000):
        message = cli_error(
            capsys, "train", small, "--out", out, "--tile", "1", "1",
            "--sample-block", "1", *LOCAL_CLUSTER,
        )  # fmt: skip
    assert "tasks" in message and "max-tasks" in message and "1,000" in message
    assert not out.exists()


def test_workers_with_too_little_memory(capsys, small, tmp_path):
    out = tmp_path / "m.zarr"
    message = cli_error(
        capsys, "train", small, "--out", out, "--field", "9", "--memory-limit",
        "1MB", "--threads-per-worker", "1", *LOCAL_CLUSTER,
    )  # fmt: skip
    assert "needs about" in message and "worker thread has 1.0 MB" in message


def test_a_penalty_that_leaves_systems_singular(rng):
    sources, targets = random_pairs(rng, 3, 8, 8, 1)
    with pytest.raises(dmask.InputError, match=r"singular.*larger lam"):
        dmask.fit(sources, targets, field=5, lam=1e-300)


def test_a_run_that_makes_no_progress_stops(rng):
    """A cluster whose workers cannot run anything: a clear error, not a hang."""
    import dask.array as da
    from distributed import Client, LocalCluster

    sources, targets = random_pairs(rng, 4, 8, 8, 1)
    with (
        LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
        dmask.set_options(stall_timeout=2),
    ):
        assert client.scheduler_info()["workers"] == {}
        started = time.perf_counter()
        with pytest.raises(dmask.DmaskError, match=r"no task made progress for 2 s"):
            dmask.fit(da.from_array(sources), da.from_array(targets))
        assert time.perf_counter() - started < 30


def test_worker_processes_with_too_little_memory(capsys, small, tmp_path):
    """The case that used to hang at 0%: refused before the first computation."""
    message = cli_error(
        capsys, "train", small, "--out", tmp_path / "m.zarr", "--memory-limit", "1MB",
        "--workers", "1", "--dashboard-address", "127.0.0.1:0",
    )  # fmt: skip
    assert "worker thread has" in message


def test_a_long_task_is_not_taken_for_a_stall():
    import dask
    from distributed import Client, LocalCluster

    from dmask.graph import runtime

    with (
        LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster,
        Client(cluster),
        dmask.set_options(stall_timeout=1),
    ):
        (slept,) = runtime.compute(dask.delayed(time.sleep)(4))
    assert slept is None
