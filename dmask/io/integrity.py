"""Store integrity: a manifest of every chunk a run wrote, checked by readers.

Zarr returns the fill value for a chunk that is not there, so a store that lost
a chunk file (a failed copy, a deleted file) reads as zeros or NaN without an
error. When a run finishes a store it records every chunk file and its size in
``dmask-chunks.json`` at the store's root; :func:`check_manifest` (run whenever
dmask opens a store) refuses a store whose chunks are missing or changed in
size, and :func:`verify` also decodes every chunk, which finds damaged ones.
Chunks that hold only the fill value are never written, so they are not
recorded and their absence is no error.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

from dmask.errors import StoreError

__all__ = ["MANIFEST", "VerifyReport", "check_manifest", "verify", "write_manifest"]

logger = logging.getLogger(__name__)

#: The manifest's file name at the root of a store.
MANIFEST = "dmask-chunks.json"
_FORMAT = "dmask-chunk-manifest"


def _filesystem(path: str | os.PathLike) -> tuple[Any, str]:
    import fsspec

    fs, root = fsspec.core.url_to_fs(str(path))
    return fs, root.rstrip("/")


def _chunk_files(fs: Any, root: str) -> dict[str, int]:
    """Every data file of a store: key relative to the root -> size in bytes."""
    found = fs.find(root, detail=True)
    files = {}
    for name, info in found.items():
        key = name[len(root) :].lstrip("/")
        if key == MANIFEST or key.endswith("zarr.json") or key.startswith("."):
            continue
        files[key] = int(info.get("size") or 0)
    return files


def write_manifest(path: str | os.PathLike) -> int:
    """Record every chunk of a finished store; returns how many."""
    fs, root = _filesystem(path)
    chunks = _chunk_files(fs, root)
    body = json.dumps({"format": _FORMAT, "version": 1, "chunks": chunks})
    fs.pipe_file(f"{root}/{MANIFEST}", body.encode())
    return len(chunks)


def _read_manifest(fs: Any, root: str, path: str) -> dict[str, int] | None:
    try:
        raw = fs.cat_file(f"{root}/{MANIFEST}")
    except FileNotFoundError:
        return None
    try:
        manifest = json.loads(raw)
        if manifest.get("format") != _FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}")
        return {str(k): int(v) for k, v in manifest["chunks"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StoreError(f"store {path}: unreadable {MANIFEST} ({exc})") from None


def check_manifest(
    path: str | os.PathLike, kind: str = "", required: bool = False
) -> int:
    """Refuse a store whose recorded chunks are missing or changed in size.

    Returns the number of chunks checked (0 for a store written before
    manifests, which is accepted as it is unless ``required``: its attributes
    say it has one).

    Raises
    ------
    StoreError
        Naming the store and the first missing or changed chunk.
    """
    fs, root = _filesystem(path)
    recorded = _read_manifest(fs, root, str(path))
    what = f"{kind} store" if kind else "store"
    if recorded is None:
        if required:
            raise StoreError(f"{what} {path} has lost its chunk manifest {MANIFEST}")
        return 0
    present = _chunk_files(fs, root)
    missing = [key for key in recorded if key not in present]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise StoreError(
            f"{what} {path} is missing chunk {missing[0]}{more} of the "
            f"{len(recorded)} its run wrote; copy the store again or re-run"
        )
    for key, size in recorded.items():
        if present[key] != size:
            raise StoreError(
                f"{what} {path} has a damaged chunk {key}: {present[key]} bytes, "
                f"{size} when written"
            )
    return len(recorded)


@dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify` checked."""

    path: str
    arrays: int
    chunks: int
    recorded: int

    def summary(self) -> str:
        note = "" if self.recorded else " (no chunk manifest: written before them)"
        return (
            f"{self.path}: ok, {self.arrays} arrays, {self.chunks} chunks decoded, "
            f"{self.recorded} recorded chunks present{note}"
        )


def verify(path: str | os.PathLike) -> VerifyReport:
    """Check a store's manifest, then decode every chunk of every array.

    Raises
    ------
    StoreError
        A missing, changed or undecodable chunk, naming it.
    """
    import itertools

    import zarr

    from dmask.io.stores import quiet_zarr

    recorded = check_manifest(path)
    try:
        with quiet_zarr():
            group = zarr.open_group(str(path), mode="r")
            arrays = [  # the subgroups' too (the tile bookkeeping)
                (name, node)
                for name, node in group.members(max_depth=None)
                if isinstance(node, zarr.Array)
            ]
    except Exception as exc:  # zarr raises many kinds here
        raise StoreError(f"cannot read store {path}: {exc}") from None
    chunks = 0
    for name, array in arrays:
        grid = [range(0, s, c) for s, c in zip(array.shape, array.chunks, strict=True)]
        for corner in itertools.product(*grid):
            where = tuple(
                slice(o, min(o + c, s))
                for o, c, s in zip(corner, array.chunks, array.shape, strict=True)
            )
            try:
                array[where]
            except Exception as exc:  # a codec's error for damaged bytes
                index = ".".join(
                    str(o // c) for o, c in zip(corner, array.chunks, strict=True)
                )
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise StoreError(
                    f"store {path}: chunk {index} of {name} cannot be read: {reason}"
                ) from None
            chunks += 1
    return VerifyReport(str(path), len(arrays), chunks, recorded)
