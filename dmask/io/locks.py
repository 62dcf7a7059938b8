"""Output locks: one run at a time writes to an output path.

A local output's lock is a file made with ``O_EXCL``; an output on object
storage (any ``scheme://`` URL) has a lock object made by a conditional create
(S3's ``If-None-Match: *``, which AWS S3, MinIO and moto honour), refreshed by
the run that holds it so that one left by a run that died can be told apart.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from dmask.errors import StoreError
from dmask.io.locations import is_local, store_path

logger = logging.getLogger(__name__)

__all__ = ["F", "check_unlocked", "locks_output", "output_lock", "remote_lock"]


F = TypeVar("F", bound=Callable[..., Any])


def lock_path(path: str | os.PathLike) -> str:
    return store_path(path).rstrip("/" + os.sep) + ".lock"


def check_parent(path: str | os.PathLike) -> None:
    """Refuse an output whose folder is a file (or sits below one)."""
    parent = os.path.dirname(os.path.abspath(path))
    while parent and not os.path.lexists(parent):
        parent = os.path.dirname(parent) if os.path.dirname(parent) != parent else ""
    if parent and not os.path.isdir(parent):
        raise StoreError(f"cannot write {path}: {parent} is a file, not a folder")


def read_lock(lock: str) -> dict[str, Any] | None:
    """The holder recorded in a lock file; None when there is no file."""
    try:
        with open(lock) as handle:
            return dict(json.load(handle))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):  # being written right now, or garbled
        return {"pid": -1, "host": "?", "started": "?"}


def is_self(holder: dict[str, Any]) -> bool:
    return (
        holder.get("host") == socket.gethostname() and holder.get("pid") == os.getpid()
    )


def alive(holder: dict[str, Any]) -> bool:
    """Whether the holder may still run.

    On this host: whether its process is alive. On another host: yes for a
    local lock file (it cannot be told), and for an object-storage lock (one
    with a ``heartbeat``) while it was refreshed within ``dmask.lock-expiry``.
    """
    if holder.get("host") != socket.gethostname():
        beat = holder.get("heartbeat")
        if isinstance(beat, int | float):
            from dmask.options import get

            return time.time() - beat < float(get("lock-expiry"))
        return True
    try:
        os.kill(int(holder.get("pid", -1)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    return True


def refuse_locked(path: str | os.PathLike, holder: dict[str, Any]) -> None:
    raise StoreError(
        f"{path} is being written by another run (pid {holder.get('pid')} on "
        f"{holder.get('host')} since {holder.get('started')}); wait for it, or "
        f"remove {lock_path(path)} if that run is gone"
    )


def _take(
    path: str | os.PathLike,
    lock: str,
    create: Callable[[], Any],
    holder: Callable[[], dict[str, Any] | None],
    remove: Callable[[], Any],
) -> bool:
    """Take a lock by ``create()`` (FileExistsError when it exists): True when
    taken, False when this process holds it already (a nested block).

    A holder that is gone (:func:`alive`) is removed and the lock taken over;
    a live one is refused (:func:`refuse_locked`).
    """
    for _ in range(3):
        try:
            create()
        except FileExistsError:
            found = holder()
            if found is None:
                continue  # released meanwhile: try again
            if is_self(found):
                return False  # nested in this process: the outer block holds it
            if alive(found):
                refuse_locked(path, found)
            logger.warning(
                "taking over the lock %s of a run that is gone (%s)", lock, found
            )
            with contextlib.suppress(FileNotFoundError):
                remove()
            continue
        return True
    raise StoreError(f"cannot take the lock {lock}")


@contextlib.contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold ``<path>.lock`` while a run writes ``path``; refuse a second run.

    The lock file names the process, host and start time. A lock left by a run
    that died on this host is taken over; one from another host must be removed
    by hand. A remote (URL) output's lock is an object beside it, made by a
    conditional create and refreshed while the run lasts (:func:`remote_lock`).

    Raises
    ------
    StoreError
        Another live run holds the lock.
    """
    if not is_local(path):
        with remote_lock(path):
            yield
        return
    check_parent(path)
    lock = lock_path(path)
    os.makedirs(os.path.dirname(lock) or ".", exist_ok=True)
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }

    def create() -> None:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "w") as handle:
            json.dump(me, handle)

    owned = _take(path, lock, create, lambda: read_lock(lock), lambda: os.remove(lock))
    try:
        yield
    finally:
        if owned:
            with contextlib.suppress(FileNotFoundError):
                os.remove(lock)


def _remote_holder(fs: Any, location: str) -> dict[str, Any] | None:
    try:
        return dict(json.loads(fs.cat_file(location)))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):  # garbled: treat as held, by nobody known
        return {"pid": -1, "host": "?", "started": "?"}


def _heartbeat(
    fs: Any, location: str, me: dict[str, Any], stop: threading.Event, every: float
) -> None:
    """Refresh the lock object's ``heartbeat`` while it is still this run's."""
    while not stop.wait(every):
        try:
            holder = _remote_holder(fs, location)
            if holder is None or holder.get("token") != me["token"]:
                logger.error(
                    "the lock %s is no longer this run's (taken over as abandoned?)",
                    location,
                )
                return
            me["heartbeat"] = time.time()
            fs.pipe_file(location, json.dumps(me).encode())
        except Exception as exc:  # a network blip: try again next time
            logger.warning("cannot refresh the lock %s: %s", location, exc)


@contextlib.contextmanager
def remote_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold ``<path>.lock`` on object storage while a run writes ``path``.

    The lock object is created only if absent (``mode="create"``: a
    conditional put on S3, so of two runs exactly one gets it), names the
    process, host and start time, and carries a ``heartbeat`` time this run
    refreshes every ``dmask.lock-expiry / 5`` seconds. Another run is refused
    while the heartbeat is recent (or, on this host, while the process lives);
    a lock whose run is gone is taken over with a warning.

    Raises
    ------
    StoreError
        Another live run holds the lock.
    """
    import fsspec

    from dmask.options import get

    lock = lock_path(path)
    fs, location = fsspec.core.url_to_fs(lock)
    me: dict[str, Any] = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "heartbeat": time.time(),
        "token": secrets.token_hex(8),
    }
    owned = _take(
        path,
        lock,
        lambda: fs.pipe_file(location, json.dumps(me).encode(), mode="create"),
        lambda: _remote_holder(fs, location),
        lambda: fs.rm_file(location),
    )
    stop = threading.Event()
    beat = None
    if owned:
        every = float(get("lock-expiry")) / 5
        beat = threading.Thread(
            target=_heartbeat,
            args=(fs, location, me, stop, every),
            name="dmask-lock-heartbeat",
            daemon=True,
        )
        beat.start()
    try:
        yield
    finally:
        stop.set()
        if beat is not None:
            beat.join()
        if owned:
            holder = _remote_holder(fs, location)
            if holder is not None and holder.get("token") == me["token"]:
                with contextlib.suppress(FileNotFoundError):
                    fs.rm_file(location)


def check_unlocked(path: str | os.PathLike) -> None:
    """Refuse ``path`` when another live run holds its lock (local or remote)."""
    if is_local(path):
        holder = read_lock(lock_path(path))
    else:
        import fsspec

        fs, location = fsspec.core.url_to_fs(lock_path(path))
        holder = _remote_holder(fs, location)
    if holder is not None and not is_self(holder) and alive(holder):
        refuse_locked(path, holder)


def locks_output(argument: str) -> Callable[[F], F]:
    """Decorator: hold :func:`output_lock` on the argument named for the call."""

    def decorate(func: F) -> F:
        signature = inspect.signature(func)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            path = signature.bind(*args, **kwargs).arguments.get(argument)
            if path is None:
                return func(*args, **kwargs)
            with output_lock(path):
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
