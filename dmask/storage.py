"""Zarr/xarray stores of image datasets and models: schemas, writes, validation.

Dataset store (``format = "dmask-dataset"``)
    ``images (sample, y, x, channel)``, uint8 or float32, chunked in sample
    blocks and spatial tiles; coordinates ``subject``, ``expression`` and
    ``split`` along ``sample`` and ``channel`` names.

Model store (``format = "dmask-model"``)
    ``weight (target, y, x, channel, k)`` and ``bias (target, y, x, channel)``,
    float64, one chunk per target and spatial tile; ``tile_complete (tile_y,
    tile_x)`` records tiles durably written; coordinates ``target`` and the
    window layout ``offset_y``/``offset_x`` along ``k``. Attributes hold the
    settings (field, lam, normalize, channel mode, ...). A model whose penalty
    was chosen per pixel (``lam`` = ``"loo"`` or ``"gcv"``) also holds ``lam_map
    (target, y, x, channel)`` float64, chunked like ``bias``.

Both carry ``complete = False`` until the last write finished, so a store left
by a failed run never opens as a finished one.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import os
import shutil
import socket
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import xarray as xr
import zarr

from dmask.errors import StoreError
from dmask.planning import Tile

F = TypeVar("F", bound=Callable[..., Any])

__all__ = [
    "DATASET_FORMAT",
    "FORMAT_VERSION",
    "MODEL_FORMAT",
    "compact_index",
    "create_dataset_template",
    "create_model_template",
    "finalize_store",
    "model_dataset",
    "open_dataset",
    "open_model_store",
    "pair_indices",
    "ModelProgress",
    "locks_output",
    "other_expressions",
    "output_lock",
    "read_model_progress",
    "prepare_output",
    "read_images",
    "same_store",
    "select_pairs",
    "store_path",
    "stored_images",
    "stored_pairs",
    "value_peak",
    "StoredImages",
    "write_dataset_block",
    "write_model_tile",
    "write_model_store",
]

logger = logging.getLogger(__name__)

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


def _is_local(path: str | os.PathLike) -> bool:
    return "://" not in str(path)


def store_path(path: str | os.PathLike) -> str:
    """The path workers use: absolute for local stores, as given for URLs."""
    return os.path.abspath(path) if _is_local(path) else str(path)


def same_store(a: str | os.PathLike, b: str | os.PathLike | None) -> bool:
    """Whether two store paths name the same store."""
    if b is None:
        return False
    if _is_local(a) and _is_local(b):
        return os.path.realpath(a) == os.path.realpath(b)
    return str(a).rstrip("/") == str(b).rstrip("/")


def _lock_path(path: str | os.PathLike) -> str:
    return store_path(path).rstrip("/" + os.sep) + ".lock"


def _read_lock(lock: str) -> dict[str, Any] | None:
    """The holder recorded in a lock file; None when there is no file."""
    try:
        with open(lock) as handle:
            return dict(json.load(handle))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):  # being written right now, or garbled
        return {"pid": -1, "host": "?", "started": "?"}


def _is_self(holder: dict[str, Any]) -> bool:
    return (
        holder.get("host") == socket.gethostname() and holder.get("pid") == os.getpid()
    )


def _alive(holder: dict[str, Any]) -> bool:
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


def _refuse_locked(path: str | os.PathLike, holder: dict[str, Any]) -> None:
    raise StoreError(
        f"{path} is being written by another run (pid {holder.get('pid')} on "
        f"{holder.get('host')} since {holder.get('started')}); wait for it, or "
        f"remove {_lock_path(path)} if that run is gone"
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
    if not _is_local(path):
        yield
        return
    lock = _lock_path(path)
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
            holder = _read_lock(lock)
            if holder is None:
                continue  # released meanwhile: try again
            if _is_self(holder):
                break  # nested in this process: the outer block holds it
            if _alive(holder):
                _refuse_locked(path, holder)
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
    if _is_local(path):
        holder = _read_lock(_lock_path(path))
        if holder is not None and not _is_self(holder) and _alive(holder):
            _refuse_locked(path, holder)
    for source in inputs:
        if same_store(path, source):
            raise StoreError(
                f"output store {path} is also an input of this run; choose another"
            )
    if not _is_local(path):
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


def _open_store(path: str | os.PathLike, kind: str, expected_format: str) -> xr.Dataset:
    if _is_local(path) and not os.path.exists(path):
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


# --------------------------------------------------------------------- datasets


def create_dataset_template(
    path: str | os.PathLike,
    shape: tuple[int, int, int, int],
    chunks: tuple[int, int, int, int],
    coords: Mapping[str, Sequence[str]],
    attrs: Mapping[str, Any],
    dtype: str = "uint8",
    overwrite: bool = False,
) -> None:
    """Write the metadata and coordinates of a dataset store, no pixels yet.

    Parameters
    ----------
    path : str or path
        Store location.
    shape, chunks : tuple of int
        ``(sample, y, x, channel)`` shape and chunk shape of ``images``.
    coords : mapping
        ``subject``, ``expression``, ``split`` labels, one per sample.
    attrs : mapping
        Extra attributes (origin, generator settings).
    dtype : str
        Pixel dtype.
    overwrite : bool
        Replace an existing store.
    """
    import dask.array as da

    prepare_output(path, overwrite)
    n, _, _, channels = shape
    sample_coords = {
        name: ("sample", np.asarray(values, dtype=str))
        for name, values in coords.items()
    }
    for name, (_, values) in sample_coords.items():
        if len(values) != n:
            raise StoreError(
                f"coordinate {name} has {len(values)} labels for {n} samples"
            )
    ds = xr.Dataset(
        {
            "images": (
                ("sample", "y", "x", "channel"),
                da.zeros(shape, chunks=chunks, dtype=dtype),
            )
        },
        coords={**sample_coords, "channel": channel_names(channels)},
        attrs={
            "format": DATASET_FORMAT,
            "format_version": FORMAT_VERSION,
            "complete": False,
            **dict(attrs),
        },
    )
    with quiet_zarr():
        ds.to_zarr(str(path), mode="w", compute=False, zarr_format=3, consolidated=True)


def write_dataset_block(
    path: str | os.PathLike, start: int, images: np.ndarray
) -> tuple[int, int]:
    """Write whole sample-block chunks of ``images`` starting at ``start``.

    The caller owns every chunk the block covers (``start`` and the block's end
    lie on chunk boundaries, or the end is the end of the array).
    """
    with quiet_zarr():
        array = zarr.open_array(str(path), path="images", mode="r+")
        array[start : start + images.shape[0]] = images
    return start, start + images.shape[0]


def open_dataset(path: str | os.PathLike) -> xr.Dataset:
    """Open a dataset store lazily and check its layout.

    Raises
    ------
    StoreError
        Missing, unreadable, incomplete or not a dataset store.
    """
    ds = _open_store(path, "dataset", DATASET_FORMAT)
    if "images" not in ds or ds["images"].dims != ("sample", "y", "x", "channel"):
        raise StoreError(f"dataset store {path} has no images (sample, y, x, channel)")
    for name in ("subject", "expression"):
        if name not in ds.coords:
            raise StoreError(f"dataset store {path} has no {name} coordinate")
    if ds.sizes["sample"] == 0:
        raise StoreError(f"dataset store {path} is empty (no samples)")
    ds.encoding["dmask_path"] = store_path(path)
    return ds


def other_expressions(ds: xr.Dataset, source: str) -> list[str]:
    """Every expression of a dataset but ``source``, in the dataset's order."""
    expressions = np.asarray(ds["expression"].values).astype(str).tolist()
    return [e for e in dict.fromkeys(expressions) if e != source]


def pair_indices(
    ds: xr.Dataset, source: str, targets: Sequence[str], split: str | None = "train"
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Sample indices of source and target faces of the same subjects.

    Parameters
    ----------
    ds : xarray.Dataset
        An opened dataset store.
    source : str
        Source expression (e.g. ``"neutral"``).
    targets : sequence of str
        Target expressions.
    split : str or None
        Keep only samples of this split (``"train"``, ``"test"``); None keeps all.

    Returns
    -------
    sources : numpy.ndarray
        One sample index per subject that has every expression, by subject.
    targets : dict of str to numpy.ndarray
        The same subjects' target samples, same order.
    """
    subjects = np.asarray(ds["subject"].values).astype(str)
    expressions = np.asarray(ds["expression"].values).astype(str)
    keep = np.ones(len(subjects), dtype=bool)
    if split is not None:
        if "split" not in ds.coords:
            raise StoreError("dataset has no split coordinate")
        keep &= np.asarray(ds["split"].values).astype(str) == split
    known = set(expressions.tolist())
    for name in [source, *targets]:
        if name not in known:
            raise StoreError(
                f"expression {name!r} is not in the dataset (has {sorted(known)})"
            )
    index: dict[str, dict[str, int]] = {}
    for i in np.flatnonzero(keep):
        index.setdefault(expressions[i], {}).setdefault(subjects[i], int(i))
    common = set(index.get(source, {}))
    for name in targets:
        common &= set(index.get(name, {}))
    order = sorted(common)
    if not order:
        where = f" in split {split!r}" if split else ""
        raise StoreError(f"no subject has both {source!r} and the targets{where}")
    src = np.array([index[source][s] for s in order], dtype=np.int64)
    tgt = {
        name: np.array([index[name][s] for s in order], dtype=np.int64)
        for name in targets
    }
    return src, tgt


def value_peak(ds: xr.Dataset) -> float:
    """White in a dataset's own values: its ``value_range``, else 255 for 8 bits."""
    value_range = ds.attrs.get("value_range")
    if value_range:
        return float(value_range[1])
    return 255.0 if np.dtype(ds["images"].dtype) == np.uint8 else 1.0


def select_pairs(
    ds: xr.Dataset, source: str, targets: Sequence[str], split: str | None = "train"
) -> tuple[xr.DataArray, dict[str, xr.DataArray]]:
    """Lazy source and target images of the same subjects (see :func:`pair_indices`).

    Returns
    -------
    sources : xarray.DataArray
        ``(sample, y, x, channel)``.
    targets : dict of str to xarray.DataArray
        Same subjects, same order.
    """
    src, tgt = pair_indices(ds, source, targets, split)
    images = ds["images"]
    return images.isel(sample=src), {
        name: images.isel(sample=idx) for name, idx in tgt.items()
    }


@dataclass(frozen=True, eq=False)
class StoredImages:
    """Some samples of a dataset store, read straight from Zarr inside tasks.

    Tasks read only the chunks their region touches, so no process ever holds
    more than its block of samples and its tile.

    Attributes
    ----------
    path : str
        Dataset store.
    index : numpy.ndarray
        Sample indices, in order.
    shape : tuple of int
        ``(len(index), H, W, C)``.
    dtype : numpy.dtype
        Pixel dtype.
    """

    path: str
    index: np.ndarray
    shape: tuple[int, int, int, int]
    dtype: np.dtype
    variable: str = "images"

    @property
    def ndim(self) -> int:
        """Always 4."""
        return 4

    def __repr__(self) -> str:
        return f"StoredImages({self.path!r}, samples={len(self.index)})"


def stored_images(ds: xr.Dataset, index: np.ndarray | None = None) -> StoredImages:
    """Reference samples (default all) of a dataset from :func:`open_dataset`."""
    path = ds.encoding.get("dmask_path")
    if path is None:
        raise StoreError("dataset was not opened from a store by dmask.open_dataset")
    n, height, width, channels = ds["images"].shape
    index = np.arange(n, dtype=np.int64) if index is None else np.asarray(index)
    return StoredImages(
        path, index, (len(index), height, width, channels), ds["images"].dtype
    )


def stored_pairs(
    ds: xr.Dataset, source: str, targets: Sequence[str], split: str | None = "train"
) -> tuple[StoredImages, dict[str, StoredImages]]:
    """Like :func:`select_pairs`, as :class:`StoredImages` references."""
    src, tgt = pair_indices(ds, source, targets, split)
    return stored_images(ds, src), {n: stored_images(ds, i) for n, i in tgt.items()}


def compact_index(index: np.ndarray | slice) -> slice | np.ndarray:
    """A run of consecutive sample indices as a slice (small in task graphs)."""
    if isinstance(index, slice):
        return index
    index = np.asarray(index)
    if len(index) and np.all(np.diff(index) == 1):
        return slice(int(index[0]), int(index[-1]) + 1)
    return index


def read_images(
    path: str,
    index: np.ndarray | slice,
    rows: slice = slice(None),
    cols: slice = slice(None),
    variable: str = "images",
) -> np.ndarray:
    """Read samples ``index`` and a spatial window of a dataset store's images."""
    with quiet_zarr():
        array = zarr.open_array(str(path), path=variable, mode="r")
        return array.get_orthogonal_selection(
            (compact_index(index), rows, cols, slice(None))
        )


# ----------------------------------------------------------------------- models


def _model_coords(targets: Sequence[str], field: int, channels: int) -> dict[str, Any]:
    b = field // 2
    dy, dx = np.meshgrid(np.arange(-b, b + 1), np.arange(-b, b + 1), indexing="ij")
    return {
        "target": np.asarray(list(targets), dtype=str),
        "offset_y": ("k", dy.ravel().astype(np.int32)),
        "offset_x": ("k", dx.ravel().astype(np.int32)),
        "channel": channel_names(channels),
    }


def model_dataset(
    weight: Any,
    bias: Any,
    targets: Sequence[str],
    field: int,
    tile_complete: Any,
    attrs: Mapping[str, Any],
    lam_map: Any = None,
) -> xr.Dataset:
    """Assemble the xarray form of a model from (numpy or dask) arrays.

    ``lam_map`` (like ``bias``), the penalty chosen per pixel, is added when given.
    """
    channels = weight.shape[3]
    variables = {
        "weight": (("target", "y", "x", "channel", "k"), weight),
        "bias": (("target", "y", "x", "channel"), bias),
        "tile_complete": (("tile_y", "tile_x"), tile_complete),
    }
    if lam_map is not None:
        variables["lam_map"] = (("target", "y", "x", "channel"), lam_map)
    return xr.Dataset(
        variables,
        coords=_model_coords(targets, field, channels),
        attrs={"format": MODEL_FORMAT, "format_version": FORMAT_VERSION, **dict(attrs)},
    )


def create_model_template(
    path: str | os.PathLike,
    targets: Sequence[str],
    image_shape: tuple[int, int],
    channels: int,
    field: int,
    tile_shape: tuple[int, int],
    attrs: Mapping[str, Any],
    overwrite: bool = False,
    lam_map: bool = False,
) -> None:
    """Write the metadata of a model store whose tiles workers fill in later.

    With ``lam_map``, the store also has the per-pixel penalty array.
    """
    import dask.array as da

    prepare_output(path, overwrite)
    n_targets = len(targets)
    height, width = image_shape
    th, tw = tile_shape
    k = field * field
    grid = (-(-height // th), -(-width // tw))

    def per_pixel() -> da.Array:
        return da.zeros(
            (n_targets, height, width, channels),
            chunks=(1, th, tw, channels),
            dtype="f8",
        )

    ds = model_dataset(
        da.zeros(
            (n_targets, height, width, channels, k),
            chunks=(1, th, tw, channels, k),
            dtype="f8",
        ),
        per_pixel(),
        targets,
        field,
        da.zeros(grid, chunks=(1, 1), dtype="u1"),
        {**dict(attrs), "complete": False, "tile_shape": [th, tw]},
        lam_map=per_pixel() if lam_map else None,
    )
    with quiet_zarr():
        ds.to_zarr(str(path), mode="w", compute=False, zarr_format=3, consolidated=True)


@dataclass
class ModelProgress:
    """How far a (possibly unfinished) model store got.

    Attributes
    ----------
    attrs : dict
        The store's attributes (training settings).
    targets : list of str
        Target names.
    tile_complete : numpy.ndarray
        ``(tile_y, tile_x)`` bool: tiles durably written.
    complete : bool
        Whether the whole run finished.
    """

    attrs: dict[str, Any]
    targets: list[str]
    tile_complete: np.ndarray
    complete: bool


def read_model_progress(path: str | os.PathLike) -> ModelProgress | None:
    """Read a model store's settings and completed tiles; None if it is absent.

    Raises
    ------
    StoreError
        The path exists but is not a dmask model store.
    """
    if _is_local(path) and not os.path.exists(path):
        return None
    try:
        with quiet_zarr():
            group = zarr.open_group(str(path), mode="r")
            attrs = dict(group.attrs)
            done = np.asarray(group["tile_complete"][...]).astype(bool)
            targets = [str(t) for t in group["target"][...]]
    except FileNotFoundError:
        return None
    except Exception as exc:  # zarr raises many kinds here
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StoreError(f"cannot resume from {path}: {reason}") from exc
    if attrs.get("format") != MODEL_FORMAT:
        raise StoreError(f"cannot resume from {path}: not a dmask model store")
    return ModelProgress(attrs, targets, done, bool(attrs.get("complete", False)))


def write_model_tile(
    path: str | os.PathLike,
    tile: Tile,
    weight: np.ndarray,
    bias: np.ndarray,
    lam_map: np.ndarray | None = None,
) -> tuple[int, int]:
    """Write one tile's weights and bias (chunks it alone owns), then mark it done.

    Parameters
    ----------
    path : str or path
        Model store made by :func:`create_model_template`.
    tile : Tile
        Tile aligned with the store's chunks.
    weight, bias : numpy.ndarray
        ``(T, h, w, C, k)`` and ``(T, h, w, C)``.
    lam_map : numpy.ndarray, optional
        ``(T, h, w, C)`` penalties chosen per pixel (stores that have them).
    """
    with quiet_zarr():
        group = zarr.open_group(str(path), mode="r+")
        group["weight"][:, tile.y0 : tile.y1, tile.x0 : tile.x1] = weight
        group["bias"][:, tile.y0 : tile.y1, tile.x0 : tile.x1] = bias
        if lam_map is not None:
            group["lam_map"][:, tile.y0 : tile.y1, tile.x0 : tile.x1] = lam_map
        group["tile_complete"][tile.index] = 1
    return tile.index


def write_model_store(ds: xr.Dataset, path: str | os.PathLike, overwrite: bool) -> None:
    """Write a whole model dataset (numpy or dask backed) to a new store."""
    prepare_output(path, overwrite, inputs=[ds.encoding.get("dmask_path")])
    th, tw = ds.attrs["tile_shape"]
    channels, k = ds.sizes["channel"], ds.sizes["k"]
    ds = ds.copy()
    ds.attrs["complete"] = False
    ds = ds.chunk({"target": 1, "y": th, "x": tw, "channel": channels, "k": k})
    ds = ds.chunk({"tile_y": 1, "tile_x": 1})
    for name in ds.variables:
        ds[name].encoding = {}
    with quiet_zarr():
        ds.to_zarr(str(path), mode="w", zarr_format=3, consolidated=True)
    finalize_store(path)


def open_model_store(path: str | os.PathLike) -> xr.Dataset:
    """Open a finished model store lazily and check its layout."""
    ds = _open_store(path, "model", MODEL_FORMAT)
    for name in ("weight", "bias"):
        if name not in ds:
            raise StoreError(f"model store {path} has no {name} array")
    ds.encoding["dmask_path"] = store_path(path)
    return ds
