"""Progress per phase: a live bar on a terminal, plain lines in a log file."""

from __future__ import annotations

import io
import logging
import re
import time
from typing import ClassVar

import dask.array as da
import numpy as np
import pytest

#: What a log file must never hold: carriage returns and escape sequences.
CONTROL = re.compile(r"[\r\x1b]")


def _slow(block: np.ndarray) -> np.ndarray:
    time.sleep(0.01)
    return block


def _slow_array(n: int = 40) -> da.Array:
    return da.ones((n, 4), chunks=(1, 4)).map_blocks(_slow, dtype=float)


def test_plain_display_says_each_phase_in_few_plain_lines():
    from dmask.graph.progress import Display

    stream = io.StringIO()
    display = Display("fitting tiles", stream=stream, terminal=False, interval=0.05)
    for done in range(101):
        display.update(done, 100)
        time.sleep(0.002)
    display.close()
    lines = stream.getvalue().splitlines()
    assert not CONTROL.search(stream.getvalue())
    assert lines[0].endswith("progress: fitting tiles: 100 tasks")
    assert "100 tasks done in" in lines[-1]
    middle = lines[1:-1]
    assert middle, "no line while it ran"
    assert len(lines) <= 2 + 0.25 / 0.05 + 2  # one per interval at most
    assert all(re.search(r"\d+/100 tasks \(\d+%\), [\d.]+ tasks/s", m) for m in middle)
    assert any("left" in m for m in middle)


def test_plain_display_says_where_it_stopped():
    from dmask.graph.progress import Display

    stream = io.StringIO()
    display = Display("solving", stream=stream, terminal=False)
    display.update(3, 10)
    display.close(ok=False)
    assert (
        stream.getvalue()
        .splitlines()[-1]
        .split("solving: ")[1]
        .startswith("stopped after 3/10 tasks")
    )


def test_terminal_display_is_a_tqdm_bar_with_the_phase():
    from dmask.graph.progress import Display

    stream = io.StringIO()
    display = Display("reading bounds", stream=stream, terminal=True)
    for done in range(11):
        display.update(done, 10)
    display.close()
    text = stream.getvalue()
    assert "reading bounds" in text
    assert "10/10" in text
    assert "task/s" in text or "tasks/s" in text or "s/task" in text


def test_threaded_compute_shows_its_phase_only_when_asked(capsys):
    from dmask.graph import runtime
    from dmask.options import set_options

    runtime.compute(_slow_array().sum(), phase="quiet phase")
    assert capsys.readouterr().err == ""
    with set_options(progress=True):
        (total,) = runtime.compute(_slow_array().sum(), phase="adding up")
    assert total == 160
    err = capsys.readouterr().err
    assert "INFO dmask.progress: adding up: " in err
    assert "tasks done in" in err
    assert not CONTROL.search(err)


def test_distributed_compute_shows_progress_and_names_its_span(capsys):
    from distributed import Client, LocalCluster

    from dmask.graph import runtime
    from dmask.options import set_options

    class Errors(logging.Handler):
        records: ClassVar[list[logging.LogRecord]] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.records.append(record)

    scheduler_log = logging.getLogger("distributed.scheduler")
    errors = Errors(level=logging.ERROR)
    scheduler_log.addHandler(errors)
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0"
        ) as cluster,
        Client(cluster),
        set_options(progress=True),
    ):
        (total,) = runtime.compute(_slow_array().sum(), phase="adding up")
        spans = cluster.scheduler.extensions["spans"].spans
        names = {span.name for span in spans.values()}
        failing = da.ones(4, chunks=1).map_blocks(lambda b: 1 / 0, dtype=float)
        with pytest.raises(ZeroDivisionError):
            runtime.compute(failing.sum(), phase="failing")
    assert total == 160
    assert ("adding up",) in names
    err = capsys.readouterr().err
    assert "INFO dmask.progress: adding up: " in err and "tasks done in" in err
    assert "progress: failing: stopped after" in err
    scheduler_log.removeHandler(errors)
    assert not Errors.records, Errors.records  # the feed closes cleanly
    assert not CONTROL.search(err)


def test_a_terminal_of_no_size_still_gets_a_bar():
    """A pseudo-terminal nobody sized (0 x 0) draws the bar at 100 columns."""
    import os
    import pty

    from dmask.graph.progress import Display

    leader, follower = pty.openpty()
    with os.fdopen(follower, "w") as stream:
        display = Display("fitting tiles", stream=stream)
        assert display.terminal
        for done in range(6):
            display.update(done, 5)
        display.close()
    text = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the follower is closed: all read
            break
        if not chunk:
            break
        text += chunk
    os.close(leader)
    assert b"fitting tiles: 100%" in text
    assert b"5/5" in text


def test_plain_lines_keep_coming_while_no_task_finishes():
    """One long task: a line every interval all the same (a timer, not callbacks)."""
    from dmask.graph.progress import Display

    stream = io.StringIO()
    display = Display("solving", stream=stream, terminal=False, interval=0.05)
    display.update(0, 1)
    time.sleep(0.3)
    display.update(1, 1)
    display.close()
    lines = stream.getvalue().splitlines()
    middle = [line for line in lines if "0/1 tasks (0%)" in line]
    assert 3 <= len(middle) <= 7, lines
    assert lines[-1].endswith("1 tasks done in 0.3 s")
