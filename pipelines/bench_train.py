"""Training benchmark: wall time and peak memory of dmask.fit, with a baseline.

Cases (synthetic faces, neutral -> happy, RGB, lambda 0.4):
  128 x 128, N = 200, r = 3   (dmask and a per-pixel batched numpy baseline)
  512 x 512, N = 200, r = 7   (dmask; the baseline would need ~60 GB)

Each case runs ``--repeats`` times on dask's threaded scheduler in this process
(two threads unless ``--threads``); the median is printed with the machine, as
a table and as JSON (``--json``).

    python pipelines/bench_train.py [--repeats 3] [--cases 128 512]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import threading
import time

import dask
import numpy as np
import psutil

import dmask
import dmask.kernels
from dmask.faces import render_face, subject_params


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float [0, 1] image to 8 bits."""
    return np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)


CASES = {
    "128": {"size": 128, "n": 200, "field": 3},
    "512": {"size": 512, "n": 200, "field": 7},
}


class PeakMemory:
    """Sample this process's resident memory in a thread; report the peak rise."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.process = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        self.start = self.process.memory_info().rss
        self.peak = self.start
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


def faces(size: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` neutral and happy synthetic faces of ``size`` x ``size``."""
    neutral = np.empty((n, size, size, 3), dtype=np.uint8)
    happy = np.empty_like(neutral)
    for subject in range(n):
        params = subject_params(0, subject)
        neutral[subject] = to_uint8(render_face(params, "neutral", size, size))
        happy[subject] = to_uint8(render_face(params, "happy", size, size))
    return neutral, happy


def baseline_fit(
    sources: np.ndarray, targets: np.ndarray, field: int, lam: float
) -> np.ndarray:
    """Per-pixel batched normal equations: im2col patches, one Gram per pixel."""
    x = dmask.kernels.normalize_block(
        sources, *dmask.kernels.minmax_parameters(sources)
    )
    t = dmask.kernels.normalize_block(
        targets, *dmask.kernels.minmax_parameters(targets)
    )
    b = field // 2
    n, height, width, channels = x.shape
    padded = np.pad(x, ((0, 0), (b, b), (b, b), (0, 0)))
    out = np.empty((height, width, channels, field * field + 1))
    for i in range(height):
        patches = np.stack(
            [
                padded[:, i + dy, dx : dx + width]
                for dy in range(field)
                for dx in range(field)
            ]
            + [np.ones((n, width, channels))],
            axis=-1,
        )  # (n, W, C, k + 1)
        gram = np.einsum("nwca,nwcb->wcab", patches, patches)
        gram += lam * np.eye(field * field + 1)
        rhs = np.einsum("nwca,nwc->wca", patches, t[:, i])
        out[i] = np.linalg.solve(gram, rhs[..., None])[..., 0]
    return out


def timed(fn, repeats: int) -> tuple[list[float], int]:
    times, peaks = [], []
    for _ in range(repeats):
        with PeakMemory() as memory:
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        peaks.append(memory.rise)
    return times, max(peaks)


def machine() -> dict[str, object]:
    """What this ran on."""
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "dask": dask.__version__,
        "dmask": dmask.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write results here")
    args = parser.parse_args(argv)
    info = machine()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    results = []
    for name in args.cases:
        case = CASES[name]
        sources, targets = faces(case["size"], case["n"])
        with dask.config.set(scheduler="threads", num_workers=args.threads):

            def run_dmask(case=case, sources=sources, targets=targets) -> None:
                dmask.fit(sources, targets, field=case["field"], lam=0.4)

            times, peak = timed(run_dmask, args.repeats)
        row = {
            **case,
            "method": "dmask",
            "median_s": statistics.median(times),
            "times_s": times,
            "peak_rise_mib": peak / 2**20,
        }
        results.append(row)
        if case["size"] <= 128:
            base_times, base_peak = timed(
                functools.partial(baseline_fit, sources, targets, case["field"], 0.4),
                args.repeats,
            )
            results.append(
                {
                    **case,
                    "method": "per-pixel batched numpy",
                    "median_s": statistics.median(base_times),
                    "times_s": base_times,
                    "peak_rise_mib": base_peak / 2**20,
                }
            )
            row["speedup_vs_baseline"] = statistics.median(base_times) / row["median_s"]
    print(f"{'case':>22} {'method':>24} {'median s':>9} {'peak MiB':>9} {'speedup':>8}")
    for row in results:
        label = f"{row['size']}x{row['size']} N={row['n']} r={row['field']}"
        speedup = row.get("speedup_vs_baseline")
        ratio = "" if speedup is None else f"{speedup:.1f}x"
        print(
            f"{label:>22} {row['method']:>24} {row['median_s']:9.2f} "
            f"{row['peak_rise_mib']:9.0f} {ratio:>8}"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"machine": info, "results": results}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
