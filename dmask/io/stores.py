"""Zarr stores in general: paths, formats, preparing and finalising outputs."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import xarray as xr
import zarr

from dmask.errors import StoreError
from dmask.io.locations import is_local, same_store
from dmask.io.locks import alive, is_self, lock_path, read_lock, refuse_locked

logger = logging.getLogger(__name__)

__all__ = [
    "DATASET_FORMAT",
    "FORMAT_VERSION",
    "MODEL_FORMAT",
    "channel_names",
    "finalize_store",
    "prepare_output",
    "quiet_zarr",
]


DATASET_FORMAT = "dmask-dataset"


MODEL_FORMAT = "dmask-model"


FORMAT_VERSION = 1


@contextlib.contextmanager
def quiet_zarr() -> Iterator[None]:
    """Silence zarr's notes on string dtypes and consolidated metadata in v3."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Zarr V3 specification.*")
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        yield


def channel_names(channels: int) -> list[str]:
    """``R, G, B`` for three channels, else ``c0, c1, ...``."""
    return ["R", "G", "B"] if channels == 3 else [f"c{i}" for i in range(channels)]


def prepare_output(
    path: str | os.PathLike,
    overwrite: bool,
    inputs: Sequence[str | os.PathLike | None] = (),
) -> None:
    """Refuse an existing output store, or remove it when ``overwrite``.

    Parameters
    ----------
    path : str or path
        Output store.
    overwrite : bool
        Replace an existing store.
    inputs : sequence of str or path
        Stores the run reads: the output may never be one of them.

    Raises
    ------
    StoreError
        The path exists and ``overwrite`` is false, it is one of the inputs, or
        another live run is writing it.
    """
    if is_local(path):
        holder = read_lock(lock_path(path))
        if holder is not None and not is_self(holder) and alive(holder):
            refuse_locked(path, holder)
    for source in inputs:
        if same_store(path, source):
            raise StoreError(
                f"output store {path} is also an input of this run; choose another"
            )
    if not is_local(path):
        import fsspec

        fs, location = fsspec.core.url_to_fs(str(path))
        if fs.exists(location):
            if not overwrite:
                raise StoreError(
                    f"output store {path} already exists (pass --overwrite)"
                )
            fs.rm(location, recursive=True)
        return
    if os.path.lexists(path):
        if not overwrite:
            raise StoreError(f"output store {path} already exists (pass --overwrite)")
        logger.info("removing existing store %s", path)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


def open_store(path: str | os.PathLike, kind: str, expected_format: str) -> xr.Dataset:
    if is_local(path) and not os.path.exists(path):
        raise StoreError(f"{kind} store {path} does not exist")
    try:
        with quiet_zarr():
            ds = xr.open_zarr(str(path), consolidated=None, zarr_format=3)
    except Exception as exc:  # zarr and xarray raise many kinds here
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StoreError(f"cannot read {kind} store {path}: {reason}") from exc
    found = ds.attrs.get("format")
    if found != expected_format:
        raise StoreError(
            f"{path} is not a {kind} store (format {found!r}, expected "
            f"{expected_format!r})"
        )
    version = ds.attrs.get("format_version")
    if version != FORMAT_VERSION:
        raise StoreError(f"{kind} store {path} has unsupported version {version!r}")
    if not ds.attrs.get("complete", False):
        raise StoreError(
            f"{kind} store {path} is incomplete (the run that wrote it did not finish)"
        )
    return ds


def finalize_store(path: str | os.PathLike, **attrs: Any) -> None:
    """Set attributes, mark the store complete and consolidate its metadata."""
    with quiet_zarr():
        group = zarr.open_group(str(path), mode="r+")
        group.attrs.update({**attrs, "complete": True})
        zarr.consolidate_metadata(str(path))
