"""Progress of a computation per named phase: a live bar, or plain lines in a log.

On a terminal (stderr is a TTY) a tqdm bar shows the phase, tasks done of the
total, the rate and the time left. Anywhere else (a log file, a Slurm
``.out``) a plain line starts each phase, one follows every
:data:`PLAIN_INTERVAL` seconds, and one ends it: no carriage returns, no
escape sequences. Both go to stderr; results stay on stdout.

The counts come from the scheduler that runs the graph: distributed's progress
feed (the scheduler's ``Progress`` plugin, as ``distributed.progress`` uses)
on a cluster, dask's local callbacks on the threaded scheduler.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as concurrent_futures
import contextlib
import io
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import IO, Any

from dmask.options import LOG_FORMAT

__all__ = ["PLAIN_INTERVAL", "Display", "local_progress", "distributed_progress"]

#: Seconds between two plain progress lines of one phase.
PLAIN_INTERVAL = 10.0

_FORMATTER = logging.Formatter(LOG_FORMAT)
logger = logging.getLogger(__name__)


def _seconds(value: float) -> str:
    value = max(0.0, value)
    if value < 60:
        return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"
    minutes, seconds = divmod(round(value), 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _columns(stream: Any) -> int:
    """The width of the terminal ``stream`` writes to; 0 when none is known."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return 0


class Display:
    """What one phase shows: ``update(done, total)`` as it goes, ``close`` at the end.

    ``terminal`` chooses the live bar (default: whether ``stream`` is a TTY).
    Safe to call from several threads.
    """

    def __init__(
        self,
        phase: str,
        stream: IO[str] | None = None,
        terminal: bool | None = None,
        interval: float = PLAIN_INTERVAL,
    ) -> None:
        self.phase = phase
        self.stream = stream if stream is not None else sys.stderr
        if terminal is None:
            isatty = getattr(self.stream, "isatty", None)
            terminal = bool(isatty and isatty())
        self.terminal = terminal
        self.interval = interval
        self.started = time.monotonic()
        self.done = 0
        self.total = 0
        self._bar: Any = None
        self._last_line = 0.0
        self._said_start = False
        self._closed = False
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    def update(self, done: int, total: int) -> None:
        with self._lock:
            if self._closed:
                return
            self.done, self.total = done, max(total, done)
            if self.terminal:
                self._draw_bar()
            else:
                self._plain_line()

    def _draw_bar(self) -> None:
        if self._bar is None:
            from tqdm import tqdm

            # a terminal of no size (a pseudo-terminal nobody sized) gets one,
            # or tqdm draws nothing
            width: dict[str, Any] = (
                {"dynamic_ncols": True}
                if _columns(self.stream)
                else {"ncols": 100, "nrows": 24}
            )
            self._bar = tqdm(
                total=self.total,
                desc=self.phase,
                unit="task",
                file=self.stream,
                leave=True,
                **width,
            )
        if self._bar.total != self.total:
            self._bar.total = self.total
        self._bar.update(self.done - self._bar.n)

    def _write(self, text: str) -> None:
        """One line in the log format (:data:`dmask.options.LOG_FORMAT`)."""
        record = logging.LogRecord(
            "dmask.progress", logging.INFO, __file__, 0,
            f"{self.phase}: {text}", None, None,
        )  # fmt: skip
        with contextlib.suppress(ValueError, OSError):  # a closed stream
            self.stream.write(_FORMATTER.format(record) + "\n")
            self.stream.flush()

    def _tick(self) -> None:
        """Plain mode: a line every interval even while no task finishes."""
        while not self._stopped.wait(self.interval):
            with self._lock:
                if self._closed:
                    return
                if time.monotonic() - self._last_line >= self.interval:
                    self._say_rate()

    def _plain_line(self) -> None:
        now = time.monotonic()
        if not self._said_start:
            self._said_start = True
            self._last_line = now
            self._write(f"{self.total} tasks")
            threading.Thread(
                target=self._tick, name="dmask-progress", daemon=True
            ).start()
            return
        if now - self._last_line < self.interval or self.done >= self.total:
            return
        self._say_rate()

    def _say_rate(self) -> None:
        now = time.monotonic()
        self._last_line = now
        elapsed = now - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else None
        text = (
            f"{self.done}/{self.total} tasks "
            f"({100 * self.done / max(1, self.total):.0f}%), "
            f"{rate:.1f} tasks/s"
        )
        if left is not None:
            text += f", about {_seconds(left)} left"
        self._write(text)

    def close(self, ok: bool = True) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stopped.set()
            elapsed = time.monotonic() - self.started
            if self.terminal:
                if self._bar is not None:
                    if ok:
                        self._bar.update(self.total - self._bar.n)
                    self._bar.close()
                return
            if ok:
                self._write(f"{self.total} tasks done in {_seconds(elapsed)}")
            else:
                self._write(
                    f"stopped after {self.done}/{self.total} tasks, {_seconds(elapsed)}"
                )


@contextlib.contextmanager
def local_progress(display: Display) -> Iterator[None]:
    """Feed ``display`` from the threaded scheduler's callbacks while it runs."""
    from dask.callbacks import Callback

    class Feed(Callback):
        total = 0

        def _start_state(self, dsk: Any, state: Any) -> None:
            self.total = sum(
                len(state[k]) for k in ("ready", "waiting", "running", "finished")
            )
            display.update(len(state["finished"]), self.total)

        def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, id: Any):
            display.update(len(state["finished"]), self.total)

    ok = False
    try:
        with Feed():
            yield
        ok = True
    finally:
        display.close(ok)


@contextlib.contextmanager
def distributed_progress(client: Any, futures: list[Any], display: Display):
    """Feed ``display`` from the scheduler's progress of ``futures`` while they run.

    The feed listens on the client's event loop in the background; the caller
    gathers the results, which say when it is over (a failure or a cancel
    included), and the feed is stopped then.
    """
    from distributed.diagnostics.progressbar import ProgressBar

    class Feed(ProgressBar):
        last = 0.0  # when the scheduler last wrote

        def _draw_bar(self, remaining: int, all: int, **kwargs: Any) -> None:
            self.last = time.monotonic()
            display.update(all - remaining, all)

    interval = 0.1
    feed = Feed(futures, scheduler=client.scheduler.address, interval=interval)
    loop = client.loop.asyncio_loop
    listening = asyncio.run_coroutine_threadsafe(feed.listen(), loop)
    ok = False
    try:
        yield
        ok = True
    finally:
        # The feed ends by itself once the scheduler says finished or error
        # (within an interval); one still open after that (cancelled futures)
        # is closed from here.
        try:
            listening.result(timeout=2.0)
        except (
            TimeoutError,
            asyncio.CancelledError,
            concurrent_futures.CancelledError,
        ):
            pass  # still open: closed below
        except Exception as exc:  # no feed (a refused connection, TLS): say so
            logger.warning("no progress from the scheduler: %s", exc)
        if not listening.done():
            comm = getattr(feed, "comm", None)
            if comm is not None:
                with contextlib.suppress(Exception):
                    asyncio.run_coroutine_threadsafe(comm.close(), loop).result(5)
            listening.cancel()
        # The scheduler's side of the feed stops when it next writes to the
        # closed comm, one interval after its last write: wait for that, or a
        # cluster closed right after logs the feed's cancellation as an error.
        time.sleep(max(0.0, feed.last + interval + 0.02 - time.monotonic()))
        display.close(ok)
