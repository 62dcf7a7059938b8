"""Many worker processes: 16 one-thread workers train the model 1 worker does.

Bit for bit (``np.array_equal``, not a tolerance), and the same as the threaded
scheduler in this process: which worker runs which task, and in which order,
must not change a single sum. The tiles are small so that there are more tiles
than workers and every worker gets some; the graph is the same whatever the
number of workers (same tasks per tile).
"""

from __future__ import annotations

import collections
import contextlib
import importlib
from collections.abc import Iterator
from typing import Any

import dask
import numpy as np
import pytest

import dmask
from dmask.datasets.synthetic import make_synthetic_dataset
from dmask.io import dataset_store

WORKERS = 16
#: A worker process holding dmask's imports (numba, xarray, zarr) is about
#: 250 MB resident; distributed pauses a worker at 80% of its limit.
MEMORY_LIMIT = "512MiB"
#: 9 training pairs of 32 x 32 RGB: 32 tiles of 8 x 4 (two per worker at 16),
#: 3 sample blocks each (statistics summed by combine tasks).
FIT = {"field": 3, "lam": 0.4, "tile_shape": (8, 4), "sample_block": 3}
TARGETS = ("happy", "sad")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:distributed")


def forkserver() -> None:
    """Start worker processes from a fork server that has imported dmask.

    distributed's own option (``distributed.worker.multiprocessing-method``):
    each worker is a fork of one process that imported distributed, numpy and
    dmask's tasks once, instead of a fresh interpreter importing them all (1 to
    3 s of a core per worker, 16 times over on 2 cores).
    """
    from distributed.utils import get_mp_context

    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        context = get_mp_context()  # sets distributed's own preload list once
    # before the server starts (on the first worker); it imports these once
    context.set_forkserver_preload(["distributed", "dmask.graph.fit_tasks"])


@contextlib.contextmanager
def local_cluster(n_workers: int) -> Iterator[Any]:
    """A LocalCluster of one-thread worker processes on 127.0.0.1, dmask imported."""
    from distributed import Client, LocalCluster

    forkserver()
    with (
        dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}),
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            worker_dashboard_address="127.0.0.1:0",
            memory_limit=MEMORY_LIMIT,
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        client.wait_for_workers(n_workers)
        client.run(importlib.import_module, "dmask.graph.fit_tasks")
        yield client


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Any:
    folder = tmp_path_factory.mktemp("many_workers")
    ds = make_synthetic_dataset(folder / "faces.zarr", 12, (32, 32), seed=5)
    return dataset_store.stored_pairs(ds, "neutral", list(TARGETS), "train")


@pytest.fixture(scope="module")
def threaded(pairs) -> dmask.Model:
    """The model the threaded scheduler trains in this process (no client)."""
    return dmask.fit(*pairs, **FIT)


@pytest.fixture(scope="module")
def one_worker(pairs, tmp_path_factory) -> Any:
    """What one worker process trains (see :func:`fit_on`)."""
    path = tmp_path_factory.mktemp("one") / "model.zarr"
    with local_cluster(1) as client:
        return fit_on(client, pairs, path)


@pytest.fixture(scope="module")
def many(threaded, one_worker) -> Iterator[Any]:
    """The 16-worker client (started after the other runs, which need none)."""
    with local_cluster(WORKERS) as client:
        yield client


def fit_on(
    client: Any, pairs: Any, store: Any
) -> tuple[dmask.Model, collections.Counter, set[str]]:
    """Train on ``client``: the model, its tasks by name, the workers that ran them."""
    from distributed import get_task_stream

    with client.as_current(), get_task_stream(client=client) as stream:
        model = dmask.fit(*pairs, **FIT, store=store)
    names = collections.Counter(
        str(r["key"][0] if isinstance(r["key"], tuple) else r["key"]).split("-")[0]
        for r in stream.data
    )
    workers = {r["worker"] for r in stream.data}
    return model, names, workers


def assert_identical(got: dmask.Model, want: dmask.Model) -> None:
    for name in TARGETS:
        assert np.array_equal(np.asarray(got.weights(name)), want.weights(name)), name
        assert np.array_equal(np.asarray(got.bias(name)), want.bias(name)), name


def test_sixteen_workers_train_the_model_one_worker_does(
    many, one_worker, threaded, pairs, tmp_path
):
    model, tasks, workers = fit_on(many, pairs, tmp_path / "model.zarr")
    one, one_tasks, _ = one_worker
    assert_identical(model, one)
    assert_identical(model, threaded)
    assert_identical(one, threaded)
    # the same graph on 16 workers as on 1, spread over most of them
    assert tasks == one_tasks
    assert tasks["write_tile"] == 32
    assert len(workers) >= WORKERS // 2


def test_sixteen_workers_hold_the_model_in_memory_bit_for_bit(many, threaded, pairs):
    with many.as_current():
        model = dmask.fit(*pairs, **FIT)
    assert_identical(model, threaded)
