"""Seconds spent per phase inside tasks (for the benchmarks)."""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["phase_seconds"]


_PHASES_LOCK = threading.Lock()


_PHASES: list[dict[str, float]] = []


def _add_phase_seconds(**seconds: float) -> None:
    if _PHASES:
        with _PHASES_LOCK:
            for phases in _PHASES:
                for name, value in seconds.items():
                    phases[name] = phases.get(name, 0.0) + value


@contextlib.contextmanager
def phase_seconds() -> Iterator[dict[str, float]]:
    """Seconds spent in tasks of this process by phase, while open.

    Phases are ``statistics``, ``combine``, ``solve`` and ``write`` (to a
    store, or into the arrays of a model in memory), timed inside the tasks:
    ``statistics_and_solve`` counts in both its phases, and tasks that dask
    hands to a thread together are timed apart. For benchmarks on the threaded
    scheduler; a distributed run's tasks record theirs on the workers.
    """
    phases: dict[str, float] = {}
    with _PHASES_LOCK:
        _PHASES.append(phases)
    try:
        yield phases
    finally:
        with _PHASES_LOCK:
            _PHASES.remove(phases)


def timed_phase(phase: str) -> Any:
    """Decorator: add a task function's run time to ``phase``."""

    def decorate(func: Any) -> Any:
        @functools.wraps(func)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not _PHASES:
                return func(*args, **kwargs)
            started = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                _add_phase_seconds(**{phase: time.perf_counter() - started})

        return timed

    return decorate
