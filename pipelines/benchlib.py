"""Shared pieces of the benchmarks: what machine they ran on."""

from __future__ import annotations

import os
import platform
import statistics
import time

import dask
import distributed
import numpy as np
import psutil
import threadpoolctl

import dmask


def machine() -> dict[str, object]:
    """Cores, memory, BLAS libraries and versions of this machine."""
    blas = [
        f"{lib.get('internal_api')} {lib.get('version')} {lib.get('architecture')}"
        f" ({lib.get('num_threads')} threads)"
        for lib in threadpoolctl.threadpool_info()
        if lib.get("user_api") == "blas"
    ]
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "blas": "; ".join(blas) or "unknown",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "dask": dask.__version__,
        "distributed": distributed.__version__,
        "dmask": dmask.__version__,
    }


_RSS_SAMPLER: dict[str, object] = {}


def rss_start(interval: float = 0.005) -> int:
    """On a worker: sample this process's resident memory until :func:`rss_stop`."""
    import threading

    process = psutil.Process()
    stop = threading.Event()
    peak = [process.memory_info().rss]

    def sample() -> None:
        while not stop.wait(interval):
            peak[0] = max(peak[0], process.memory_info().rss)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    _RSS_SAMPLER.update(stop=stop, thread=thread, peak=peak)
    return peak[0]


def rss_stop() -> int:
    """On a worker: the peak resident bytes since :func:`rss_start`."""
    stop, thread, peak = (_RSS_SAMPLER[k] for k in ("stop", "thread", "peak"))
    stop.set()  # type: ignore[attr-defined]
    thread.join()  # type: ignore[attr-defined]
    return int(peak[0])  # type: ignore[index]


def timed(step, repeats: int) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls, and the last result."""
    walls, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = step()
        walls.append(time.perf_counter() - started)
    return statistics.median(walls), result
