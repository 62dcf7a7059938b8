"""Zarr stores in general: paths, formats, preparing and finalising outputs."""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

from dmask.errors import StoreError
from dmask.io import atomic, integrity
from dmask.io.locations import is_local, same_store
from dmask.io.locks import check_parent, check_unlocked

logger = logging.getLogger(__name__)

__all__ = [
    "DATASET_FORMAT",
    "FORMAT_VERSION",
    "MODEL_FORMAT",
    "PROGRESS_GROUP",
    "READABLE_VERSIONS",
    "STATISTICS_FORMAT",
    "channel_names",
    "command_line",
    "create_progress",
    "describe",
    "progress_array",
    "provenance",
    "recording_command",
    "text_as_fixed_width",
    "text_as_strings",
    "discard_store",
    "finalize_store",
    "finished_or_discarded",
    "prepare_output",
    "quiet_zarr",
    "replaced_path",
    "staging_path",
]


DATASET_FORMAT = "dmask-dataset"


MODEL_FORMAT = "dmask-model"


STATISTICS_FORMAT = "dmask-statistics"


#: The version this dmask writes. 2: variable-length strings, CF attributes on
#: every variable, ``provenance``, and the tile bookkeeping in :data:`PROGRESS_GROUP`.
FORMAT_VERSION = 2

#: Versions this dmask opens: 1 is what dmask wrote before 2 (fixed-length
#: UTF-32 strings, ``tile_complete`` among the data variables).
READABLE_VERSIONS = (1, 2)

#: The subgroup that holds a store's tile bookkeeping (``tile_complete``), out of
#: the data variables that ``xarray.open_zarr`` shows.
PROGRESS_GROUP = "progress"


@contextlib.contextmanager
def quiet_zarr() -> Iterator[None]:
    """Silence zarr's notes on consolidated metadata in v3.

    And on the fixed-length strings of format 1 stores, which dmask reads but no
    longer writes.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Zarr V3 specification.*")
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        # dmask's own file beside the arrays (integrity.MANIFEST)
        warnings.filterwarnings(
            "ignore", message=".*dmask-chunks.json is not recognized.*"
        )
        yield


def channel_names(channels: int) -> list[str]:
    """``R, G, B`` for three channels, else ``c0, c1, ...``."""
    return ["R", "G", "B"] if channels == 3 else [f"c{i}" for i in range(channels)]


def text_as_strings(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with every text variable as numpy's variable-length ``StringDType``.

    xarray and zarr write those as zarr v3's ``string`` data type (``vlen-utf8``
    codec); numpy's fixed-width ``<U`` text would become zarr's
    ``fixed_length_utf32``, which has no v3 specification.
    """
    strings = np.dtypes.StringDType()
    changed = {
        name: variable.astype(strings)
        for name, variable in ds.variables.items()
        if variable.dtype.kind in "USO" and variable.dtype != strings
    }
    for variable in changed.values():
        variable.encoding = {}
    return _replaced(ds, changed)


def _replaced(ds: xr.Dataset, changed: Mapping[str, xr.Variable]) -> xr.Dataset:
    """A copy of ``ds`` with the ``changed`` variables in place (indexes too)."""
    if not changed:
        return ds
    ds = ds.copy()
    for name, variable in changed.items():
        if name in ds.indexes:
            ds = ds.assign_coords({name: variable})
        else:
            ds[name] = variable
    return ds


def text_as_fixed_width(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with its variable-length text (as read) as numpy's ``<U``, in memory.

    numpy cannot cast ``StringDType`` with ``astype(str)``, which code that
    reads labels uses; the labels are small (coordinates), so they are loaded.
    """
    strings = np.dtypes.StringDType()
    changed = {
        name: variable.copy(data=np.asarray(variable.values).astype(object).astype(str))
        for name, variable in ds.variables.items()
        if variable.dtype == strings
    }
    return _replaced(ds, changed)


#: Descriptions of the coordinates every kind of store has.
SHARED_DESCRIPTIONS: dict[str, dict[str, Any]] = {
    "target": {"long_name": "target expression"},
    "channel": {"long_name": "colour channel"},
}


def describe(ds: xr.Dataset, descriptions: Mapping[str, Mapping[str, Any]]) -> None:
    """Set CF-style attributes (``long_name``, ``units``, ...) on ``ds``'s variables.

    ``descriptions`` maps a variable name to its attributes; names ``ds`` does
    not have are skipped. Changes ``ds`` in place.
    """
    for name, attrs in descriptions.items():
        if name in ds.variables:
            ds[name].attrs.update(attrs)


_COMMAND: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "dmask_command", default=None
)


@contextlib.contextmanager
def recording_command(argv: Sequence[str]) -> Iterator[None]:
    """Record ``argv`` as the command line of the stores written in the block."""
    token = _COMMAND.set([str(a) for a in argv])
    try:
        yield
    finally:
        _COMMAND.reset(token)


def command_line() -> list[str] | None:
    """The command line that is writing a store: None from the Python API.

    What :func:`recording_command` set, else ``sys.argv`` when this process is
    dmask's command line (the ``dmask`` script or ``python -m dmask``).
    """
    recorded = _COMMAND.get()
    if recorded is not None:
        return recorded
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    script = os.path.basename(sys.argv[0]) if sys.argv else ""
    if getattr(spec, "name", None) == "dmask.__main__" or script in (
        "dmask",
        "dmask.exe",
    ):
        return list(sys.argv)
    return None


#: Libraries whose versions every store records.
PROVENANCE_PACKAGES = ("dmask", "dask", "distributed", "zarr", "xarray", "numpy")


def package_version(package: str) -> str:
    """An installed package's version, ``unknown`` when it is not installed."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def utc_now() -> str:
    """This moment in UTC, ISO 8601 to the second with ``Z``."""
    now = datetime.datetime.now(datetime.UTC)
    return now.isoformat(timespec="seconds").replace("+00:00", "Z")


def provenance(**extra: Any) -> dict[str, Any]:
    """Who wrote a store, when and how: the ``provenance`` attribute (JSON).

    ``created`` (UTC, ISO 8601 with ``Z``), ``versions`` of
    :data:`PROVENANCE_PACKAGES` and Python, ``command`` (see
    :func:`command_line`), and ``extra`` entries left as given (None ones left
    out).
    """
    versions = {name: package_version(name) for name in PROVENANCE_PACKAGES}
    versions["python"] = ".".join(str(v) for v in sys.version_info[:3])
    out: dict[str, Any] = {
        "created": utc_now(),
        "working_directory": os.getcwd(),
        "versions": versions,
        "command": command_line(),
    }
    out.update({key: value for key, value in extra.items() if value is not None})
    return out


def create_progress(
    path: str | os.PathLike,
    shape: tuple[int, ...],
    dims: tuple[str, ...],
    done: bool = False,
) -> None:
    """Add the ``tile_complete`` array (one chunk per tile) in :data:`PROGRESS_GROUP`.

    Each tile's task sets its own entry to 1 once the tile's chunks are written
    (``done``: all 1 already). Then the store's metadata is consolidated again.
    """
    with quiet_zarr():
        group = zarr.open_group(str(path), mode="r+")
        progress = group.create_group(
            PROGRESS_GROUP,
            attributes={"description": "dmask's bookkeeping of the tiles written"},
            overwrite=True,
        )
        array = progress.create_array(
            "tile_complete",
            shape=shape,
            chunks=(1,) * len(shape),
            dtype="u1",
            fill_value=0,
            dimension_names=dims,
            attributes={
                "long_name": "tile written (1) or not yet (0)",
                "units": "1",
                "valid_min": 0,
                "valid_max": 1,
            },
            overwrite=True,
        )
        if done:
            array[...] = 1
        zarr.consolidate_metadata(str(path))


def progress_array(group: zarr.Group) -> zarr.Array:
    """A store's ``tile_complete``: in :data:`PROGRESS_GROUP`, or at the root
    (format 1)."""
    if PROGRESS_GROUP in group:
        found = group[PROGRESS_GROUP]["tile_complete"]
    else:
        found = group["tile_complete"]
    assert isinstance(found, zarr.Array)
    return found


#: Suffix of the store a run writes beside an existing output it replaces.
STAGING_SUFFIX = ".dmask-staging"


def _split(path: str | os.PathLike) -> tuple[str, str, str]:
    """``(folder, separator, name)`` of a local path or a URL."""
    text = str(path).rstrip("/" + os.sep)
    return text.rpartition("/" if "://" in text else os.sep)


def staging_path(path: str | os.PathLike) -> str:
    """Where a run writes a store that replaces ``path``: a hidden sibling."""
    head, sep, name = _split(path)
    return f"{head}{sep}.{name}{STAGING_SUFFIX}"


def replaced_path(path: str | os.PathLike) -> str | None:
    """The output a staging store replaces, or None for any other store."""
    head, sep, name = _split(path)
    if name.startswith(".") and name.endswith(STAGING_SUFFIX):
        return f"{head}{sep}{name[1 : -len(STAGING_SUFFIX)]}"
    return None


def _exists(path: str) -> bool:
    if is_local(path):
        return os.path.lexists(path)
    import fsspec

    fs, location = fsspec.core.url_to_fs(path)
    return fs.exists(location)


def _remove(path: str) -> None:
    if is_local(path):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
        return
    import fsspec

    fs, location = fsspec.core.url_to_fs(path)
    if fs.exists(location):
        fs.rm(location, recursive=True)


def discard_store(path: str | os.PathLike) -> None:
    """Remove a store this run created and could not finish (new or staging)."""
    _remove(str(path))


def _remove_old_copies(path: str) -> None:
    """Remove old outputs a swap moved aside and a crash left behind."""
    import glob

    head, _, name = _split(path)
    pattern = f".{glob.escape(name)}{atomic.OLD_MARK}*"
    for old in glob.glob(os.path.join(head or ".", pattern)):
        _remove(old)


def _swap_in(staged: str, final: str) -> None:
    """Put the finished store ``staged`` at ``final``; the old one goes last."""
    if is_local(final):
        atomic.replace_directory(Path(staged), Path(final), overwrite=True)
        return
    atomic.replace_remote(staged, final, last=("zarr.json", integrity.MANIFEST))


def prepare_output(
    path: str | os.PathLike,
    overwrite: bool,
    inputs: Sequence[str | os.PathLike | None] = (),
) -> str:
    """Check an output store and say where to write it; nothing is deleted.

    A new output is written in place. An existing one (with ``overwrite``) is
    left as it is: the run writes a staging store beside it
    (:func:`staging_path`), and :func:`finalize_store` swaps that in only when
    it is complete, so every failure before then leaves the old output whole.

    Parameters
    ----------
    path : str or path
        Output store.
    overwrite : bool
        Replace an existing store.
    inputs : sequence of str or path
        Stores the run reads: the output may never be one of them.

    Returns
    -------
    str
        The store to write: ``path``, or its staging store.

    Raises
    ------
    StoreError
        The path exists and ``overwrite`` is false, it is one of the inputs, or
        another live run is writing it.
    """
    path = str(path)
    if replaced_path(path) is not None:
        raise StoreError(
            f"output store {path}: names ending in {STAGING_SUFFIX} are dmask's own"
        )
    if is_local(path):
        check_parent(path)
        _remove_old_copies(path)
    check_unlocked(path)
    for source in inputs:
        if same_store(path, source):
            raise StoreError(
                f"output store {path} is also an input of this run; choose another"
            )
    if not _exists(path):
        return path
    if not overwrite:
        raise StoreError(f"output store {path} already exists (pass --overwrite)")
    staged = staging_path(path)
    _remove(staged)  # what a failed earlier run left
    logger.info(
        "writing beside %s; it is replaced when the new store is complete", path
    )
    return staged


@contextlib.contextmanager
def finished_or_discarded(written: str | os.PathLike) -> Iterator[None]:
    """Finalise the store ``written`` after the block, or remove it if it fails.

    For stores written whole in one run (no resume): a failure never leaves a
    half-written store, and a staging store's old output stays as it was.
    """
    try:
        yield
    except BaseException:
        discard_store(written)
        raise
    finalize_store(written)


def open_store(path: str | os.PathLike, kind: str, expected_format: str) -> xr.Dataset:
    """Open a finished store of ``kind`` lazily: its format, version and chunks
    checked.

    Stores of every version in :data:`READABLE_VERSIONS` open, the same way: a
    format 1 store's ``tile_complete`` is left out as format 2 keeps it out of
    the data variables.
    """
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
    if version not in READABLE_VERSIONS:
        raise StoreError(
            f"{kind} store {path} has format_version {version!r}; this dmask reads "
            f"versions {', '.join(map(str, READABLE_VERSIONS))} (a newer dmask wrote "
            "it: upgrade dmask to open it)"
        )
    if not ds.attrs.get("complete", False):
        raise StoreError(
            f"{kind} store {path} is incomplete (the run that wrote it did not finish)"
        )
    integrity.check_manifest(path, kind, required=bool(ds.attrs.get("chunk_manifest")))
    if version != FORMAT_VERSION:
        logger.info(
            "%s store %s has format_version %s (read as it is; dmask writes %s)",
            kind, path, version, FORMAT_VERSION,
        )  # fmt: skip
    if "tile_complete" in ds.data_vars:  # format 1 kept it among the data
        ds = ds.drop_vars("tile_complete")
    return text_as_fixed_width(ds)


def finalize_store(path: str | os.PathLike, **attrs: Any) -> str:
    """Set attributes, mark the store complete and consolidate its metadata.

    A staging store (from :func:`prepare_output`) then replaces the output it
    was written for. Returns where the finished store is.
    """
    integrity.write_manifest(path)  # first: a complete store always has one
    with quiet_zarr():
        group = zarr.open_group(str(path), mode="r+")
        group.attrs.update({**attrs, "complete": True, "chunk_manifest": True})
        zarr.consolidate_metadata(str(path))
    final = replaced_path(path)
    if final is None:
        return str(path)
    _swap_in(str(path), final)
    logger.info("replaced %s", final)
    return final
