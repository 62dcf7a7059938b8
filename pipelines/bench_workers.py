"""Many-workers benchmark: graph and scheduler overhead at 1, 2, 16 and 64 workers.

A synthetic dataset (``--subjects`` subjects, default 40, of ``--size``
pixels, default 96 x 96, RGB) is written to a temporary store; ``dmask.fit``
trains neutral -> happy (r = ``--field``, default 3, lambda 0.4) from the
stored train split with small tiles (``--tile``, default 8 x 8) and sample
blocks (``--sample-block``, default 8): many tasks of a few milliseconds, so
that the scheduler's share shows. For each worker count (``--workers``,
default 1 2 16 64) a fresh cluster is started the way one is deployed: a
``dask scheduler`` process of its own (so its CPU time is the scheduler's
alone) and ``dask worker --nworkers N --nthreads 1 --memory-limit ...``
(workers forked from a server that imported dmask once; a worker is then
about 250 MB resident). dmask reaches it by its scheduler file, as
``dmask train --scheduler-file`` does. Each cluster trains three times:

1. a warm-up (kernels loaded in every worker);
2. the measured run: the scheduler process's CPU time before and after, less
   what it spends with no work (heartbeats, measured over ``--idle`` seconds
   before), over the tasks it ran = scheduler CPU per task;
3. the profiled run, with the task stream: tasks by name, tasks per tile, the
   mean task duration, and the idle share of the workers between their tasks.

The graph the fit sends is rebuilt beside it with the same plan and
serialised as the client serialises it (bytes per task, and per task name).
Every model must equal the 1-worker model bit for bit (and the threaded
in-process one); a difference fails the benchmark.

From the scheduler CPU per task ``c``, the background CPU per heartbeat and
the mean task duration ``d``, it projects where one scheduler saturates: ``W``
busy one-thread workers ask for ``W / d`` tasks a second, which costs the
scheduler ``W c / d`` of a core, plus their heartbeats; the scheduler is one
thread, so it stops scaling where that reaches one core.

On a 2-core machine 16 and 64 worker processes are oversubscribed: their wall
times and idle shares measure contention for the cores, not scaling; the
per-task figures (scheduler CPU, graph bytes, tasks per tile) are what carry
over to a real cluster.

    python pipelines/bench_workers.py [--workers 1 2 16 64] [--subjects 40]
        [--size 96] [--tile 8 8] [--sample-block 8] [--memory-limit 320MiB]
        [--json results.json]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import distributed
import numpy as np
import psutil
from bench_scaling import compute_by_prefix, idle_between_tasks, key_prefix
from benchlib import machine

import dmask
import dmask.datasets.synthetic
from dmask.cluster.clients import ClusterOptions, connect
from dmask.core import minmax, planning
from dmask.graph import training
from dmask.io import dataset_store

LAM = 0.4
TARGET = "happy"
#: What a ``dask worker`` process runs: its workers forked from a server that
#: has imported dmask's tasks (distributed's ``forkserver`` method), instead
#: of each importing numba, xarray and zarr afresh (a second or more of a
#: core per worker, 64 times over).
WORKER_CODE = """
import sys, dask
dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"})
from distributed.utils import get_mp_context
get_mp_context().set_forkserver_preload(["distributed", "dmask.graph.fit_tasks"])
from distributed.cli.dask_worker import main
sys.argv[0] = "dask worker"
main()
"""


def dask_command() -> str:
    """The ``dask`` command of this environment."""
    here = os.path.join(os.path.dirname(sys.executable), "dask")
    return here if os.path.exists(here) else shutil.which("dask") or "dask"


@contextlib.contextmanager
def cluster(n_workers: int, memory_limit: str, folder: str) -> Iterator[Any]:
    """A scheduler process and ``n_workers`` one-thread workers; a dmask client."""
    scheduler_file = os.path.join(folder, f"scheduler-{n_workers}.json")
    log = open(os.path.join(folder, f"cluster-{n_workers}.log"), "w")
    listen = ["--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0"]
    scheduler = subprocess.Popen(
        [dask_command(), "scheduler", "--port", "0", "--scheduler-file",
         scheduler_file, *listen],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    workers = None
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(scheduler_file):
            if scheduler.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the scheduler did not start; see {log.name}")
            time.sleep(0.1)
        workers = subprocess.Popen(
            [sys.executable, "-c", WORKER_CODE, "--scheduler-file", scheduler_file,
             "--nworkers", str(n_workers), "--nthreads", "1", "--memory-limit",
             memory_limit, "--no-dashboard", "--host", "127.0.0.1"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        options = ClusterOptions(scheduler_file=scheduler_file)
        with connect(options) as client:
            client.wait_for_workers(n_workers, timeout=600)
            yield client
    finally:
        for process in (workers, scheduler):
            if process is not None:
                process.terminate()
        for process in (workers, scheduler):
            if process is not None:
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
        log.close()


def scheduler_cpu(client: distributed.Client) -> float:
    """CPU seconds (user + system) the scheduler process has used so far."""
    return client.run_on_scheduler(lambda: time.process_time())


def fit(client: distributed.Client, pairs: Any, args: Any, path: str) -> dmask.Model:
    sources, targets = pairs
    with client.as_current():
        return dmask.fit(
            sources, targets, field=args.field, lam=LAM, store=path, overwrite=True,
            tile_shape=tuple(args.tile), sample_block=args.sample_block,
        )  # fmt: skip


def graph_size(
    client: distributed.Client, pairs: Any, args: Any, path: str
) -> dict[str, Any]:
    """The fit's tile graph, rebuilt with its plan: tasks and serialised bytes.

    Serialised as ``Client.compute`` does before sending (the collections as
    one expression, optimised, through distributed's serialisation); the low-
    level graph's tasks are also pickled one by one, for bytes per task name.
    """
    import cloudpickle
    from dask._expr import FinalizeCompute
    from dask.base import collections_to_expr
    from distributed.protocol import serialize, to_serialize
    from distributed.utils import nbytes

    sources, targets = pairs
    stored = list(targets.values())
    n, height, width, channels = sources.shape
    plan = planning.plan_fit(
        n, (height, width), channels, args.field, len(stored),
        tile_shape=tuple(args.tile), sample_block=args.sample_block,
    )  # fmt: skip
    read = dataset_store.read_images
    source_bounds = minmax.sample_bounds(read(sources.path, sources.index))
    target_bounds = [minmax.sample_bounds(read(t.path, t.index)) for t in stored]
    with client.as_current():
        started = time.perf_counter()
        tasks = training.fit_tiles(
            sources, stored, source_bounds, target_bounds, plan, args.field, LAM,
            store=path,
        )  # fmt: skip
        expr = FinalizeCompute(collections_to_expr(tasks, True)).optimize()
        header, frames = serialize(to_serialize(expr), on_error="raise")
        serialised = sum(map(nbytes, [header, *frames]))
        seconds = time.perf_counter() - started
    graph = dict(expr.__dask_graph__())
    by_name: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for key, task in graph.items():
        entry = by_name[key_prefix(key)]
        entry[0] += 1
        entry[1] += len(cloudpickle.dumps(task))
    n_tasks = sum(count for count, _ in by_name.values())
    return {
        "tiles": len(plan.tiles),
        "blocks": len(plan.blocks),
        "tasks": n_tasks,
        "tasks_per_tile": n_tasks / len(plan.tiles),
        "bytes": serialised,
        "bytes_per_task": serialised / n_tasks,
        "build_and_serialise_s": seconds,
        "by_name": {k: {"tasks": c, "bytes": b} for k, (c, b) in by_name.items()},
        "planned": planning.graph_tasks(plan, len(stored)),
    }


def worker_memory(client: distributed.Client) -> dict[str, float]:
    """Resident and unique (not shared with other processes) MiB per worker."""

    def memory() -> tuple[int, int]:
        import psutil

        info = psutil.Process().memory_full_info()
        return info.rss, info.uss

    values = list(client.run(memory).values())
    rss = [v[0] / 2**20 for v in values]
    uss = [v[1] / 2**20 for v in values]
    return {
        "rss_mean_mib": float(np.mean(rss)),
        "uss_mean_mib": float(np.mean(uss)),
        "uss_total_gib": float(np.sum(uss) / 1024),
    }


def measure(n_workers: int, pairs: Any, args: Any, folder: str) -> dict[str, Any]:
    """Start a cluster of ``n_workers``, train three times, measure the overhead."""
    path = os.path.join(folder, f"model{n_workers}.zarr")
    started = time.perf_counter()
    with cluster(n_workers, args.memory_limit, folder) as client:
        start_s = time.perf_counter() - started
        fit(client, pairs, args, path)  # warm-up: kernels loaded everywhere
        graph = graph_size(client, pairs, args, os.path.join(folder, "unused.zarr"))
        time.sleep(1)
        before = scheduler_cpu(client)
        time.sleep(args.idle)
        idle_rate = (scheduler_cpu(client) - before) / args.idle
        before = scheduler_cpu(client)
        t0 = time.perf_counter()
        fit(client, pairs, args, path)
        wall = time.perf_counter() - t0
        cpu = scheduler_cpu(client) - before
        with distributed.get_task_stream(client=client) as stream:
            t0 = time.perf_counter()
            model = fit(client, pairs, args, path)
            profiled_wall = time.perf_counter() - t0
        records = stream.data
        memory = worker_memory(client)
        weights = np.asarray(model.weights(TARGET))
        bias = np.asarray(model.bias(TARGET))
    tasks = len(records)
    by_prefix = compute_by_prefix(records)
    busy = sum(part["compute_s"] for part in by_prefix.values())
    used = {r["worker"] for r in records}
    return {
        "workers": n_workers,
        "workers_used": len(used),
        "start_s": start_s,
        "wall_s": wall,
        "scheduler_cpu_s": cpu,
        "scheduler_idle_cpu_per_s": idle_rate,
        "tasks_run": tasks,
        "scheduler_cpu_per_task_s": cpu / tasks,
        "scheduler_net_cpu_per_task_s": max(0.0, cpu - idle_rate * wall) / tasks,
        "task_mean_s": busy / tasks,
        "profiled_wall_s": profiled_wall,
        "between_tasks": idle_between_tasks(records) / (n_workers * profiled_wall),
        "overhead": 1 - busy / (n_workers * profiled_wall),
        "by_prefix": by_prefix,
        "graph": graph,
        "memory": memory,
        "weights": weights,
        "bias": bias,
    }


def saturation(cost: float, fixed: float, heartbeat: float, task_s: float) -> int:
    """Workers at which one scheduler core is busy all the time.

    ``W`` one-thread workers running tasks of ``task_s`` seconds ask for
    ``W / task_s`` tasks a second (``cost`` CPU seconds each) and send
    heartbeats at distributed's rate for ``W`` workers (``heartbeat`` CPU
    seconds each), on top of the scheduler's own ``fixed`` share of a core.
    """
    from distributed.scheduler import heartbeat_interval

    workers = 1
    while workers < 10**7:
        beats = workers / heartbeat_interval(workers)
        if fixed + workers * cost / task_s + heartbeat * beats >= 1:
            return workers
        workers = max(workers + 1, int(workers * 1.01))
    return workers


def print_results(rows: list[dict[str, Any]], label: str) -> None:
    print(f"\n{label}")
    print(
        f"{'workers':>7} {'used':>5} {'start s':>8} {'wall s':>7} {'tasks':>6} "
        f"{'tasks/tile':>10} {'graph B/task':>12} {'sched CPU s':>11} "
        f"{'ms/task':>8} {'net ms/task':>11} {'idle CPU %':>10} "
        f"{'between':>8} {'task ms':>8} {'worker MiB':>10} {'all GiB':>8} {'same':>5}"
    )
    for row in rows:
        graph, memory = row["graph"], row["memory"]
        print(
            f"{row['workers']:>7} {row['workers_used']:>5} {row['start_s']:8.1f} "
            f"{row['wall_s']:7.2f} {row['tasks_run']:>6} "
            f"{graph['tasks_per_tile']:10.2f} {graph['bytes_per_task']:12.0f} "
            f"{row['scheduler_cpu_s']:11.2f} "
            f"{1e3 * row['scheduler_cpu_per_task_s']:8.3f} "
            f"{1e3 * row['scheduler_net_cpu_per_task_s']:11.3f} "
            f"{100 * row['scheduler_idle_cpu_per_s']:10.2f} "
            f"{row['between_tasks']:8.1%} {1e3 * row['task_mean_s']:8.2f} "
            f"{memory['uss_mean_mib']:10.0f} {memory['uss_total_gib']:8.2f} "
            f"{'yes' if row['identical'] else 'NO':>5}"
        )
    print(
        "\nused: workers that ran tasks; wall: the measured fit (bounds pass, store "
        "and tiles); tasks: all the scheduler ran for it; graph B/task: the tile "
        "graph as the client serialises it; sched CPU: the scheduler process's CPU "
        "over the fit, ms/task of it, net of its idle CPU (heartbeats: idle CPU %, "
        "a share of one core); between: share of the workers' time idle between "
        "their tasks (task stream); task ms: mean task duration; worker MiB: memory "
        "unique to each worker process (USS), all GiB: their sum; same: model "
        "bit-identical to 1 worker's and to the threaded in-process one."
    )
    print(
        f"\nOn this machine ({os.cpu_count()} cores) 16 and 64 one-thread workers "
        "are oversubscribed: their wall times, idle shares and task durations "
        "measure contention for the cores, not scaling. The per-task figures "
        "(scheduler CPU, graph bytes, tasks per tile) carry over to a real cluster."
    )
    graph = rows[0]["graph"]
    print(
        f"\ntile graph by task name ({graph['tiles']} tiles, {graph['blocks']} "
        "sample blocks; identical for every worker count):"
    )
    print(f"{'task':>20} {'tasks':>6} {'per tile':>8} {'pickled B/task':>14}")
    for name, entry in sorted(graph["by_name"].items()):
        print(
            f"{name:>20} {entry['tasks']:>6} {entry['tasks'] / graph['tiles']:8.2f} "
            f"{entry['bytes'] / entry['tasks']:14.0f}"
        )


def print_projection(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Where one scheduler saturates, from the measured per-task figures."""
    from distributed.scheduler import heartbeat_interval

    # per task: the largest net CPU measured (the most contended run's)
    cost = max(row["scheduler_net_cpu_per_task_s"] for row in rows)
    # idle CPU = a fixed share + a cost per heartbeat (distributed's rate for W)
    beats = np.array([r["workers"] / heartbeat_interval(r["workers"]) for r in rows])
    idle = np.array([r["scheduler_idle_cpu_per_s"] for r in rows])
    if len(set(beats)) > 1:
        heartbeat, fixed = np.polyfit(beats, idle, 1)
    else:
        heartbeat, fixed = float(idle[0] / beats[0]), 0.0
    heartbeat, fixed = max(0.0, float(heartbeat)), max(0.0, float(fixed))
    single = next(row for row in rows if row["workers"] == 1)
    measured_task = single["task_mean_s"]
    print(
        f"\nprojection: one scheduler (one thread) handles about {1 / cost:,.0f} "
        f"tasks/s at {1e3 * cost:.2f} ms of CPU per task; idle, it spends "
        f"{100 * fixed:.1f}% of a core plus {1e6 * heartbeat:.0f} us per heartbeat "
        f"(distributed's rate: {heartbeat_interval(64):g} s apart at 64 workers, "
        f"{heartbeat_interval(1000):g} s at 1000)."
    )
    print(f"{'task duration':>22} {'workers at saturation':>22}")
    projection = {}
    durations = [("this benchmark's", measured_task), ("", 0.1), ("", 1.0), ("", 10.0)]
    for what, seconds in durations:
        workers = saturation(cost, fixed, heartbeat, seconds)
        projection[f"{seconds:g}"] = workers
        name = f"{what} {1e3 * seconds:.1f} ms" if what else f"{seconds:g} s"
        print(f"{name:>22} {workers:>22,}")
    print(
        "Beyond that many workers the scheduler, not the workers, sets the pace: "
        "tasks per second stay at its limit while workers wait. Larger tiles make "
        "longer tasks (statistics and solve grow with the tile's pixels, the "
        "scheduler's cost per task does not), which moves the limit up."
    )
    return {
        "scheduler_tasks_per_s": 1 / cost,
        "cpu_per_task_s": cost,
        "cpu_per_heartbeat_s": heartbeat,
        "idle_cpu_share": fixed,
        "task_s": measured_task,
        "saturation_workers": projection,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit code (1 if a model differs)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 16, 64])
    parser.add_argument("--subjects", type=int, default=40)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--field", type=int, default=3)
    parser.add_argument("--tile", type=int, nargs=2, default=[8, 8])
    parser.add_argument("--sample-block", type=int, default=8)
    parser.add_argument("--memory-limit", default="320MiB", help="per worker")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds idle")
    parser.add_argument("--json", help="write results here")
    args = parser.parse_args(argv)
    info = machine()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    available = psutil.virtual_memory().available / 2**30
    print(f"memory available at the start: {available:.1f} GiB")
    if 1 not in args.workers:
        parser.error("--workers must include 1 (the reference model)")
    with tempfile.TemporaryDirectory(prefix="bench_workers_") as folder:
        ds = dmask.datasets.synthetic.make_synthetic_dataset(
            os.path.join(folder, "faces.zarr"), args.subjects, (args.size, args.size)
        )
        pairs = dataset_store.stored_pairs(ds, "neutral", [TARGET], "train")
        threaded = dmask.fit(
            *pairs, field=args.field, lam=LAM, tile_shape=tuple(args.tile),
            sample_block=args.sample_block,
        )  # fmt: skip
        rows = []
        for n in sorted(args.workers):
            print(f"{n} workers ...", flush=True)
            rows.append(measure(n, pairs, args, folder))
    n_pairs = pairs[0].shape[0]
    reference = rows[0]
    for row in rows:
        row["identical"] = bool(
            np.array_equal(row["weights"], reference["weights"])
            and np.array_equal(row["bias"], reference["bias"])
            and np.array_equal(row["weights"], threaded.weights(TARGET))
            and np.array_equal(row["bias"], threaded.bias(TARGET))
        )
    label = (
        f"{args.size}x{args.size} RGB, N={n_pairs}, r={args.field}, tiles "
        f"{args.tile[0]}x{args.tile[1]}, sample blocks of {args.sample_block}, "
        f"one-thread workers, memory limit {args.memory_limit} each"
    )
    print_results(rows, label)
    projection = print_projection(rows)
    if args.json:
        for row in rows:
            del row["weights"], row["bias"]
        result = {
            "machine": info,
            "case": {**vars(args), "train_pairs": n_pairs},
            "results": rows,
            "projection": projection,
        }
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return 0 if all(row["identical"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
