"""Store paths: local or remote, absolute, and whether two name the same store."""

from __future__ import annotations

import os

__all__ = ["same_store", "store_path"]


def is_local(path: str | os.PathLike) -> bool:
    return "://" not in str(path)


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
