"""Large images: 2048 x 2048 RGB trained end to end, and the plan of 4096 x 4096.

Generates a paired dataset store of synthetic faces drawn at full size (``N``
subjects, neutral and happy, RGB uint8; one sample block of chunks at a time
per process, never the whole dataset in memory), trains ``r = 5`` on a
LocalCluster of worker processes from the store to a model store, and reports:

- each worker's resident memory (RSS) sampled through the run, against the
  number of sample blocks processed (flat: it does not grow with them), and
  its peak;
- the wall time and the seconds and rates of each phase (from the tasks'
  own start and stop times on the workers);
- ``dmask train --plan``'s estimate for the same run (rates calibrated on this
  machine in seconds) against the measurement, and again with the rates the
  run measured;
- the plan of a 4096 x 4096 dataset on 100 workers (a store holding the
  metadata of one, no pixels) with the rates the 2048 run measured.

    python pipelines/bench_large.py [--size 2048] [--subjects 200] [--field 5] \\
        [--sample-block 25] [--workers 2] [--memory-limit 4GB] [--folder DIR] \\
        [--plan-size 4096] [--plan-workers 100] [--json results.json]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import tempfile
import threading
import time
from collections import defaultdict

import numpy as np
from benchlib import machine
from dask.utils import key_split

import dmask
from dmask.cli import main as cli
from dmask.cluster.clients import ClusterOptions, connect, peak_worker_memory
from dmask.datasets.synthetic import render_and_write
from dmask.io import dataset_store, stores

SEED = 0
#: Samples per chunk of the generated store (and per training sample block).
CHUNK_SAMPLES = 25
#: Spatial chunk side, as ``dmask synth`` and ``dmask ingest`` write.
CHUNK_SIDE = 128


def _template(path: str, n_subjects: int, size: int) -> str:
    """A dataset store's metadata: neutral and happy faces of ``n_subjects``."""
    names = [f"s{i:05d}" for _ in range(2) for i in range(n_subjects)]
    expressions = [e for e in ("neutral", "happy") for _ in range(n_subjects)]
    return dataset_store.create_dataset_template(
        path,
        (2 * n_subjects, size, size, 3),
        (CHUNK_SAMPLES, CHUNK_SIDE, CHUNK_SIDE, 3),
        {"subject": names, "expression": expressions, "split": ["train"] * len(names)},
        {
            "origin": "dmask synthetic faces (bench_large)",
            "seed": SEED,
            "n_subjects": n_subjects,
            "value_range": [0, 255],
        },
        overwrite=True,
    )


def generate(path: str, n_subjects: int, size: int, processes: int) -> float:
    """Draw the faces block by block in ``processes`` processes; seconds taken.

    Samples are expression-major (all neutral faces, then all happy ones), as
    :func:`dmask.datasets.synthetic.render_samples` draws them.
    """
    started = time.perf_counter()
    written = _template(path, n_subjects, size)
    n = 2 * n_subjects
    blocks = [(s, min(n, s + CHUNK_SAMPLES)) for s in range(0, n, CHUNK_SAMPLES)]
    with concurrent.futures.ProcessPoolExecutor(processes) as pool:
        jobs = [
            pool.submit(render_and_write, str(written), SEED, n_subjects, s0, s1,
                        size, size)
            for s0, s1 in blocks
        ]  # fmt: skip
        for done, job in enumerate(concurrent.futures.as_completed(jobs), 1):
            job.result()
            print(
                f"  drawn {done}/{len(blocks)} blocks "
                f"({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    stores.finalize_store(written)
    return time.perf_counter() - started


def metadata_store(path: str, n_subjects: int, size: int) -> str:
    """A dataset store with the metadata of ``size`` x ``size`` faces, no pixels.

    For ``dmask train --plan``, which reads metadata only.
    """
    written = _template(path, n_subjects, size)
    stores.finalize_store(written, note="metadata only: no pixels were written")
    return str(written)


def folder_bytes(path: str) -> int:
    """Bytes of the files under ``path``."""
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, files in os.walk(path)
        for name in files
    )


class MemorySampler:
    """Polls every worker's resident memory (RSS) on a thread while open."""

    def __init__(self, client: object, interval: float = 1.0) -> None:
        self.client = client
        self.interval = interval
        self.samples: list[tuple[float, dict[str, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        def rss() -> int:
            import psutil

            return int(psutil.Process().memory_info().rss)

        while not self._stop.wait(self.interval):
            try:
                self.samples.append((time.time(), self.client.run(rss)))
            except Exception:  # a worker going away: a gap in the samples
                continue

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def phase_seconds(tasks: list[dict]) -> tuple[dict[str, float], dict[str, int]]:
    """Compute seconds and counts of the tasks by name (the task stream's)."""
    seconds: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for task in tasks:
        name = key_split(task["key"])
        counts[name] += 1
        for part in task.get("startstops", ()):
            if part["action"] == "compute":
                seconds[name] += part["stop"] - part["start"]
    return dict(seconds), dict(counts)


def memory_course(
    samples: list[tuple[float, dict[str, int]]], tasks: list[dict], rows: int = 12
) -> list[dict]:
    """RSS per worker against statistics tasks (sample blocks) done by then."""
    finished = sorted(
        max(p["stop"] for p in t["startstops"])
        for t in tasks
        if key_split(t["key"]) in ("statistics", "statistics_and_solve")
    )
    if not samples:
        return []
    step = max(1, len(samples) // rows)
    course = []
    for at, by_worker in [*samples[::step], samples[-1]]:
        course.append({
            "time": at,
            "blocks_done": int(np.searchsorted(finished, at)),
            "rss_mib": {w: v / 2**20 for w, v in sorted(by_worker.items())},
        })  # fmt: skip
    return course


def _plan(args: list[str]) -> dict:
    """``dmask train --plan`` (printed) and its JSON."""
    path = tempfile.mktemp(suffix=".json")
    code = cli([*args, "--plan", "--json", path])
    if code != 0:
        raise SystemExit(f"dmask train --plan failed ({code})")
    with open(path) as handle:
        plan = json.load(handle)
    os.remove(path)
    return plan


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--subjects", type=int, default=200, help="training pairs")
    parser.add_argument("--field", type=int, default=5)
    parser.add_argument("--sample-block", type=int, default=CHUNK_SAMPLES)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="4GB")
    parser.add_argument("--folder", help="where the stores go (default: temporary)")
    parser.add_argument("--keep", action="store_true", help="keep the stores")
    parser.add_argument("--plan-size", type=int, default=4096)
    parser.add_argument("--plan-workers", type=int, default=100)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)

    print("machine:", json.dumps(machine()))
    folder = args.folder or tempfile.mkdtemp(prefix="dmask-large-")
    os.makedirs(folder, exist_ok=True)
    faces = os.path.join(folder, f"faces-{args.size}-{args.subjects}.zarr")
    model = os.path.join(folder, "model.zarr")
    results: dict = {"machine": machine(), "size": args.size, "n": args.subjects,
                     "field": args.field, "workers": args.workers,
                     "memory_limit": args.memory_limit}  # fmt: skip
    try:
        try:
            dataset_store.open_dataset(faces)
            print(f"dataset: {faces} (already there)")
        except dmask.StoreError:
            print(f"dataset: drawing {2 * args.subjects} faces of {args.size}^2 "
                  f"RGB into {faces}", flush=True)  # fmt: skip
            results["generate_s"] = generate(faces, args.subjects, args.size, 2)
        results["dataset_bytes_on_disk"] = folder_bytes(faces)
        print(f"dataset on disk: {results['dataset_bytes_on_disk'] / 1e9:.2f} GB")

        settings = ["--field", str(args.field), "--targets", "happy",
                    "--sample-block", str(args.sample_block)]  # fmt: skip
        cluster = ["--workers", str(args.workers), "--threads-per-worker", "1",
                   "--memory-limit", args.memory_limit]  # fmt: skip
        print("\n== the plan, rates calibrated here ==", flush=True)
        plan = _plan(["train", faces, "--out", model, *settings, *cluster])
        results["plan_calibrated"] = plan

        print("\n== the run ==", flush=True)
        options = ClusterOptions(
            n_workers=args.workers, threads_per_worker=1,
            memory_limit=args.memory_limit, dashboard_address=":0", processes=True,
        )  # fmt: skip
        from distributed import get_task_stream

        ds = dataset_store.open_dataset(faces)
        sources, targets = dataset_store.stored_pairs(ds, "neutral", ["happy"], None)
        with connect(options) as client:
            with (
                MemorySampler(client) as sampler,
                get_task_stream(client=client) as stream,
                dmask.set_options(progress=False),
            ):
                started = time.perf_counter()
                trained = dmask.fit(
                    sources, targets, field=args.field, store=model, overwrite=True,
                    sample_block=args.sample_block,
                )  # fmt: skip
                wall = time.perf_counter() - started
            peak = peak_worker_memory(client)
            tasks = stream.data
        assert list(trained.tile_shape) == plan["tile"]["shape"]
        seconds, counts = phase_seconds(tasks)
        course = memory_course(sampler.samples, tasks)
        fit_names = set(plan["tasks"]["fit"]) | set(plan["tasks"]["bounds"])
        counted = {k: v for k, v in counts.items() if k in fit_names}
        results.update(
            train_s=wall, peak_worker_bytes=peak, phase_seconds=seconds,
            task_counts=counts, memory_course=course,
            model_bytes_on_disk=folder_bytes(model),
        )  # fmt: skip
        print(f"trained in {wall:.1f} s; peak worker memory (ru_maxrss) "
              f"{peak / 2**20:.0f} MiB; model on disk "
              f"{results['model_bytes_on_disk'] / 1e9:.2f} GB")  # fmt: skip
        planned = {**plan["tasks"]["fit"], **plan["tasks"]["bounds"]}
        print(
            f"tasks run {sum(counted.values()):,} (planned "
            f"{plan['tasks']['total']:,}; per name equal: {counted == planned})"
        )
        print("memory per worker (RSS, MiB) against sample blocks processed:")
        total_blocks = plan["tile"]["count"] * plan["sample_block"]["count"]
        for row in course:
            rss = "  ".join(f"{v:7.0f}" for v in row["rss_mib"].values())
            print(f"  t {row['time'] - course[0]['time']:6.0f} s  blocks "
                  f"{row['blocks_done']:6,}/{total_blocks:,}  {rss}")  # fmt: skip
        half = [r for r in course if r["blocks_done"] >= total_blocks // 2]
        early = [r for r in course if 0 < r["blocks_done"] < total_blocks // 2]
        if half and early:
            late_max = max(max(r["rss_mib"].values()) for r in half)
            early_max = max(max(r["rss_mib"].values()) for r in early)
            print(
                f"  largest RSS, first half of the blocks {early_max:.0f} MiB, "
                f"second half {late_max:.0f} MiB"
            )
            results["rss_first_half_mib"], results["rss_second_half_mib"] = (
                early_max, late_max,
            )  # fmt: skip

        flops = plan["flops"]
        read = seconds.get("read_images", 0) + seconds.get("read_bounds", 0)
        stats_s = seconds.get("statistics", 0) + seconds.get("statistics_and_solve", 0)
        compute = sum(seconds.values())
        slots = args.workers
        overhead = max(1e-4, (wall - compute / slots) / max(1, len(tasks)))
        measured = {
            "statistics_flops": flops["statistics"] / stats_s,
            "combine_flops": flops["combine"] / max(seconds.get("combine", 0), 1e-9),
            "solve_flops": flops["solve"] / max(seconds.get("solve", 0), 1e-9),
            "read_bytes": (plan["read_bytes"]["fit"] + plan["read_bytes"]["bounds"])
            / read,
            "write_bytes": plan["model_store_bytes"] / seconds["write_tile"],
            "task_overhead": overhead,
        }
        results["measured_rates"] = measured
        rates_path = os.path.join(folder, f"rates-{args.size}.json")
        with open(rates_path, "w") as handle:
            json.dump(measured, handle, indent=2)
        print("phases (thread-seconds of compute; rate per thread):")
        for name in ("read_bounds", "read_images", "statistics", "combine", "solve",
                     "write_tile"):  # fmt: skip
            done = counts.get(name, 0)
            print(f"  {name:<14} {seconds.get(name, 0):8.1f} s  {done:7,} tasks")
        print(f"  rates: statistics {measured['statistics_flops'] / 1e9:.2f}, combine "
              f"{measured['combine_flops'] / 1e9:.2f}, solve "
              f"{measured['solve_flops'] / 1e9:.2f} GFLOP/s; read "
              f"{measured['read_bytes'] / 1e6:.0f}, write "
              f"{measured['write_bytes'] / 1e6:.0f} MB/s; "
              f"{overhead * 1e3:.2f} ms per task beyond the compute")  # fmt: skip

        print("\n== the plan again, with the rates this run measured ==", flush=True)
        replan = _plan(["train", faces, "--out", model, *settings, *cluster,
                        "--plan-rates", rates_path])  # fmt: skip
        results["plan_measured_rates"] = replan
        calibrated = plan["estimate_seconds"]["total"]
        remeasured = replan["estimate_seconds"]["total"]
        print(f"\nestimate with calibrated rates {calibrated:.0f} s, with the run's "
              f"rates {remeasured:.0f} s; measured {wall:.0f} s "
              f"(calibrated/measured {calibrated / wall:.2f})")  # fmt: skip

        print(f"\n== the plan of {args.plan_size}^2 on {args.plan_workers} workers, "
              f"the {args.size}^2 run's rates ==", flush=True)  # fmt: skip
        big = metadata_store(
            os.path.join(folder, f"faces-{args.plan_size}-meta.zarr"),
            args.subjects, args.plan_size,
        )  # fmt: skip
        many = ["--workers", str(args.plan_workers), "--threads-per-worker", "1",
                "--memory-limit", args.memory_limit]  # fmt: skip
        given = ["--plan-rates", rates_path]
        results["plan_large"] = _plan(["train", big, "--out", model, *settings,
                                       *many, *given])  # fmt: skip
        print(f"\n== the plan of {args.plan_size}^2 on {args.workers} workers "
              "(this machine), the same rates ==", flush=True)  # fmt: skip
        results["plan_large_here"] = _plan(["train", big, "--out", model,
                                            *settings, *cluster, *given])  # fmt: skip
        if args.json:
            with open(args.json, "w") as handle:
                json.dump(results, handle, indent=2, default=str)
            print(f"written: {args.json}")
    finally:
        shutil.rmtree(model, ignore_errors=True)
        if not args.keep and not args.folder:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
