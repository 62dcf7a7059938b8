"""Dataset stores: the schema, block writes, reading and selecting pairs."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr
import zarr

from dmask.errors import StoreError
from dmask.io.locations import store_path
from dmask.io.stores import (
    DATASET_FORMAT,
    FORMAT_VERSION,
    SHARED_DESCRIPTIONS,
    channel_names,
    describe,
    open_store,
    prepare_output,
    provenance,
    quiet_zarr,
    text_as_strings,
)

__all__ = [
    "DESCRIPTIONS",
    "StoredImages",
    "image_attrs",
    "compact_index",
    "create_dataset_template",
    "open_dataset",
    "opened",
    "other_expressions",
    "pair_indices",
    "read_images",
    "select_pairs",
    "stored_images",
    "stored_pairs",
    "value_peak",
    "write_dataset_block",
]


#: CF-style attributes of a dataset store's coordinates (``images``: see
#: :func:`image_attrs`).
DESCRIPTIONS: dict[str, dict[str, Any]] = {
    "subject": {"long_name": "subject (identity) of each face"},
    "expression": {"long_name": "facial expression of each face"},
    "split": {"long_name": "train or test split of each face"},
    "channel": SHARED_DESCRIPTIONS["channel"],
    "person": {"long_name": "person of each face (the split unit)"},
    "file": {"long_name": "image file, relative to the input folder"},
    "taken_by": {"long_name": "how the face was found in its photograph"},
}


def image_attrs(dtype: Any, value_range: Sequence[float] | None) -> dict[str, Any]:
    """CF-style attributes of ``images``: pixel values, dimensionless.

    Integer images have the valid range ``[0, white]`` (``value_range``'s
    upper end, else the dtype's largest value); float images (predictions,
    which a linear model may take past white) have none.
    """
    attrs: dict[str, Any] = {"long_name": "face image pixel values", "units": "1"}
    kind = np.dtype(dtype)
    if kind.kind in "ui":
        peak = value_range[1] if value_range else np.iinfo(kind).max
        attrs.update(valid_min=0, valid_max=int(peak))
    elif value_range:
        attrs["comment"] = f"white is {float(value_range[1]):g}; values are unclipped"
    return attrs


def create_dataset_template(
    path: str | os.PathLike,
    shape: tuple[int, int, int, int],
    chunks: tuple[int, int, int, int],
    coords: Mapping[str, Sequence[str]],
    attrs: Mapping[str, Any],
    dtype: str = "uint8",
    overwrite: bool = False,
) -> str:
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

    path = prepare_output(path, overwrite)
    n, _, _, channels = shape
    sample_coords = {
        name: ("sample", np.asarray(values, dtype=np.dtypes.StringDType()))
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
            "provenance": provenance(),
        },
    )
    describe(ds, DESCRIPTIONS)
    ds["images"].attrs.update(image_attrs(dtype, attrs.get("value_range")))
    ds = text_as_strings(ds)
    codecs = image_codecs(dtype)
    encoding = {"images": {"compressors": codecs}} if codecs else {}
    with quiet_zarr():
        ds.to_zarr(
            str(path),
            mode="w",
            compute=False,
            zarr_format=3,
            consolidated=True,
            encoding=encoding,
        )
    return path


def image_codecs(dtype: Any) -> list[Any] | None:
    """Compression of stored images: zarr's default (zstd) for integer pixels;
    blosc's lz4 after a byte shuffle for float ones (predictions).

    Measured on 60 smooth 512 x 512 RGB float32 images (2-core machine): a
    write in 0.28 s against 0.70 s with the default, a read as fast, and 78%
    of the raw size against 87%.
    """
    if np.dtype(dtype).kind != "f":
        return None
    from zarr.codecs import BloscCodec

    size = np.dtype(dtype).itemsize
    return [BloscCodec(cname="lz4", clevel=1, shuffle="shuffle", typesize=size)]


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
    ds = open_store(path, "dataset", DATASET_FORMAT)
    if "images" not in ds or ds["images"].dims != ("sample", "y", "x", "channel"):
        raise StoreError(f"dataset store {path} has no images (sample, y, x, channel)")
    for name in ("subject", "expression"):
        if name not in ds.coords:
            raise StoreError(f"dataset store {path} has no {name} coordinate")
    if ds.sizes["sample"] == 0:
        raise StoreError(f"dataset store {path} is empty (no samples)")
    ds.encoding["dmask_path"] = store_path(path)
    return ds


def opened(dataset: xr.Dataset | str | os.PathLike) -> xr.Dataset:
    """A dataset store opened by :func:`open_dataset` (a path is opened)."""
    if isinstance(dataset, xr.Dataset):
        if "dmask_path" not in dataset.encoding:
            raise StoreError(
                "dataset must be opened with dmask.io.dataset_store.open_dataset"
            )
        return dataset
    return open_dataset(dataset)


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
    ds: xr.Dataset,
    source: str,
    targets: str | Sequence[str],
    split: str | None = "train",
) -> tuple[xr.DataArray, dict[str, xr.DataArray]]:
    """Lazy source and target images of the same subjects (see :func:`pair_indices`).

    Each subject's ``source`` face is paired with its ``targets`` faces (one
    name or several) by the ``subject`` coordinate, among the samples of
    ``split`` (``"all"`` or None: every split).

    Returns
    -------
    sources : xarray.DataArray
        ``(sample, y, x, channel)``.
    targets : dict of str to xarray.DataArray
        Same subjects, same order.
    """
    if isinstance(targets, str):  # one name, not its letters
        targets = [targets]
    if split == "all":  # the command line's word for every split
        split = None
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
    try:
        with quiet_zarr():
            array = zarr.open_array(str(path), path=variable, mode="r")
            return array.get_orthogonal_selection(
                (compact_index(index), rows, cols, slice(None))
            )
    except (RuntimeError, ValueError, OSError) as exc:  # a damaged chunk's codec error
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StoreError(
            f"cannot read {variable} of {path}: {reason} (dmask verify {path} "
            "finds the damaged chunk)"
        ) from None
