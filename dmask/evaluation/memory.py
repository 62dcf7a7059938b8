"""Peak memory of a computation: this process's heap and the workers'."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import threading
import time
from collections.abc import Callable, Iterator

__all__ = []


# One measured section at a time per process (see the module docstring).
EXCLUSIVE = threading.Lock()


# Set on each worker process by sampling_start for sampling_stop.
_WORKER_SAMPLER: _PeakMemory | None = None


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


@functools.cache
def _heap_reader() -> Callable[[], int]:
    """Bytes the process has allocated now: glibc's heap in use, else its RSS."""
    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        import psutil

        process = psutil.Process()
        return lambda: int(process.memory_info().rss)
    mallinfo2.restype = _MallInfo2

    def heap() -> int:
        info = mallinfo2()
        return int(info.uordblks + info.hblkhd)

    return heap


class _PeakMemory:
    """Sample the process's allocated bytes every ``interval`` seconds.

    The first 50 ms are sampled every ``start_interval`` seconds.

    All threads' ``malloc`` counts (numpy arrays, BLAS buffers, numba, Python's
    large objects). The rise is the largest climb of a sample above the lowest
    sample before it, so that memory other threads free meanwhile does not hide
    an allocation.
    """

    def __init__(self, interval: float = 0.002, start_interval: float = 2.5e-4):
        self.interval = interval
        self.start_interval = start_interval
        self.read = _heap_reader()
        self.stop = threading.Event()
        self.low = self.read()
        self.rise = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        now = self.read()
        self.low = min(self.low, now)
        self.rise = max(self.rise, now - self.low)

    def _run(self) -> None:
        # Fine at first, so that short fits are seen; then coarse and cheap.
        start = time.perf_counter()
        wait = self.start_interval
        while not self.stop.wait(wait):
            self._sample()
            if time.perf_counter() - start > 0.05:
                wait = self.interval

    def close(self) -> int:
        """Stop sampling; the peak rise in bytes."""
        self.stop.set()
        self.thread.join()
        self._sample()
        return int(self.rise)


@contextlib.contextmanager
def measured_memory() -> Iterator[dict[str, float]]:
    """Measure the wall time and the peak memory rise of the block."""
    usage: dict[str, float] = {}
    sampler = _PeakMemory()
    t0 = time.perf_counter()
    try:
        yield usage
    finally:
        usage["seconds"] = time.perf_counter() - t0
        usage["peak"] = sampler.close()


def sampling_start() -> None:
    """On a worker: start sampling memory for :func:`sampling_stop`."""
    global _WORKER_SAMPLER
    if _WORKER_SAMPLER is not None:
        _WORKER_SAMPLER.close()
    _WORKER_SAMPLER = _PeakMemory()


def sampling_stop() -> dict[str, int]:
    """On a worker: the peak rise since :func:`sampling_start`, and the pid."""
    global _WORKER_SAMPLER
    peak = _WORKER_SAMPLER.close() if _WORKER_SAMPLER is not None else 0
    _WORKER_SAMPLER = None
    return {"pid": os.getpid(), "peak": int(peak)}
