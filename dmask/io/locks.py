"""Output locks: one run at a time writes to an output path."""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from dmask.errors import StoreError
from dmask.io.locations import is_local, store_path

logger = logging.getLogger(__name__)

__all__ = ["F", "locks_output", "output_lock"]


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
    """Whether the holder may still run (always, for another host's or unreadable)."""
    if holder.get("host") != socket.gethostname():
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


@contextlib.contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold ``<path>.lock`` while a run writes ``path``; refuse a second run.

    The lock file names the process, host and start time. A lock left by a run
    that died on this host is taken over; one from another host must be removed
    by hand. Remote (URL) outputs are not locked.

    Raises
    ------
    StoreError
        Another live run holds the lock.
    """
    if not is_local(path):
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
    owned = False
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_lock(lock)
            if holder is None:
                continue  # released meanwhile: try again
            if is_self(holder):
                break  # nested in this process: the outer block holds it
            if alive(holder):
                refuse_locked(path, holder)
            logger.warning("taking over the stale lock %s (%s)", lock, holder)
            with contextlib.suppress(FileNotFoundError):
                os.remove(lock)
            continue
        with os.fdopen(fd, "w") as handle:
            json.dump(me, handle)
        owned = True
        break
    else:
        raise StoreError(f"cannot take the lock {lock}")
    try:
        yield
    finally:
        if owned:
            with contextlib.suppress(FileNotFoundError):
                os.remove(lock)


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
