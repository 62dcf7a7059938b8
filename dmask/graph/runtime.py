"""Where computations run: the client, BLAS thread limits, progress, task memory."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import dask
import dask.array as da

from dmask import options
from dmask.errors import DmaskError

__all__ = [
    "compute",
    "current_client",
    "runs_locally",
    "available_memory",
    "check_process_memory",
    "check_task_memory",
    "memory_per_thread",
    "thread_memory",
    "task_memory_budget",
    "local_threads",
    "task_threads",
]


def current_client() -> Any | None:
    """The distributed client in use, or None."""
    if "distributed" not in sys.modules:  # no client without it; importing costs
        return None  # half a second and 20 MiB
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    try:
        return default_client()
    except ValueError:
        return None


@functools.cache
def _blas_controller() -> Any:
    """threadpoolctl's view of the loaded BLAS libraries, found once (~2 ms)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextlib.contextmanager
def threaded_run(phase: str = "computing") -> Iterator[None]:
    """Around a run on the threaded scheduler: one BLAS thread, progress if asked."""
    with _blas_controller().limit(limits=1, user_api="blas"):
        if not options.get("progress"):
            yield
            return
        from dmask.graph.progress import Display, local_progress

        with local_progress(Display(phase)):
            yield


def compute(*collections: Any, phase: str = "computing") -> tuple[Any, ...]:
    """Compute dask collections on the current client or the threaded scheduler.

    ``phase`` names the work: in the progress display (option ``progress``) and,
    on a distributed cluster, as the span its tasks belong to on the dashboard.
    On the threaded scheduler BLAS runs single-threaded, as in distributed's
    worker processes: the threads already fill the cores, and the same BLAS
    thread count gives the same floating-point sums everywhere.
    """
    client = current_client()
    if client is None:
        with threaded_run(phase):
            return dask.compute(*collections, scheduler="threads")
    from distributed import span

    with span(phase):
        futures = client.compute(list(collections))
    with _watchdog(client, futures) as stalled:
        try:
            if not options.get("progress"):
                return tuple(client.gather(futures))
            from dmask.graph.progress import Display, distributed_progress

            with distributed_progress(client, futures, Display(phase)):
                return tuple(client.gather(futures))
        except Exception:
            if stalled():
                raise DmaskError(
                    f"no task made progress for {options.get('stall-timeout'):g} s "
                    "(option stall-timeout): the workers may be paused for lack of "
                    "memory, or gone; see the dashboard"
                ) from None
            raise


@contextlib.contextmanager
def _watchdog(client: Any, futures: Any) -> Iterator[Any]:
    """Cancel a distributed computation in which no task changes state for long.

    A thread asks the scheduler every few seconds for its count of task
    transitions and for the tasks executing on any worker; when the count has
    not moved for ``stall-timeout`` seconds and nothing executes (workers paused
    with nothing running, lost, or none at all) the futures are cancelled. A
    long task that is executing counts as progress, on a paused worker too.
    Yields a function telling whether the computation was cancelled so.
    """
    timeout = options.get("stall-timeout")
    stalled = threading.Event()
    if not timeout:
        yield stalled.is_set
        return
    done = threading.Event()

    def watch() -> None:
        last, since = None, time.monotonic()
        while not done.wait(min(5.0, timeout / 4)):
            try:  # a lambda: the scheduler need not have dmask installed
                count, running = client.run_on_scheduler(
                    lambda dask_scheduler: (
                        dask_scheduler.transition_counter,
                        sum(  # executing now, on any worker (paused ones too)
                            ws.metrics.get("task_counts", {}).get("executing", 0)
                            for ws in dask_scheduler.workers.values()
                        ),
                    )
                )
            except Exception:  # an old scheduler, or one going away: no watch
                continue
            now = time.monotonic()
            if count != last or running:
                last, since = count, now
            elif now - since >= timeout:
                stalled.set()
                client.cancel(futures)
                return

    thread = threading.Thread(target=watch, name="dmask-watchdog", daemon=True)
    thread.start()
    try:
        yield stalled.is_set
    finally:
        done.set()
        thread.join(timeout=10)


def task_threads() -> int:
    """Threads that run tasks: the cluster's, else dask's ``num_workers`` or cores."""
    client = current_client()
    if client is not None:
        try:
            return max(1, sum(client.nthreads().values()))
        except Exception:  # an old or odd scheduler: count this machine's cores
            pass
    return local_threads()


def local_threads() -> int:
    """Threads of this process's task pools: dask's ``num_workers``, else cores."""
    return int(dask.config.get("num_workers", None) or os.cpu_count() or 1)


def thread_memory() -> tuple[int, bool]:
    """Bytes one task may hold at most, and whether a cluster says so.

    On a distributed cluster, the smallest ``memory_limit / nthreads`` of its
    workers (those with a limit); locally, the available memory over the cores.
    """
    client = current_client()
    if client is not None:
        try:
            workers = client.scheduler_info(n_workers=-1)["workers"].values()
            shares = [
                w["memory_limit"] / max(1, w["nthreads"])
                for w in workers
                if w.get("memory_limit")
            ]
            if shares:
                return int(min(shares)), True
        except Exception:  # an old or odd scheduler: fall back to local figures
            pass
    return int(available_memory() / (os.cpu_count() or 1)), False


def memory_per_thread() -> int:
    """Bytes one task may hold at most (see :func:`thread_memory`)."""
    return thread_memory()[0]


def check_task_memory(needed: int, what: str) -> None:
    """Refuse work whose tasks need more memory than a worker thread has."""
    from dmask.core.planning import format_bytes
    from dmask.errors import InputError

    have = memory_per_thread()
    if needed > have:
        raise InputError(
            f"{what} needs about {format_bytes(needed)} per task, but a worker "
            f"thread has {format_bytes(have)}"
        )


#: Share of this process's free memory a step may plan to use.
PROCESS_MEMORY_FRACTION = 0.8


def available_memory() -> int:
    """Bytes of memory free on this machine."""
    import psutil

    return int(psutil.virtual_memory().available)


def check_process_memory(needed: int, what: str, advice: str) -> None:
    """Refuse work in this process that needs more memory than is free."""
    from dmask.core.planning import format_bytes
    from dmask.errors import InputError

    free = available_memory()
    if needed > PROCESS_MEMORY_FRACTION * free:
        raise InputError(
            f"{what} needs about {format_bytes(needed)} of memory, "
            f"{format_bytes(free)} is free: {advice}"
        )
    logging.getLogger(__name__).info(
        "%s: about %s of memory", what, format_bytes(needed)
    )


def task_memory_budget(memory: tuple[int, bool] | None = None) -> int:
    """Bytes one task may use: a share of a worker's memory per thread.

    On a distributed cluster, 40% of the smallest worker memory limit divided by
    its threads (leaving room below distributed's spill and pause thresholds);
    locally, a quarter of the available memory divided by the cores. Clamped to
    128 MiB .. 2 GiB. ``memory`` is :func:`thread_memory`'s answer, if known.
    """
    per_thread, on_cluster = memory or thread_memory()
    budget = int((0.4 if on_cluster else 0.25) * per_thread)
    return int(min(2 * 2**30, max(128 * 2**20, budget)))


def runs_locally(*images: Any) -> bool:
    """Whether tasks on these inputs run in this process: threaded, plain graph.

    True without a distributed client when none of them is a dask array.
    """
    return current_client() is None and not any(
        isinstance(array, da.Array) for array in images
    )
