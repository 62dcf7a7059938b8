"""Shared pieces of the benchmarks: what machine they ran on, and what it allows.

The roofline of a case is the least time this machine allows for it: the bytes
that must move through memory at the measured memory bandwidth, or the FLOPs
that must be done at the measured GEMM rate, whichever takes longer
(:func:`roofline`). Both rates are measured in the benchmark's own run
(:func:`machine_limits`), on all cores, best of several repeats (the GEMM rate:
the better of all cores' and one core's, as a shared machine's busy moment can
leave two threads slower than one): the machine's ceiling, not its typical
speed at a busy moment.

What a training must do (:func:`train_work`): read every source and target
image once and write the weights once; and the FLOPs of dmask's own least-FLOP
formulation, as :mod:`dmask.core.planning` counts them for the whole image as
one tile (no halo read twice): the displacement sums (a multiply-add per
sample, pixel, channel and displacement, ``((2r-1)^2 + 1) / 2`` displacements,
and per pixel, target and window offset for the cross sums) and a Cholesky
solve per pixel and channel (``(k+1)^3 / 3`` and ``2 (k+1)^2`` per target). A
straightforward per-pixel method does far more FLOPs (``2 N (k+1)^2`` per
pixel for the Gram matrix alone); the roofline holds dmask to the fewest it
knows how to do. What a prediction must do (:func:`predict_work`): read the
images and the weights once, write the predictions once, and ``2 (k+1)`` FLOPs
(a multiply-add per window offset, and the bias) per output value.
"""

from __future__ import annotations

import itertools
import os
import platform
import statistics
import threading
import time
from dataclasses import dataclass

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


def gemm_rate(threads: int | None = None, size: int = 2000, repeats: int = 3) -> float:
    """Measured float64 GEMM FLOP/s (best of ``repeats``) of a ``size`` square
    product with ``threads`` BLAS threads (None: all)."""
    a = np.random.default_rng(0).random((size, size))
    out = np.empty_like(a)
    best = float("inf")
    with threadpoolctl.threadpool_limits(limits=threads, user_api="blas"):
        np.matmul(a, a, out=out)  # BLAS's own start-up
        for _ in range(repeats):
            started = time.perf_counter()
            np.matmul(a, a, out=out)
            best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def memory_bandwidth(
    threads: int | None = None, nbytes: int = 2**28, repeats: int = 5
) -> float:
    """Measured memory bandwidth in bytes/s: ``threads`` threads (None: one
    per core) each copy their share of a ``nbytes`` float64 array into another
    (numpy releases the GIL); bytes read plus bytes written over the wall
    time, best of ``repeats``. The arrays are 32 times a typical last-level
    cache, so the copy streams from and to memory."""
    threads = threads or os.cpu_count() or 1
    source = np.ones(nbytes // 8)
    target = np.zeros_like(source)
    bounds = np.linspace(0, source.size, threads + 1).astype(int)
    parts = [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds)]

    def copy(part: slice) -> None:
        np.copyto(target[part], source[part])

    best = float("inf")
    for _ in range(repeats):
        workers = [threading.Thread(target=copy, args=(p,)) for p in parts]
        started = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        best = min(best, time.perf_counter() - started)
    return 2 * source.nbytes / best


@dataclass(frozen=True)
class Limits:
    """This machine's measured ceilings."""

    bandwidth: float  # bytes/s, all cores (copy: read + write)
    gemm: float  # float64 FLOP/s, all cores
    gemm_one_core: float  # float64 FLOP/s, one BLAS thread

    def header(self) -> str:
        return (
            f"roofline: memory bandwidth {self.bandwidth / 1e9:.1f} GB/s (copy, all"
            f" cores), GEMM {self.gemm / 1e9:.1f} GFLOP/s all cores,"
            f" {self.gemm_one_core / 1e9:.1f} one core (float64 2000 x 2000,"
            " best of 3)"
        )


def machine_limits() -> Limits:
    """Measure the memory bandwidth and the GEMM rates now."""
    return Limits(memory_bandwidth(), gemm_rate(None), gemm_rate(1))


@dataclass(frozen=True)
class Work:
    """What a case must do at the least: bytes moved and FLOPs."""

    bytes: float
    flops: float


def roofline(work: Work, limits: Limits) -> float:
    """The least seconds the machine allows for ``work``."""
    gemm = max(limits.gemm, limits.gemm_one_core)  # a busy moment can cut either
    return max(work.bytes / limits.bandwidth, work.flops / gemm)


def train_work(
    size: int,
    n: int,
    field: int,
    channels: int,
    targets: int,
    itemsize: int = 1,
    weight_itemsize: int = 8,
) -> Work:
    """The least a training must do (see the module's docstring): images of
    ``itemsize`` bytes a value, square ``size``, ``n`` pairs."""
    from dmask.core import planning

    images = (1 + targets) * n * size * size * channels * itemsize
    weights = size * size * channels * (field * field + 1) * targets * weight_itemsize
    flops = planning.statistics_flops(
        (size, size), channels, field, targets, n, "displacement"
    ) + planning.solve_flops((size, size), channels, field, targets)
    return Work(images + weights, flops)


def predict_work(
    n: int,
    size: int,
    field: int,
    channels: int,
    in_itemsize: int,
    out_itemsize: int,
    weight_itemsize: int = 8,
) -> Work:
    """The least a prediction of ``n`` square images must do: read them and the
    weights (with the bias), write the predictions, ``2 (k + 1)`` FLOPs per
    output value."""
    values = n * size * size * channels
    weights = size * size * channels * (field * field + 1) * weight_itemsize
    return Work(
        values * (in_itemsize + out_itemsize) + weights,
        2.0 * (field * field + 1) * values,
    )
