"""Image inputs as dask arrays or stored images, and their per-sample bounds."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr

from dmask.core import (
    minmax,
)
from dmask.core.planning import bounds_groups
from dmask.errors import InputError
from dmask.graph.runtime import compute, current_client
from dmask.io.dataset_store import StoredImages, compact_index, read_images
from dmask.io.stores import quiet_zarr

__all__ = [
    "IMAGE_DIMS",
    "image_data",
    "ordered_images",
    "as_numpy",
    "normalized",
    "as_dask_array",
    "as_image_source",
    "minmax_bounds",
    "read_bounds",
    "lazy_sample_bounds",
    "lazy_sample_digests",
]


def _check_images(shape: tuple[int, ...], dtype: Any, name: str) -> None:
    """Raise InputError unless ``shape`` and ``dtype`` are those of images."""
    if len(shape) != 4:
        raise InputError(
            f"{name} must be 4-D (sample, y, x, channel), got shape {shape}"
        )
    if any(size == 0 for size in shape):
        raise InputError(f"{name} is empty: shape {shape}")
    complex_ = np.issubdtype(dtype, np.complexfloating)
    real = np.issubdtype(dtype, np.number) and not complex_
    if not real:
        raise InputError(f"{name} must hold real numbers, got dtype {dtype}")


#: The dimension names of images, in dmask's order.
IMAGE_DIMS = ("sample", "y", "x", "channel")

#: More channels than this are probably not the last axis of images.
MAX_CHANNELS = 4


def ordered_images(images: xr.DataArray, name: str) -> xr.DataArray:
    """A DataArray of images in ``(sample, y, x, channel)`` order, by dimension name.

    ``channel`` is added when it has none.

    Raises
    ------
    InputError
        Dimensions other than images' (named in the message), or some missing.
    """
    dims = tuple(str(d) for d in images.dims)
    unknown = [d for d in dims if d not in IMAGE_DIMS]
    missing = [d for d in IMAGE_DIMS[:3] if d not in dims]
    if unknown or missing:
        raise InputError(
            f"{name} has dimensions {dims}; images have "
            f"{IMAGE_DIMS} (channel optional)"
            + (f": unknown {unknown}" if unknown else "")
            + (f": missing {missing}" if missing else "")
        )
    if "channel" not in dims:
        images = images.expand_dims("channel", axis=-1)
    return images.transpose(*IMAGE_DIMS)


def image_data(images: Any, name: str) -> Any:
    """The array of images in ``(sample, y, x, channel)`` order.

    A DataArray is matched by its dimension names: transposed to dmask's
    order, ``channel`` added when it has none; other names are refused. Any
    array with more than :data:`MAX_CHANNELS` channels is warned about (a
    channel-first ``(sample, channel, y, x)`` array looks like that).

    Raises
    ------
    InputError
        A DataArray whose dimensions are not images' (named in the message).
    """
    if isinstance(images, xr.DataArray):
        images = ordered_images(images, name).data
    shape = getattr(images, "shape", ())
    if len(shape) == 4 and shape[3] > MAX_CHANNELS:
        warnings.warn(
            f"{name} has {shape[3]} channels (shape {tuple(shape)}): images are "
            "(sample, y, x, channel); is it channel-first? "
            "(numpy: array.transpose(0, 2, 3, 1))",
            UserWarning,
            stacklevel=4,
        )
    return images


def as_dask_array(array: Any, name: str) -> da.Array:
    """A 4-D ``(sample, y, x, channel)`` dask array from numpy, dask or xarray.

    Raises
    ------
    InputError
        Not 4-D, empty, or not real numbers.
    """
    return _dask_images(image_data(array, name), name)


def _dask_images(array: Any, name: str) -> da.Array:
    if not isinstance(array, da.Array):
        array = np.asarray(array)
        _check_images(array.shape, array.dtype, name)
        chunk = max(1, int(64 * 2**20 // max(1, array[0].nbytes)))
        # name=False: no hashing of the whole array (seconds for large ones).
        array = da.from_array(array, chunks=(chunk, -1, -1, -1), name=False)
    _check_images(array.shape, array.dtype, name)
    return array


#: In-memory arrays larger than this are sent to a cluster once, not in graphs.
SCATTER_BYTES = 2**20


def scattered_chunk(value: Any) -> Any:
    """Task: a chunk of an in-memory array, scattered to the workers once."""
    return value


def held_array(array: np.ndarray, chunks: tuple[int, ...]) -> da.Array:
    """A dask array of an array held in this process, in ``chunks``.

    On a distributed cluster a large array is scattered to the workers once,
    chunk by chunk (each task then fetches only its own chunks), instead of
    travelling inside every graph that uses it (the scheduler warns of graphs
    of tens of MiB). Scattered chunks live as long as the dask array; a worker
    lost meanwhile loses them (the computation then fails, naming them).
    """
    client = current_client()
    if client is None or array.nbytes < SCATTER_BYTES:
        return da.from_array(array, chunks=chunks, name=False)
    chunks = da.core.normalize_chunks(chunks, array.shape, dtype=array.dtype)
    starts = [np.cumsum((0, *c)) for c in chunks]
    grid = list(np.ndindex(*(len(c) for c in chunks)))
    pieces = [
        array[tuple(slice(s[i], s[i + 1]) for s, i in zip(starts, at, strict=True))]
        for at in grid
    ]
    futures = client.scatter(pieces, hash=False)
    # a graph that holds the futures themselves keeps them alive with the array
    blocks = np.empty([len(c) for c in chunks], dtype=object)
    for at, piece, future in zip(grid, pieces, futures, strict=True):
        blocks[at] = da.from_delayed(
            dask.delayed(scattered_chunk)(future), shape=piece.shape, dtype=array.dtype
        )
    return da.block(blocks.tolist())


def as_image_source(
    images: Any, name: str, keep_numpy: bool = False
) -> da.Array | StoredImages | np.ndarray:
    """Images to read inside tasks.

    A stored reference stays as it is. With ``keep_numpy``, in-memory numpy
    images stay numpy when no distributed client is active (for graphs computed
    at once on the threaded scheduler: their tasks take views, with no graph of
    array chunks to build). Anything else becomes a dask array.
    """
    if isinstance(images, StoredImages):
        if any(size == 0 for size in images.shape):
            raise InputError(f"{name} is empty: shape {images.shape}")
        return images
    data = image_data(images, name)
    if keep_numpy and isinstance(data, np.ndarray) and current_client() is None:
        _check_images(data.shape, data.dtype, name)
        return data
    return _dask_images(data, name)


def minmax_bounds(array: da.Array) -> tuple[da.Array, da.Array]:
    """Lazy per-sample minimum and maximum over all pixels and channels."""
    return array.min(axis=(1, 2, 3)), array.max(axis=(1, 2, 3))


def read_bounds(path: str, index: np.ndarray | slice) -> tuple[np.ndarray, np.ndarray]:
    """Task: per-sample minimum and maximum of stored images."""
    return minmax.sample_bounds(read_images(path, index))


def _concat_bounds(
    parts: Sequence[tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
    )


def _sample_chunk(images: StoredImages) -> int:
    """Samples per chunk of the store's images (1 when it cannot be opened here:
    the tasks that read it then say what is wrong)."""
    try:
        with quiet_zarr():
            array = zarr.open_array(str(images.path), path=images.variable, mode="r")
        return max(1, int(array.chunks[0]))
    except Exception:  # any failure: the reading tasks report it
        return 1


def _sample_groups(images: StoredImages) -> list[np.ndarray | slice]:
    """The sample indices of each bounds (or digests) task: whole chunks of the
    store's sample axis, about 64 MiB of images each (at least one chunk), as
    :func:`dmask.core.planning.bounds_groups` plans them."""
    per_sample = int(np.prod(images.shape[1:])) * np.dtype(images.dtype).itemsize
    groups = bounds_groups(images.index, _sample_chunk(images), per_sample)
    return [compact_index(images.index[s0:s1]) for s0, s1 in groups]


def lazy_sample_bounds(images: da.Array | StoredImages) -> Any:
    """Lazy ``(low, high)`` per-sample bounds of a dask array or stored images.

    Stored images are read by tasks of whole chunks of the store's sample axis
    (a task of part of a chunk would decode all of it).
    """
    if not isinstance(images, StoredImages):
        return minmax_bounds(images)
    task = dask.delayed(read_bounds, pure=True)
    parts = [task(images.path, index) for index in _sample_groups(images)]
    return dask.delayed(_concat_bounds, pure=True)(parts)


def normalized(images: da.Array) -> da.Array:
    """Lazy per-image min-max normalisation of a dask array (core's formula)."""
    low, high = minmax_bounds(images)
    scale = da.map_blocks(minmax.minmax_scale, low, high, dtype=np.float64)
    return da.blockwise(
        minmax.normalize_block,
        "syxc",
        images,
        "syxc",
        low,
        "s",
        scale,
        "s",
        dtype=np.float64,
    )


def as_numpy(*arrays: Any) -> list[np.ndarray]:
    """Numpy arrays of numpy arrays, dask arrays or stored images.

    Stored images are read; the dask arrays are computed together, in one
    computation on the current client or the threaded scheduler.
    """
    lazy = [a for a in arrays if isinstance(a, da.Array)]
    done = iter(compute(*lazy, phase="reading images") if lazy else ())
    out = []
    for array in arrays:
        if isinstance(array, da.Array):
            out.append(np.asarray(next(done)))
        elif isinstance(array, StoredImages):
            out.append(read_images(array.path, array.index))
        else:
            out.append(np.asarray(array))
    return out


def _digests(images: np.ndarray) -> list[str]:
    """A content digest of every sample: its dtype, shape and bytes."""
    out = []
    for image in np.asarray(images):
        digest = hashlib.sha256(repr((image.dtype.str, image.shape)).encode())
        digest.update(np.ascontiguousarray(image).tobytes())
        out.append(digest.hexdigest()[:16])
    return out


def read_digests(path: str, index: np.ndarray | slice) -> list[str]:
    """Task: content digests of stored samples."""
    return _digests(read_images(path, index))


def _concat_digests(parts: Sequence[list[str]]) -> list[str]:
    return [value for part in parts for value in part]


def lazy_sample_digests(images: da.Array | StoredImages | np.ndarray) -> Any:
    """Lazy per-sample content digests (hex strings) of images."""
    if isinstance(images, np.ndarray):
        return dask.delayed(_digests, pure=True)(images)
    if isinstance(images, StoredImages):
        task = dask.delayed(read_digests, pure=True)
        parts = [task(images.path, index) for index in _sample_groups(images)]
    else:
        whole = images.rechunk({1: -1, 2: -1, 3: -1})
        parts = [
            dask.delayed(_digests, pure=True)(b) for b in whole.to_delayed().ravel()
        ]
    return dask.delayed(_concat_digests, pure=True)(parts)
