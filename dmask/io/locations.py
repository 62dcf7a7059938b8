"""Paths: local or remote (fsspec URLs), absolute, as path objects, and whether
two name the same store."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dmask.io import storage as _storage  # noqa: F401  (installs storage options)

__all__ = ["absolute", "as_path", "is_local", "same_store", "store_path"]


def is_local(path: str | os.PathLike) -> bool:
    return "://" not in str(path)


def as_path(path: str | os.PathLike) -> Any:
    """A path object: ``pathlib.Path``, or a ``upath.UPath`` over fsspec for URLs.

    Both have ``/``, ``stem``, ``is_dir``, ``is_file``, ``rglob`` and
    ``relative_to``, so folder layouts read the same on object storage.
    """
    if is_local(path):
        return Path(path)
    from upath import UPath

    return UPath(str(path))


def absolute(path: str | os.PathLike) -> str:
    """An absolute local path, or a URL as it is (``str`` of a ``UPath``)."""
    return os.path.abspath(path) if is_local(path) else str(path)


def store_path(path: str | os.PathLike) -> str:
    """The path workers use: absolute for local stores, as given for URLs."""
    return os.path.abspath(path) if is_local(path) else str(path)


def same_store(a: str | os.PathLike, b: str | os.PathLike | None) -> bool:
    """Whether two store paths name the same store."""
    if b is None:
        return False
    if is_local(a) and is_local(b):
        return os.path.realpath(a) == os.path.realpath(b)
    return str(a).rstrip("/") == str(b).rstrip("/")
