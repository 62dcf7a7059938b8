"""Statistics stores: the schema, tile writes, reading a tile's window, opening.

A statistics store keeps the image-layout sums of :mod:`dmask.core.sufficient`
for a largest field, per *fold* (a group of subjects), chunked by tile like a
model. Its subjects are recorded with their fold and a fingerprint of their
images, so an update can refuse subjects already counted.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr
import zarr

from dmask.core.planning import Tile, tile_grid
from dmask.core.sufficient import IMAGE_PARTS
from dmask.core.windows import displacements, window_offsets
from dmask.errors import StoreError
from dmask.io.locations import store_path
from dmask.io.stores import (
    FORMAT_VERSION,
    SHARED_DESCRIPTIONS,
    STATISTICS_FORMAT,
    channel_names,
    create_progress,
    describe,
    open_store,
    prepare_output,
    progress_array,
    provenance,
    quiet_zarr,
    text_as_strings,
)

__all__ = [
    "DESCRIPTIONS",
    "StatisticsInfo",
    "create_statistics_template",
    "open_statistics_store",
    "read_statistics_window",
    "statistics_info",
    "write_statistics_tile",
]


#: CF-style attributes of a statistics store's variables (sums of products of
#: normalised pixel values: dimensionless).
DESCRIPTIONS: dict[str, dict[str, Any]] = {
    "pair_sums": {
        "long_name": "sum over training pairs of x(q) x(q + d), per displacement d",
        "units": "1",
    },
    "sums": {"long_name": "sum over training pairs of x(q)", "units": "1"},
    "cross_sums": {
        "long_name": "sum over training pairs of x(p + u_k) t(p), per window offset",
        "units": "1",
    },
    "target_sums": {"long_name": "sum over training pairs of t(p)", "units": "1"},
    "target_squares": {
        "long_name": "sum over training pairs of t(p) squared",
        "units": "1",
        "valid_min": 0.0,
    },
    "count": {
        "long_name": "training pairs summed per fold",
        "units": "1",
        "valid_min": 0,
    },
    **SHARED_DESCRIPTIONS,
    "displacement_y": {"long_name": "displacement in y", "units": "pixel"},
    "displacement_x": {"long_name": "displacement in x", "units": "pixel"},
    "offset_y": {"long_name": "window offset in y", "units": "pixel"},
    "offset_x": {"long_name": "window offset in x", "units": "pixel"},
    "subject": {"long_name": "subject counted"},
    "subject_fold": {"long_name": "fold each subject is counted in"},
    "fingerprint": {"long_name": "hash of each subject's images"},
    "subject_dataset": {
        "long_name": "index of each subject's dataset in the datasets attribute, "
        "-1 for pairs given as arrays"
    },
}


@dataclass(frozen=True)
class StatisticsInfo:
    """What a statistics store holds (its attributes and subject table).

    Attributes
    ----------
    path : str
        The store.
    field : int
        Largest field ``r_max``: every odd ``r <= field`` can be solved.
    targets : list of str
        Target expressions.
    source : str
        Source expression.
    normalize : str
        Normalisation the sums were taken in.
    image_shape : tuple of int
        ``(H, W)``.
    channels : int
        Channels.
    tile_shape : tuple of int
        Chunk (and solve) tile shape.
    counts : numpy.ndarray
        ``(folds,)`` training pairs per fold.
    subjects, subject_folds, fingerprints, subject_datasets : numpy.ndarray
        One entry per subject counted: its name, fold, a hash of its images,
        and the index of its dataset in ``datasets`` (-1: given as arrays).
    datasets : list of dict
        The dataset stores summed (``path`` and ``split``), in order.
    joint : bool
        Sums of the joint colour mode.
    attrs : dict
        Every attribute.
    """

    path: str
    field: int
    targets: list[str]
    source: str
    normalize: str
    image_shape: tuple[int, int]
    channels: int
    tile_shape: tuple[int, int]
    counts: np.ndarray
    subjects: np.ndarray
    subject_folds: np.ndarray
    fingerprints: np.ndarray
    subject_datasets: np.ndarray
    datasets: list[dict[str, str]]
    joint: bool
    attrs: dict[str, Any]

    @property
    def folds(self) -> int:
        """Number of folds."""
        return len(self.counts)


def create_statistics_template(
    path: str | os.PathLike,
    targets: Sequence[str],
    image_shape: tuple[int, int],
    channels: int,
    field: int,
    tile_shape: tuple[int, int],
    counts: Sequence[int],
    subjects: Mapping[str, Sequence[Any]],
    attrs: Mapping[str, Any],
    overwrite: bool = False,
    inputs: Sequence[str | os.PathLike | None] = (),
    joint: bool = False,
) -> str:
    """Write the metadata of a statistics store whose tiles tasks fill in later.

    ``subjects`` holds ``subject``, ``subject_fold``, ``fingerprint`` and
    ``subject_dataset`` (index into the ``datasets`` attribute, -1 for pairs
    given as arrays), one entry per subject. ``joint``: the joint colour
    mode's sums, with an ``other_channel`` axis last in ``pair_sums`` and
    ``cross_sums``. Returns
    the store to write to (see :func:`dmask.io.stores.prepare_output`).
    """
    import dask.array as da

    path = prepare_output(path, overwrite, inputs=inputs)
    height, width = image_shape
    th, tw = tile_shape
    n_folds, n_targets = len(counts), len(targets)
    deltas = np.array(displacements(field), dtype=np.int32)
    offsets = window_offsets(field).astype(np.int32)
    pixel = ("y", "x", "channel")

    def zeros(shape: tuple[int, ...], chunks: tuple[int, ...]) -> da.Array:
        return da.zeros(shape, chunks=chunks, dtype="f8")

    image = (height, width, channels)
    chunk = (th, tw, channels)
    pairs, pair_image, pair_chunk = pixel, image, chunk
    if joint:
        pairs = (*pixel, "other_channel")
        pair_image, pair_chunk = (*image, channels), (*chunk, channels)
    variables = {
        "pair_sums": (
            ("fold", "displacement", *pairs),
            zeros((n_folds, len(deltas), *pair_image), (1, len(deltas), *pair_chunk)),
        ),
        "sums": (("fold", *pixel), zeros((n_folds, *image), (1, *chunk))),
        "cross_sums": (
            ("fold", "target", "k", *pairs),
            zeros(
                (n_folds, n_targets, len(offsets), *pair_image),
                (1, 1, len(offsets), *pair_chunk),
            ),
        ),
        "target_sums": (
            ("fold", "target", *pixel),
            zeros((n_folds, n_targets, *image), (1, 1, *chunk)),
        ),
        "target_squares": (
            ("fold", "target", *pixel),
            zeros((n_folds, n_targets, *image), (1, 1, *chunk)),
        ),
        "count": (("fold",), np.asarray(counts, dtype=np.int64)),
    }
    coords = {
        "target": np.asarray(list(targets), dtype=str),
        "channel": channel_names(channels),
        "displacement_y": ("displacement", deltas[:, 0]),
        "displacement_x": ("displacement", deltas[:, 1]),
        "offset_y": ("k", offsets[:, 0]),
        "offset_x": ("k", offsets[:, 1]),
        "subject": np.asarray(list(subjects["subject"]), dtype=str),
        "subject_fold": ("subject", np.asarray(subjects["subject_fold"], np.int64)),
        "fingerprint": ("subject", np.asarray(subjects["fingerprint"], dtype=str)),
        "subject_dataset": (
            "subject",
            np.asarray(subjects["subject_dataset"], dtype=np.int64),
        ),
    }
    ds = xr.Dataset(
        variables,
        coords=coords,
        attrs={
            "format": STATISTICS_FORMAT,
            "format_version": FORMAT_VERSION,
            **dict(attrs),
            "field": int(field),
            "height": int(height),
            "width": int(width),
            "channels": int(channels),
            "tile_shape": [int(th), int(tw)],
            "channel_mode": "joint" if joint else "independent",
            "complete": False,
            "provenance": provenance(),
        },
    )
    describe(ds, DESCRIPTIONS)
    ds = text_as_strings(ds)
    with quiet_zarr():
        ds.to_zarr(str(path), mode="w", compute=False, zarr_format=3, consolidated=True)
    create_progress(
        path,
        (n_folds, *tile_grid(image_shape, tile_shape)),
        ("fold", "tile_y", "tile_x"),
    )
    return path


def write_statistics_tile(
    path: str | os.PathLike, tile: Tile, fold: int, parts: Mapping[str, np.ndarray]
) -> tuple[int, int, int]:
    """Write one fold's image-layout sums of one tile, then mark it done."""
    inner = (slice(tile.y0, tile.y1), slice(tile.x0, tile.x1))
    with quiet_zarr():
        group = zarr.open_group(str(path), mode="r+")
        group["pair_sums"][fold, :, inner[0], inner[1]] = parts["pair_sums"]
        group["sums"][fold, inner[0], inner[1]] = parts["sums"]
        group["cross_sums"][fold, :, :, inner[0], inner[1]] = parts["cross_sums"]
        for name in ("target_sums", "target_squares"):
            group[name][fold, :, inner[0], inner[1]] = parts[name]
        progress_array(group)[(fold, *tile.index)] = 1
    return (fold, *tile.index)


def read_statistics_window(
    path: str | os.PathLike,
    folds: Sequence[int],
    rows: slice,
    cols: slice,
    inner: tuple[slice, slice],
    displacement: np.ndarray | None = None,
    offsets: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Image-layout sums over ``folds`` (added in their order) of one window.

    ``rows, cols`` (clipped to the image) are read of ``pair_sums`` and
    ``sums``; ``inner`` (the tile) of the others. ``displacement`` and
    ``offsets`` pick the entries of a smaller field (all when None).
    """
    every = slice(None)
    picks = {
        "pair_sums": (every if displacement is None else displacement, rows, cols),
        "sums": (rows, cols),
        "cross_sums": (every, every if offsets is None else offsets, *inner),
        "target_sums": (every, *inner),
        "target_squares": (every, *inner),
    }
    out: dict[str, np.ndarray] = {}
    try:
        with quiet_zarr():
            group = zarr.open_group(str(path), mode="r")
            for name in IMAGE_PARTS:
                array = group[name]
                total = None
                pick = (*picks[name], *(every,) * (array.ndim - 1 - len(picks[name])))
                for fold in folds:
                    part = array.get_orthogonal_selection((fold, *pick))
                    total = part if total is None else total + part
                if total is None:
                    raise StoreError(f"no folds to read of statistics store {path}")
                out[name] = total
    except (RuntimeError, ValueError, OSError) as exc:  # a damaged chunk
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StoreError(
            f"cannot read statistics store {path}: {reason} (dmask verify {path} "
            "finds the damaged chunk)"
        ) from None
    return out


def open_statistics_store(path: str | os.PathLike) -> xr.Dataset:
    """Open a finished statistics store lazily and check its layout."""
    ds = open_store(path, "statistics", STATISTICS_FORMAT)
    for name in (*IMAGE_PARTS, "count"):
        if name not in ds:
            raise StoreError(f"statistics store {path} has no {name} array")
    ds.encoding["dmask_path"] = store_path(path)
    return ds


def statistics_info(path: str | os.PathLike) -> StatisticsInfo:
    """The settings and subject table of a finished statistics store."""
    ds = open_statistics_store(path)
    attrs = dict(ds.attrs)
    return StatisticsInfo(
        path=store_path(path),
        field=int(attrs["field"]),
        targets=[str(t) for t in ds["target"].values],
        source=str(attrs.get("source", "")),
        normalize=str(attrs["normalize"]),
        image_shape=(int(attrs["height"]), int(attrs["width"])),
        channels=int(attrs["channels"]),
        tile_shape=(int(attrs["tile_shape"][0]), int(attrs["tile_shape"][1])),
        counts=np.asarray(ds["count"].values, dtype=np.int64),
        subjects=np.asarray(ds["subject"].values).astype(str),
        subject_folds=np.asarray(ds["subject_fold"].values, dtype=np.int64),
        fingerprints=np.asarray(ds["fingerprint"].values).astype(str),
        subject_datasets=np.asarray(ds["subject_dataset"].values, dtype=np.int64),
        datasets=[dict(d) for d in attrs.get("datasets", [])],
        joint=attrs.get("channel_mode") == "joint",
        attrs=attrs,
    )
