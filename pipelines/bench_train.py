"""Training benchmark: dmask.fit against a straightforward baseline, in one process.

The baseline is written for this benchmark the way the reference code works,
without its dense masks: for every pixel and channel, the window values of all
training images are extracted and one ``numpy.linalg.solve`` is called. Both
run here on synthetic faces (neutral -> happy, and five more targets when
``targets`` is 6); dmask runs on dask's threaded scheduler with one thread per
core. Figures are medians of ``--repeats`` runs (of more for dmask's short jobs,
about a second of them), the two methods' runs interleaved so that both meet the
same moments of a shared machine. The baseline runs with one BLAS
thread: its per-pixel products are too small to gain from more, and with two it
measured 1.2 to 2 times slower and far noisier (r = 11: 4.4 to 8.2 s against
3.7 to 4.0 s), so one thread is its fairest setting.

One more dmask run, traced, breaks the task time down by phase (statistics,
combine, solve, write: ``dmask.graph.timing.phase_seconds``); what is left of
``threads x wall`` is scheduling and idle time, the main thread's work before and
after the tasks included. The inputs are in memory, so there is no reading; reading from
a store is timed by ``bench_scaling.py``. Memory: the peak of a new process
that makes a case's data and trains it once, and the rise of this process's
resident memory during the traced run. The FLOP rate counts the FLOPs of the
straightforward method (``2N(k+1)^2`` for the Gram matrix, ``2N(k+1)T`` for the
right-hand sides, ``(2/3)(k+1)^3 + 2(k+1)^2 T`` for the solve, per pixel and
channel) divided by dmask's wall time, as a fraction of this machine's measured
GEMM rate on all cores.

Roofline: the least time this machine allows for the case (``benchlib``: the
images read once and the weights written once at the memory bandwidth, or
the FLOPs of dmask's displacement sums and Cholesky solves at the GEMM rate,
whichever is longer; both rates measured at the start of this run); "of
roofline" is that time over dmask's wall time.

    python pipelines/bench_train.py                     # the issue's target cases
    python pipelines/bench_train.py --suite grid --sizes 64 128 256 --fields 1 3 7
    python pipelines/bench_train.py --json results.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict

import dask
import numpy as np
import psutil
from benchdata import Case, faces
from benchlib import machine, machine_limits, roofline, train_work
from threadpoolctl import threadpool_limits

import dmask
from dmask.core import minmax
from dmask.graph import timing

TARGET_CASES = [
    Case(128, 200, 3, 1, 1),
    Case(128, 200, 11, 1, 1),
    Case(128, 200, 3, 3, 1),
    Case(256, 200, 7, 3, 1),
    Case(256, 200, 7, 3, 6),
    Case(512, 200, 7, 3, 1),
    Case(128, 2000, 3, 1, 1),
]


class PeakMemory:
    """Sample this process's resident memory in a thread; report the peak rise."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.process = psutil.Process()
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        self.start = self.peak = self.process.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def rise(self) -> int:
        """Bytes above the resident memory at entry."""
        return self.peak - self.start


def straightforward_fit(
    sources: np.ndarray, targets: dict[str, np.ndarray], field: int, lam: float
) -> np.ndarray:
    """One window extraction and one numpy.linalg.solve per pixel and channel."""
    x = minmax.normalize_block(sources, *minmax.minmax_parameters(sources))
    t = np.stack(
        [
            minmax.normalize_block(v, *minmax.minmax_parameters(v))
            for v in targets.values()
        ],
        axis=-1,
    )
    b = field // 2
    n, height, width, channels = x.shape
    padded = np.pad(x, ((0, 0), (b, b), (b, b), (0, 0)))
    ones = np.ones((n, 1))
    ridge = lam * np.eye(field * field + 1)
    out = np.empty((height, width, channels, field * field + 1, t.shape[-1]))
    for i in range(height):
        for j in range(width):
            for c in range(channels):
                window = padded[:, i : i + field, j : j + field, c].reshape(n, -1)
                design = np.concatenate([window, ones], axis=1)
                out[i, j, c] = np.linalg.solve(
                    design.T @ design + ridge, design.T @ t[:, i, j, c]
                )
    return out


def straightforward_flops(case: Case) -> dict[str, float]:
    """FLOPs of the straightforward method for a case: Gram (with the
    right-hand sides), solve, and their total."""
    k1 = case.field**2 + 1
    systems = case.size**2 * case.channels
    gram = (2 * case.n * k1**2 + 2 * case.n * k1 * case.targets) * systems
    solve = ((2 / 3) * k1**3 + 2 * k1**2 * case.targets) * systems
    return {"gram": gram, "solve": solve, "total": gram + solve}


def baseline_runs(case: Case, sources, targets, repeats: int, max_s: float) -> int:
    """Runs of the straightforward method that fit ``max_s`` (0: skip it), from
    its time on a 16 x 16 crop scaled to the case's size."""
    crop = (slice(None), slice(0, 16), slice(0, 16))
    with threadpool_limits(limits=1, user_api="blas"):
        started = time.perf_counter()
        straightforward_fit(
            sources[crop], {k: v[crop] for k, v in targets.items()}, case.field, 0.4
        )
    estimate = (time.perf_counter() - started) * (case.size / 16) ** 2
    if estimate > max_s:
        return 0
    return repeats if estimate * repeats <= max_s else 1


def time_case(
    case: Case,
    sources,
    targets,
    repeats: int,
    threads: int,
    max_s: float,
    method: str = "auto",
) -> tuple[dict, dict]:
    """Time dmask.fit and the straightforward method on a case, interleaved.

    Rounds alternate one run of the straightforward method (while its runs fit
    ``max_s``) with runs of dmask (``repeats`` rounds; in all, about a second
    of dmask runs where they are short), so that both meet the same moments of
    this shared machine. The timed runs carry no instrumentation; one more
    dmask run samples memory and times the tasks by phase (its own wall time
    gives the phase shares).
    """
    crop = (slice(0, 2), slice(0, 16), slice(0, 16))  # warm-up: compiled kernels
    tiny = {name: value[crop] for name, value in targets.items()}
    dmask.fit(sources[crop], tiny, field=case.field, lam=0.4, method=method)
    n_base = baseline_runs(case, sources, targets, repeats, max_s)
    walls, base_walls = [], []
    with dask.config.set(num_workers=threads):
        for round_ in range(repeats):
            if round_ < n_base:
                with threadpool_limits(limits=1, user_api="blas"):
                    started = time.perf_counter()
                    straightforward_fit(sources, targets, case.field, 0.4)
                    base_walls.append(time.perf_counter() - started)
            spent, runs = 0.0, 0
            while runs < 1 or (spent < 1.0 / repeats and runs < 100 // repeats):
                started = time.perf_counter()
                dmask.fit(sources, targets, field=case.field, lam=0.4, method=method)
                walls.append(time.perf_counter() - started)
                spent += walls[-1]
                runs += 1
        with (
            timing.phase_seconds() as phases,
            PeakMemory(interval=0.001) as memory,
        ):
            started = time.perf_counter()
            dmask.fit(sources, targets, field=case.field, lam=0.4, method=method)
            traced = time.perf_counter() - started
    names = ("statistics", "combine", "solve", "write")
    phases = {p: phases.get(p, 0.0) for p in names}
    busy = sum(phases.values())
    phases["scheduling_and_idle"] = max(0.0, threads * traced - busy)
    result = {
        "wall_s": statistics.median(walls),
        "walls_s": walls,
        "traced_wall_s": traced,
        "peak_rss_mib": memory.peak / 2**20,
        "peak_rise_mib": memory.rise / 2**20,
        "task_seconds": phases,
        "scheduling_fraction": phases["scheduling_and_idle"] / (threads * traced),
    }
    if not base_walls:
        baseline = {"skipped": f"estimated over --baseline-max-s {max_s:g}"}
    else:
        baseline = {"wall_s": statistics.median(base_walls), "walls_s": base_walls}
    return result, baseline


FRESH_PROCESS = """
import json, sys
sys.path.insert(0, sys.argv[1])
from benchdata import Case, faces
import dmask

def high_water():  # this process's own peak (ru_maxrss counts the parent's)
    with open("/proc/self/status") as status:
        line = next(v for v in status if v.startswith("VmHWM:"))
    return int(line.split()[1])

case = Case(*json.loads(sys.argv[2]))
sources, targets = faces(case)
before = high_water()
dmask.fit(sources, targets, field=case.field, lam=0.4)
print(json.dumps([before, high_water()]))
"""


def fresh_process_peak(case: Case) -> dict:
    """Peak resident memory (MiB) of a new process that trains a case once.

    Also its peak before training: dmask's imports and the case's data.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    spec = json.dumps([case.size, case.n, case.field, case.channels, case.targets])
    done = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, here, spec],
        capture_output=True,
        text=True,
        check=True,
    )
    imported, peak = json.loads(done.stdout.strip().splitlines()[-1])
    return {"fresh_peak_mib": peak / 1024, "before_fit_mib": imported / 1024}


def cases_from(args: argparse.Namespace) -> list[Case]:
    """The cases asked for on the command line."""
    if args.suite == "targets":
        return TARGET_CASES
    return [
        Case(size, n, field, channels, targets)
        for size, n, field, channels, targets in itertools.product(
            args.sizes, args.n, args.fields, args.channels, args.targets
        )
    ]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=["targets", "grid"], default="targets")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--n", type=int, nargs="+", default=[200])
    parser.add_argument("--fields", type=int, nargs="+", default=[1, 3, 7, 11, 15])
    parser.add_argument("--channels", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--targets", type=int, nargs="+", default=[1])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--baseline-max-s", type=float, default=60.0)
    parser.add_argument(
        "--method", choices=["auto", "displacement", "covariance"], default="auto"
    )
    parser.add_argument("--json", help="write results here")
    args = parser.parse_args(argv)
    info = machine()
    limits = machine_limits()
    peak = limits.gemm
    info["gemm_gflops_all_cores"] = round(peak / 1e9, 1)
    info["gemm_gflops_one_core"] = round(limits.gemm_one_core / 1e9, 1)
    info["memory_gb_per_s"] = round(limits.bandwidth / 1e9, 1)
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    print(limits.header(), flush=True)
    header = (
        f"{'case':>34} {'dmask s':>8} {'roofline s':>10} {'of roofline':>11} "
        f"{'base s':>8} {'speedup':>8} {'new MiB':>8} "
        f"{'rise MiB':>8} "
        f"{'GFLOP/s':>8} {'of GEMM':>7} {'stats':>6} {'solve':>6} {'write':>6} "
        f"{'sched':>6} {'Gram/GEMM':>9} {'solve/GEMM':>10}"
    )
    print(header, flush=True)
    results = []
    for case in cases_from(args):
        sources, targets = faces(case)
        result = {**asdict(case), "label": case.label}
        result["dmask"], result["baseline"] = time_case(
            case, sources, targets, args.repeats, args.threads,
            args.baseline_max_s, args.method,
        )  # fmt: skip
        result["dmask"].update(fresh_process_peak(case))
        wall = result["dmask"]["wall_s"]
        flops = straightforward_flops(case)
        rate = flops["total"] / wall
        result["straightforward_gflop_per_s"] = rate / 1e9
        result["fraction_of_gemm"] = rate / peak
        # Each phase's rate with the whole machine on it: its FLOPs over its
        # task seconds divided by the threads.
        for phase, name in (("statistics", "gram"), ("solve", "solve")):
            seconds = result["dmask"]["task_seconds"][phase] / args.threads
            phase_rate = flops[name] / seconds if seconds > 0 else float("nan")
            result[f"{phase}_fraction_of_gemm"] = phase_rate / peak
        work = train_work(
            case.size, case.n, case.field, case.channels, case.targets,
            itemsize=sources.dtype.itemsize,
        )  # fmt: skip
        least = roofline(work, limits)
        result["roofline"] = {
            "bytes": work.bytes,
            "flops": work.flops,
            "seconds": least,
            "fraction": least / wall,
        }
        base = result["baseline"].get("wall_s")
        result["speedup"] = None if base is None else base / wall
        results.append(result)
        phases = result["dmask"]["task_seconds"]
        busy = args.threads * result["dmask"]["traced_wall_s"]
        print(
            f"{case.label:>34} {wall:8.3f} {least:10.4f} {least / wall:11.1%} "
            f"{'-' if base is None else f'{base:.3f}':>8} "
            f"{'-' if base is None else f'{base / wall:.1f}x':>8} "
            f"{result['dmask']['fresh_peak_mib']:8.0f} "
            f"{result['dmask']['peak_rise_mib']:8.0f} {rate / 1e9:8.1f} "
            f"{rate / peak:7.1%} "
            + " ".join(
                f"{phases[p] / busy:6.0%}"
                for p in ("statistics", "solve", "write", "scheduling_and_idle")
            )
            + f" {result['statistics_fraction_of_gemm']:9.0%}"
            f" {result['solve_fraction_of_gemm']:10.0%}",
            flush=True,
        )
    print(
        "roofline s: the least time this machine allows (images read and weights"
        " written once at the measured bandwidth, or the displacement sums' and"
        " Cholesky solves' FLOPs at the measured GEMM rate, whichever is longer);"
        " of roofline: roofline s / dmask s;"
        " speedup: baseline / dmask wall time; new MiB: peak resident memory of a new"
        " process that makes the data and trains it (before training, with the"
        " imports and data of the first case:"
        f" {results[0]['dmask']['before_fit_mib']:.0f} MiB); rise MiB: peak resident"
        " memory of this process in a traced run above its level at the start;"
        " GFLOP/s: FLOPs of the straightforward"
        " method / dmask wall; stats, solve, write (placing tiles in the model's"
        " arrays), sched: share of threads x the traced run's wall; Gram/GEMM,"
        " solve/GEMM: the straightforward FLOPs of the Gram matrices (with the"
        " right-hand sides) and of the solves over their phase's task seconds per"
        " thread, as a fraction of the GEMM rate on all cores"
    )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                {"machine": info, "limits": asdict(limits), "results": results},
                handle,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
