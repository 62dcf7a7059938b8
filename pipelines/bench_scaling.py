"""Scaling benchmark: the same training job on 1 and 2 distributed workers.

A synthetic dataset (``--subjects`` subjects, default 200, of ``--size`` pixels,
default 256 x 256, RGB) is written to a temporary store; ``dmask.fit`` then
trains neutral -> happy (r = ``--field``, default 7, lambda 0.4) on the stored
train split and writes the model to a new store (removed after the run, outside
its time), on a LocalCluster of 1 and then 2
worker processes of one thread each (127.0.0.1, no dashboard). Both clusters
are up together; after a warm-up import of dmask on the workers and one
unmeasured run each, their runs alternate, ``--repeats`` times (default 3), so
a shared machine's changing load falls on both alike. The median wall time
gives the speedup ``t1 / t2`` and the parallel efficiency ``t1 / (2 t2)``; the
load average before and after is printed beside them.

One more run on 2 workers records the task stream and splits the compute time
by task prefix (``statistics``, ``combine``, ``solve``, ``write_tile``,
``read_images``, ``read_bounds``, ...); what the workers did not spend
computing is the scheduling/idle overhead ``1 - sum(compute) / (workers x
wall)``, split into the time workers wait between their tasks (scheduling
proper) and the time before a worker's first task and after its last (the
client's own serial work: the bounds round trip, creating the model store,
building the graph, finishing the store). The machine, tables and, with
``--json``, a JSON file are written.

    python pipelines/bench_scaling.py [--repeats 3] [--subjects 200]
        [--size 256] [--field 7] [--json results.json]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import distributed
from benchlib import machine

import dmask
import dmask.datasets.synthetic
from dmask.cluster.clients import ClusterOptions, connect
from dmask.io import dataset_store

WORKER_COUNTS = (1, 2)
#: Stored source faces and target faces by name.
Pairs = tuple[dataset_store.StoredImages, dict[str, dataset_store.StoredImages]]
LAM = 0.4


@contextlib.contextmanager
def local_client(n_workers: int) -> Iterator[distributed.Client]:
    """A LocalCluster of ``n_workers`` one-thread processes, warmed up."""
    options = ClusterOptions(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
    )
    with connect(options) as client:
        client.wait_for_workers(n_workers)
        client.run(importlib.import_module, "dmask.graph.fit_tasks")
        yield client


#: Seconds spent removing each run's model store after it (not in its time).
REMOVALS: list[float] = []


def fit_once(client: distributed.Client, pairs: Pairs, field: int, path: str) -> float:
    """Train neutral -> happy from the store on ``client``; the wall time.

    Each run writes a model store of its own (``path`` does not exist yet), then
    removes it outside its time: with ``overwrite`` into the last run's store,
    the run's time would include deleting a whole model (hundreds of files),
    which is not training and does not get faster with workers.
    """
    sources, targets = pairs
    with client.as_current():
        started = time.perf_counter()
        dmask.fit(sources, targets, field=field, lam=LAM, store=path)
        wall = time.perf_counter() - started
    started = time.perf_counter()
    shutil.rmtree(path)
    REMOVALS.append(time.perf_counter() - started)
    return wall


def key_prefix(key: Any) -> str:
    """The task's name up to the first ``-`` (``statistics-1f3e...``)."""
    name = key[0] if isinstance(key, tuple) else key
    return str(name).split("-")[0]


def compute_by_prefix(records: list[dict]) -> dict[str, dict[str, float]]:
    """Compute seconds and task counts per key prefix from task-stream records."""
    seconds: dict[str, float] = collections.defaultdict(float)
    counts: collections.Counter[str] = collections.Counter()
    for record in records:
        prefix = key_prefix(record["key"])
        counts[prefix] += 1
        for span in record.get("startstops", ()):
            if span.get("action") == "compute":
                seconds[prefix] += span["stop"] - span["start"]
    return {
        prefix: {"compute_s": seconds[prefix], "tasks": counts[prefix]}
        for prefix in sorted(seconds, key=seconds.get, reverse=True)
    }


def transfer_seconds(records: list[dict]) -> float:
    """Seconds workers spent fetching task inputs from each other."""
    return sum(
        span["stop"] - span["start"]
        for record in records
        for span in record.get("startstops", ())
        if span.get("action") == "transfer"
    )


def idle_between_tasks(records: list[dict]) -> float:
    """Worker-seconds idle between a worker's first and last compute spans.

    Time a worker waits for its next task while the job runs: the scheduling
    cost proper. The rest of the idle time lies before a worker's first task or
    after its last (the client's own work: bounds, store creation, graph).
    """
    spans: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    for record in records:
        for span in record.get("startstops", ()):
            if span.get("action") == "compute":
                spans[record["worker"]].append((span["start"], span["stop"]))
    idle = 0.0
    for worker_spans in spans.values():
        worker_spans.sort()
        reached = worker_spans[0][1]
        for start, stop in worker_spans[1:]:
            idle += max(0.0, start - reached)
            reached = max(reached, stop)
    return idle


def profile_fit(
    client: distributed.Client, pairs: Pairs, field: int, model_path: str
) -> dict[str, Any]:
    """One run with the task stream recorded: compute time by task prefix."""
    n_workers = len(client.scheduler_info()["workers"])
    with distributed.get_task_stream(client=client) as stream:
        wall = fit_once(client, pairs, field, model_path)
    records = stream.data
    by_prefix = compute_by_prefix(records)
    busy = sum(part["compute_s"] for part in by_prefix.values())
    return {
        "workers": n_workers,
        "wall_s": wall,
        "compute_s": busy,
        "transfer_s": transfer_seconds(records),
        "overhead": 1 - busy / (n_workers * wall),
        "between_tasks": idle_between_tasks(records) / (n_workers * wall),
        "by_prefix": by_prefix,
    }


def time_clusters(
    pairs: Pairs, field: int, repeats: int, folder: str
) -> list[dict[str, Any]]:
    """Median wall time of training on each cluster size; profile 2 workers.

    Both clusters are up together and their runs alternate (1, 2, 1, 2, ...),
    so a change in the machine's load meanwhile (other jobs on a shared
    machine) falls on both sizes alike; an idle cluster costs only heartbeats.
    """
    times: dict[int, list[float]] = {n: [] for n in WORKER_COUNTS}
    with contextlib.ExitStack() as stack:
        clients = {n: stack.enter_context(local_client(n)) for n in WORKER_COUNTS}
        runs = iter(range(10**6))

        def path(n: int) -> str:
            return os.path.join(folder, f"model{n}-{next(runs)}.zarr")

        for n, client in clients.items():  # a first run each: warm caches
            fit_once(client, pairs, field, path(n))
        for _ in range(repeats):
            for n, client in clients.items():
                times[n].append(fit_once(client, pairs, field, path(n)))
        profile = profile_fit(clients[2], pairs, field, path(2))
    return [
        {
            "workers": n,
            "times_s": times[n],
            "median_s": statistics.median(times[n]),
            "profile": profile if n == 2 else None,
        }
        for n in WORKER_COUNTS
    ]


def print_scaling(rows: list[dict[str, Any]], label: str) -> None:
    """Wall time, speedup and efficiency per cluster size."""
    base = rows[0]["median_s"]
    print(f"\n{'case':>28} {'workers':>7} {'median s':>9} {'speedup':>8} {'eff.':>6}")
    for row in rows:
        speedup = base / row["median_s"]
        print(
            f"{label:>28} {row['workers']:>7} {row['median_s']:9.2f} "
            f"{speedup:7.2f}x {speedup / row['workers']:6.0%}"
        )


def print_profile(profile: dict[str, Any]) -> None:
    """Compute time by task prefix of the profiled run."""
    wall, workers = profile["wall_s"], profile["workers"]
    print(
        f"\ntask stream, {workers} workers, wall {wall:.2f} s "
        f"(capacity {workers * wall:.2f} worker-s):"
    )
    print(f"{'prefix':>24} {'tasks':>6} {'compute s':>10} {'of capacity':>12}")
    for prefix, part in profile["by_prefix"].items():
        share = part["compute_s"] / (workers * wall)
        print(
            f"{prefix:>24} {part['tasks']:>6} {part['compute_s']:10.2f} {share:12.1%}"
        )
    print(f"{'transfers (not compute)':>24} {'':>6} {profile['transfer_s']:10.2f}")
    print(
        f"{'scheduling/idle overhead':>24} {'':>6} {'':>10} {profile['overhead']:12.1%}"
    )
    edges = profile["overhead"] - profile["between_tasks"]
    print(f"{'  between tasks':>24} {'':>6} {'':>10} {profile['between_tasks']:12.1%}")
    print(f"{'  before first, after last':>24} {'':>6} {'':>10} {edges:12.1%}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--subjects", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--field", type=int, default=7)
    parser.add_argument("--json", help="write results here")
    args = parser.parse_args(argv)
    info = machine()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    with tempfile.TemporaryDirectory(prefix="bench_scaling_") as folder:
        ds = dmask.datasets.synthetic.make_synthetic_dataset(
            os.path.join(folder, "faces.zarr"), args.subjects, (args.size, args.size)
        )
        pairs = dataset_store.stored_pairs(ds, "neutral", ["happy"], "train")
        n_pairs = pairs[0].shape[0]
        label = f"{args.size}x{args.size} N={n_pairs} r={args.field}"
        load = os.getloadavg()
        rows = time_clusters(pairs, args.field, args.repeats, folder)
        load_after = os.getloadavg()
    print(
        "load average (1, 5, 15 min) before "
        + ", ".join(f"{v:.1f}" for v in load)
        + "; after "
        + ", ".join(f"{v:.1f}" for v in load_after)
    )
    for row in rows:
        runs = ", ".join(f"{t:.2f}" for t in row["times_s"])
        print(f"{row['workers']} worker(s), each run (s): {runs}")
    removal = statistics.median(REMOVALS)
    print(f"removing a run's model store afterwards (not timed in it): {removal:.2f} s")
    print_scaling(rows, label)
    profile = rows[-1]["profile"]
    print_profile(profile)
    if args.json:
        result = {
            "machine": info,
            "case": {**vars(args), "train_pairs": n_pairs},
            "results": rows,
            "load_average": {"before": load, "after": load_after},
            "store_removal_s": REMOVALS,
            "speedup": rows[0]["median_s"] / rows[1]["median_s"],
        }
        result["efficiency"] = result["speedup"] / rows[1]["workers"]
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
