"""Shared test helpers that are not fixtures: data, tolerances, model comparisons.

Imported by name (``from helpers import ...``): ``tests/`` is on pytest's
``pythonpath`` (``pyproject.toml``), as is ``reference`` (the slow per-pixel
implementation). Fixtures live in ``conftest.py``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import dask
import dask.local
import numpy as np
from dask.callbacks import Callback

__all__ = [
    "EXACT",
    "HALF_LEVEL",
    "JPEG_LEVELS",
    "LOOSE",
    "NEAR_ZERO",
    "REFERENCE",
    "REORDERED",
    "ROOT",
    "ROUNDOFF",
    "SOLVER",
    "TIGHT",
    "CountingScheduler",
    "assert_model_close",
    "random_pairs",
]

#: The repository's root (``tests/..``).
ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- tolerances
# One name per value: wherever a test compares with that value (as ``atol``,
# ``rtol`` or ``pytest.approx(rel=, abs=)``, as the test had it), it uses the
# name. The notes say what each mostly compares.

#: The same float sums in another association: statistics added over sample
#: blocks (relative).
ROUNDOFF = 1e-13
#: Agreement to the last digits or so: compiled kernels and plain loops, PRESS
#: over split samples, an imported reference model's predictions, a sweep and
#: the fit and evaluation it runs, field-map sums.
TIGHT = 1e-12
#: One exact computation with its float sums grouped or ordered otherwise:
#: tiles, sample blocks, numpy / dask / xarray / stored inputs, targets trained
#: together or alone (and the absolute floor of the full ridge comparisons).
REORDERED = 1e-11
#: The equality of two exact computations by different algorithms: covariance
#: blocks and displacement sums, exported CSR matrices and the forward pass,
#: reduced rank at full rank and full ridge, LARS and sklearn's LARS.
EXACT = 1e-10
#: Two direct solvers or factorisations of one system: Cholesky and LU,
#: eigendecompositions (per-pixel penalty choice), primal, dual and sklearn's;
#: and metrics computed along such different paths.
SOLVER = 1e-9
#: Against the slow per-pixel reference (``tests/reference.py``) and refits.
REFERENCE = 1e-8
#: Against an iterative solver (coordinate descent) or brute-force GCV scores.
LOOSE = 1e-7
#: Absolute floor under a relative comparison of sums that may be zero.
NEAR_ZERO = 1e-15
#: Half an 8-bit grey level, and a little: images rounded to uint8.
HALF_LEVEL = 0.51
#: Grey levels a JPEG round trip may change.
JPEG_LEVELS = 8


# ----------------------------------------------------------------------- data


def random_pairs(
    rng: np.random.Generator, n: int, height: int, width: int, channels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Random sources and targets where the target depends locally on the source."""
    sources = rng.random((n, height, width, channels)) * 200 + 10
    noise = rng.random((n, height, width, channels)) * 50
    shifted = np.roll(sources, 1, axis=2)
    targets = 0.6 * sources + 0.3 * shifted + noise
    return sources, targets


def save_image(path: Path, image: np.ndarray, **kwargs: Any) -> Path:
    """Write an image file with Pillow (folders made), e.g. ``quality=85``."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, **kwargs)
    return path


# ---------------------------------------------------------------- comparisons

_SAME = object()


def _parts(model: Any, target: str | None, bias: bool) -> tuple[Any, Any]:
    """``(weights, bias)`` arrays of a dmask Model, a pair, or weights alone."""
    if hasattr(model, "weights") and hasattr(model, "bias"):
        weights = np.asarray(model.weights(target))
        return weights, np.asarray(model.bias(target)) if bias else None
    if isinstance(model, tuple):
        weights, values = model
        return np.asarray(weights), None if values is None else np.asarray(values)
    return np.asarray(model), None


def assert_model_close(
    actual: Any,
    expected: Any,
    target: str | None = None,
    *,
    expected_target: Any = _SAME,
    atol: float = EXACT,
    rtol: float = 0.0,
    bias: bool = True,
) -> None:
    """Assert two models have the same weights and biases, within ``atol``.

    Parameters
    ----------
    actual, expected
        dmask :class:`~dmask.Model` objects, ``(weights, bias)`` pairs of
        arrays, or weight arrays alone (then only weights are compared).
    target
        Target of a Model to compare (None: its only one); ``expected_target``
        names another for ``expected``.
    atol, rtol
        One tolerance for weights and bias alike; :data:`EXACT` by default. Both
        zero compares bit for bit (``assert_array_equal``).
    bias
        Compare the biases too.
    """
    other = target if expected_target is _SAME else expected_target
    got_w, got_b = _parts(actual, target, bias)
    want_w, want_b = _parts(expected, other, bias)
    pairs = [("weights", got_w, want_w)]
    if bias:
        if got_b is None or want_b is None:
            raise TypeError("bias=True needs models or (weights, bias) pairs")
        pairs.append(("bias", got_b, want_b))
    for name, got, want in pairs:
        if atol == 0 and rtol == 0:
            np.testing.assert_array_equal(got, want, err_msg=name)
        else:
            np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=name)


# ------------------------------------------------------------------ laziness


class CountingScheduler:
    """A dask scheduler that counts the computations it is asked for.

    Each call runs synchronously (``dask.local.get_sync``). Set it with
    ``dask.config.set(scheduler=counter)`` to count the computes that use the
    configured scheduler (``.compute()``, ``.values``, ``numpy.asarray``).

    As a context manager (``with CountingScheduler() as counter``) it sets
    itself so and also counts, through dask's callbacks, computations that
    name another local scheduler: ``dmask.graph.runtime.compute`` asks for
    ``scheduler="threads"`` explicitly, which the configured one never sees.
    """

    def __init__(self) -> None:
        self.calls = 0
        self._delegating = 0
        self._config: Any = None
        self._callback: Callback | None = None

    def __call__(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        self.calls += 1
        self._delegating += 1
        try:
            return dask.local.get_sync(dsk, keys, **kwargs)
        finally:
            self._delegating -= 1

    def _started(self, dsk: Any) -> None:
        if not self._delegating:  # a computation past this scheduler
            self.calls += 1

    def __enter__(self) -> CountingScheduler:
        self._config = dask.config.set(scheduler=self)
        self._config.__enter__()
        self._callback = Callback(start=self._started)
        self._callback.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._callback is not None and self._config is not None
        self._callback.__exit__(*exc)
        self._config.__exit__(*exc)


LOOPBACK = ("127.0.0.1", "::1")


def listening_sockets(pids: Iterable[int]) -> list[tuple[int, str, int]]:
    """``(pid, address, port)`` of every listening socket of these processes."""
    import psutil

    found = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            connections = process.net_connections(kind="inet")
        except psutil.Error:
            continue
        found += [
            (pid, c.laddr.ip, c.laddr.port)
            for c in connections
            if c.status == psutil.CONN_LISTEN
        ]
    return found


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [pid, *(p.pid for p in root.children(recursive=True))]
    except psutil.Error:
        return []


#: Command-line options for a one-worker cluster of threads in this process,
#: without progress lines on stderr (tests count its lines).
LOCAL_CLUSTER = [
    "--workers", "1", "--in-process", "--dashboard-address", "127.0.0.1:0",
    "--no-progress",
]  # fmt: skip


#: Lines of stderr that are messages, not errors: the dashboard's link and the
#: plain progress lines (``time INFO dmask.progress: phase: ...``).
_MESSAGE_LINE = re.compile(
    r"^(dashboard: |\d{4}-\d\d-\d\d [\d:,]+ INFO dmask\.progress: )"
)


def error_lines(stderr: str) -> list[str]:
    """The lines of a command's stderr other than its messages (the dashboard's
    link, progress): an error is one of them."""
    return [
        line for line in stderr.splitlines()
        if line.strip() and not _MESSAGE_LINE.match(line)
    ]  # fmt: skip


def cli_error(capsys: Any, *argv: Any, code: int = 1, seconds: float = 60.0) -> str:
    """Run ``dmask`` in this process; it must fail with ``code`` and one line.

    ``code`` 1: the run failed; 2: a usage error found after parsing (options
    that cannot go together). argparse's own errors print the usage too: see
    :func:`usage_error`.

    Returns that line of stderr. ``seconds`` bounds how long the failure may
    take (refusals come before the work).
    """
    import time

    from dmask.cli import main

    started = time.perf_counter()
    got = main([str(a) for a in argv])
    captured = capsys.readouterr()
    lines = error_lines(captured.err)
    assert got == code, captured.err
    assert len(lines) == 1, captured.err
    assert time.perf_counter() - started < seconds
    return lines[0]


def usage_error(capsys: Any, *argv: Any) -> str:
    """Run ``dmask`` in this process; argparse must refuse it (exit 2).

    Returns the error line (the last line of stderr, after the usage).
    """
    from dmask.cli import main

    got = main([str(a) for a in argv])
    captured = capsys.readouterr()
    lines = error_lines(captured.err)
    assert got == 2, captured.err
    assert lines and lines[0].startswith("usage: dmask"), captured.err
    assert ": error: " in lines[-1], captured.err
    return lines[-1]
