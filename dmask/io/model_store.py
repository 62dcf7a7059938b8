"""Model stores: the schema, tile writes, progress for resume, reading."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr
import zarr

from dmask.core.planning import Tile, sparse_tile_shape, tile_grid
from dmask.core.windows import window_offsets
from dmask.errors import InputError, StoreError
from dmask.io.locations import is_local, store_path
from dmask.io.stores import (
    FORMAT_VERSION,
    MODEL_FORMAT,
    SHARED_DESCRIPTIONS,
    channel_names,
    create_progress,
    describe,
    discard_store,
    finalize_store,
    open_store,
    prepare_output,
    progress_array,
    provenance,
    quiet_zarr,
    replaced_path,
    text_as_strings,
)

__all__ = [
    "CHANNEL_MODES",
    "DESCRIPTIONS",
    "FIELD_LAYOUT",
    "JOINT_LAYOUT",
    "KINDS",
    "SLOT_LAYOUT",
    "WEIGHT_DTYPES",
    "ModelAttrs",
    "ModelProgress",
    "channel_attrs",
    "check_weights_dtype",
    "stored_weights_dtype",
    "create_model_template",
    "features",
    "model_dataset",
    "open_model_store",
    "read_model_progress",
    "weight_codecs",
    "write_model_store",
    "write_model_tile",
]

#: How the ``k`` axis of the weights is laid out (stored in every model).
FIELD_LAYOUT = (
    "row-major window offsets (offset_y, offset_x); "
    "weights of offsets outside the image are 0"
)

#: How the ``k`` axis is laid out in the joint colour mode.
JOINT_LAYOUT = (
    "offset-major: k = a * channels + input_channel for the row-major window "
    "offset a (offset_y, offset_x) in input_channel; weights of offsets outside "
    "the image are 0"
)

#: How a sparse model's slots are laid out (stored in every sparse model).
SLOT_LAYOUT = (
    "per output value, slots of (source, weight): source is the flat input "
    "position (y * width + x) * channels + channel, -1 for an unused slot; "
    "output = bias + sum of weight * input[source]"
)

#: How output channels read input channels: each its own, or all (k = r * r * C).
CHANNEL_MODES = ("independent", "joint")

#: Model kinds: dense r x r fields (masked ridge regression) and sparse slots.
KINDS = ("field", "sparse")

#: Dtypes a model's weights and bias may be stored in: float64 (the default,
#: exactly the solved values) or float32 (half the size, for batch use).
WEIGHT_DTYPES = ("float64", "float32")

#: CF-style attributes of a model's variables (``units`` "1": dimensionless, the
#: weights and bias act on min-max normalised images, or on the images' own
#: values when ``normalize`` is ``none``).
DESCRIPTIONS: dict[str, dict[str, Any]] = {
    "weight": {
        "long_name": "masked ridge regression weight of each window entry",
        "units": "1",
    },
    "bias": {"long_name": "bias of each output value", "units": "1"},
    "lam_map": {
        "long_name": "ridge penalty chosen for each output value",
        "units": "1",
        "valid_min": 0.0,
    },
    "source": {
        "long_name": "flat input position read by each slot, -1 for an unused slot",
        "units": "1",
        "valid_min": -1,
    },
    **SHARED_DESCRIPTIONS,
    "offset_y": {"long_name": "window offset in y of each weight", "units": "pixel"},
    "offset_x": {"long_name": "window offset in x of each weight", "units": "pixel"},
    "input_channel": {"long_name": "input channel each weight reads"},
}


def stored_weights_dtype(path: str | os.PathLike) -> str:
    """What a model store holds its weights as (``"float64"``, ``"float32"``)."""
    with quiet_zarr():
        return np.dtype(zarr.open_array(str(path), path="weight", mode="r").dtype).name


def check_weights_dtype(dtype: Any) -> str:
    """``"float64"`` or ``"float32"`` (:data:`WEIGHT_DTYPES`), else InputError."""
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in WEIGHT_DTYPES:
        raise InputError(f"weights dtype must be one of {WEIGHT_DTYPES}, got {dtype!r}")
    return name


def weight_codecs(dtype: Any) -> list[Any]:
    """Compression of weights and bias: blosc's lz4 (level 1) after a byte shuffle.

    Chosen by ``pipelines/bench_store.py`` (docs/benchmarks.md): shuffling the
    bytes of float64 weights groups their exponents, which takes a 128 x 128
    RGB model at r = 3 from 91% of its raw size with plain zstd to 83%. lz4
    level 1 stores 1.2 points more than blosc's zstd level 3 (82.8% against
    81.6%) and writes a training's tile about twice as fast (a 64 x 64 RGB
    tile at r = 7, 4.8 MB: 15 against 29 ms), which at 512 x 512 r = 7 was 17%
    of the workers' time. Blosc is a codec of the zarr v3 specification.
    """
    from zarr.codecs import BloscCodec

    return [
        BloscCodec(
            cname="lz4", clevel=1, shuffle="shuffle", typesize=np.dtype(dtype).itemsize
        )
    ]


def _encoding(ds: xr.Dataset, chunks: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """Chunks of every array; the weights' compression for the float ones."""
    encoding: dict[str, Any] = {}
    for name, variable in ds.data_vars.items():
        entry: dict[str, Any] = {}
        if name in chunks:
            entry["chunks"] = chunks[name]
        if variable.dtype.kind == "f":
            entry["compressors"] = weight_codecs(variable.dtype)
        encoding[name] = entry
    return encoding


@dataclass(frozen=True)
class ModelAttrs:
    """A model's settings as stored in its attributes (one schema for all writers).

    Trained models record how they were trained (``sample_block``,
    ``statistics_method``, ``kernels``, and ``lam_grid`` for penalties chosen
    per pixel); imported ones leave those out. ``provenance`` holds what the
    trainer knows of its inputs (``dataset``: the dataset store's ``path`` and
    the inputs' ``fingerprint``); the store adds versions, time and command
    when it is written (:func:`dmask.io.stores.provenance`).
    """

    field: int
    lam: float | str
    normalize: str
    height: int
    width: int
    channels: int
    n_samples: int
    single_target: bool
    training_fingerprint: str
    tile_shape: tuple[int, int]
    sample_block: int | None = None
    statistics_method: str | None = None
    kernels: str | None = None
    lam_grid: tuple[float, ...] | None = None
    channel_mode: str = "independent"
    field_layout: str | None = FIELD_LAYOUT
    kind: str = "field"
    slots: int | None = None
    shared_channels: bool | None = None
    origin: str | None = None
    landmarks: dict[str, Any] | None = None
    provenance: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The attributes to store: JSON types, unset optional ones left out."""
        order = (
            "kind", "field", "slots", "lam", "normalize", "channel_mode",
            "field_layout", "shared_channels", "origin", "height",
            "width", "channels", "n_samples", "single_target",
            "training_fingerprint", "tile_shape", "sample_block",
            "statistics_method", "kernels", "lam_grid", "landmarks", "provenance",
        )  # fmt: skip
        out: dict[str, Any] = {}
        for key in order:
            value = getattr(self, key)
            if value is None:
                continue
            out[key] = list(value) if isinstance(value, tuple) else value
        return out


def _model_coords(
    targets: Sequence[str], field: int, channels: int, joint: bool = False
) -> dict[str, Any]:
    """Coordinates; the joint mode's ``k`` is offset-major with ``input_channel``."""
    offsets = window_offsets(field).astype(np.int32)
    coords = {"target": np.asarray(list(targets), dtype=str)}
    if joint:
        offsets = np.repeat(offsets, channels, axis=0)
        inputs = np.tile(np.arange(channels, dtype=np.int32), field * field)
        coords["input_channel"] = ("k", inputs)
    coords.update(
        offset_y=("k", offsets[:, 0]),
        offset_x=("k", offsets[:, 1]),
        channel=channel_names(channels),
    )
    return coords


def channel_attrs(joint: bool) -> dict[str, str]:
    """``channel_mode`` and ``field_layout`` of a field model (joint or not)."""
    if joint:
        return {"channel_mode": "joint", "field_layout": JOINT_LAYOUT}
    return {"channel_mode": "independent", "field_layout": FIELD_LAYOUT}


def features(field: int, channels: int, channel_mode: str = "independent") -> int:
    """Weights per output value: ``r * r``, or ``r * r * C`` in the joint mode."""
    return field * field * (channels if channel_mode == "joint" else 1)


def model_dataset(
    weight: Any,
    bias: Any,
    targets: Sequence[str],
    field: int,
    attrs: Mapping[str, Any],
    lam_map: Any = None,
) -> xr.Dataset:
    """Assemble the xarray form of a model from (numpy or dask) arrays.

    ``lam_map`` (like ``bias``), the penalty chosen per pixel, is added when
    given. Every variable carries its :data:`DESCRIPTIONS`.
    """
    channels = weight.shape[3]
    joint = attrs.get("channel_mode") == "joint"
    variables = {
        "weight": (("target", "y", "x", "channel", "k"), weight),
        "bias": (("target", "y", "x", "channel"), bias),
    }
    if lam_map is not None:
        variables["lam_map"] = (("target", "y", "x", "channel"), lam_map)
    ds = xr.Dataset(
        variables,
        coords=_model_coords(targets, field, channels, joint),
        attrs={"format": MODEL_FORMAT, "format_version": FORMAT_VERSION, **dict(attrs)},
    )
    describe(ds, DESCRIPTIONS)
    return ds


def sparse_model_dataset(
    source: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    targets: Sequence[str],
    attrs: ModelAttrs,
) -> xr.Dataset:
    """A complete sparse model from its slots ``source`` and ``weight``.

    Both are ``(T, H, W, C, S)``, ``bias`` ``(T, H, W, C)``.

    ``attrs`` need no tile shape: tiles are chosen here
    (:func:`dmask.core.planning.sparse_tile_shape`).
    """
    n_targets, height, width, channels, slots = weight.shape
    per_pixel = n_targets * channels * (slots * 12 + 8)
    tile_shape = sparse_tile_shape(height, width, per_pixel)
    settings = dataclasses.replace(
        attrs, kind="sparse", slots=slots, field_layout=None, tile_shape=tile_shape
    ).to_dict()
    variables = {
        "weight": (("target", "y", "x", "channel", "slot"), weight),
        "source": (("target", "y", "x", "channel", "slot"), source),
        "bias": (("target", "y", "x", "channel"), bias),
    }
    coords = {
        "target": np.asarray(list(targets), dtype=str),
        "channel": channel_names(channels),
    }
    settings = {
        "format": MODEL_FORMAT,
        "format_version": FORMAT_VERSION,
        **settings,
        "slot_layout": SLOT_LAYOUT,
        "complete": True,
    }
    ds = xr.Dataset(variables, coords=coords, attrs=settings)
    describe(ds, DESCRIPTIONS)
    return ds


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
    weights_dtype: str = "float64",
) -> str:
    """Write the metadata of a model store whose tiles workers fill in later.

    With ``lam_map``, the store also has the per-pixel penalty array;
    ``weights_dtype`` (:data:`WEIGHT_DTYPES`) is what the weights and bias are
    stored as (the tiles' float64 solutions are rounded when written). Returns
    the store to write the tiles to (see :func:`prepare_output`).
    """
    import dask.array as da

    dtype = check_weights_dtype(weights_dtype)
    path = prepare_output(path, overwrite)
    n_targets = len(targets)
    height, width = image_shape
    th, tw = tile_shape
    k = features(field, channels, str(attrs.get("channel_mode", "independent")))

    def per_pixel(kind: str = dtype) -> da.Array:
        return da.zeros(
            (n_targets, height, width, channels),
            chunks=(1, th, tw, channels),
            dtype=kind,
        )

    settings = _settings(attrs)
    ds = model_dataset(
        da.zeros(
            (n_targets, height, width, channels, k),
            chunks=(1, th, tw, channels, k),
            dtype=dtype,
        ),
        per_pixel(),
        targets,
        field,
        {**settings, "complete": False, "tile_shape": [th, tw]},
        lam_map=per_pixel("f8") if lam_map else None,
    )
    ds = text_as_strings(ds)
    with quiet_zarr():
        ds.to_zarr(
            str(path), mode="w", compute=False, zarr_format=3, consolidated=True,
            encoding=_encoding(ds, {}),
        )  # fmt: skip
    create_progress(path, tile_grid(image_shape, tile_shape), ("tile_y", "tile_x"))
    return path


def _settings(attrs: Mapping[str, Any], copied_from: str | None = None) -> dict:
    """``attrs`` with the ``provenance`` of a store written now.

    What the trainer recorded of its inputs (``dataset``, or ``statistics`` and
    ``datasets``) is kept; a model copied from a store says which
    (``copied_from``) and keeps when and by what command it was ``trained``.
    """
    out = dict(attrs)
    before = dict(out.get("provenance") or {})
    written = ("created", "versions", "command")
    extra = {key: value for key, value in before.items() if key not in written}
    if copied_from is not None:
        extra["copied_from"] = copied_from
        extra.setdefault("trained", before.get("created"))
        extra.setdefault("trained_by", before.get("command"))
    out["provenance"] = provenance(**extra)
    return out


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
    if is_local(path) and not os.path.exists(path):
        return None
    try:
        with quiet_zarr():
            group = zarr.open_group(str(path), mode="r")
            attrs = dict(group.attrs)
            done = np.asarray(progress_array(group)[...]).astype(bool)
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
        progress_array(group)[tile.index] = 1
    return tile.index


def write_model_store(
    ds: xr.Dataset,
    path: str | os.PathLike,
    overwrite: bool,
    weights_dtype: str = "float64",
) -> None:
    """Write a whole model dataset (numpy or dask backed) to a new store.

    ``weights_dtype`` (:data:`WEIGHT_DTYPES`): what the weights and bias are
    stored as; float32 rounds them, for a store half the size.
    """
    import contextlib

    import dask
    import dask.array as da

    dtype = check_weights_dtype(weights_dtype)
    source = ds.encoding.get("dmask_path")
    target = prepare_output(path, overwrite, inputs=[source])
    in_memory = not any(isinstance(v.data, da.Array) for v in ds.variables.values())
    th, tw = ds.attrs["tile_shape"]
    last = "slot" if "slot" in ds.dims else "k"
    channels, k = ds.sizes["channel"], ds.sizes[last]
    ds = ds.drop_vars("tile_complete", errors="ignore")  # format 1 models
    for name in ("weight", "bias"):
        ds[name] = ds[name].astype(dtype)
    describe(ds, DESCRIPTIONS)
    ds.attrs = {
        **_settings(ds.attrs, copied_from=source),
        "format": MODEL_FORMAT,
        "format_version": FORMAT_VERSION,
        "complete": False,
    }
    ds.attrs.pop("chunk_manifest", None)
    ds = ds.chunk({"target": 1, "y": th, "x": tw, "channel": channels, last: k})
    for name in ds.variables:
        ds[name].encoding = {}
    ds = text_as_strings(ds)
    # arrays in this process are written from it, not shipped to a cluster's workers
    local = (
        dask.config.set(scheduler="threads") if in_memory else contextlib.nullcontext()
    )
    try:
        with quiet_zarr(), local:
            ds.to_zarr(
                target, mode="w", zarr_format=3, consolidated=True,
                encoding=_encoding(ds, {}),
            )  # fmt: skip
        grid = tile_grid((ds.sizes["y"], ds.sizes["x"]), (th, tw))
        create_progress(target, grid, ("tile_y", "tile_x"), done=True)
    except BaseException:
        discard_store(target)  # never a half-written model left behind
        raise
    try:
        finalize_store(target)
    except BaseException:
        # a new store is removed; a staging one that failed to swap in is kept
        # for another try (the old store may already be gone on object stores)
        if replaced_path(target) is None:
            discard_store(target)
        raise


def open_model_store(path: str | os.PathLike) -> xr.Dataset:
    """Open a finished model store lazily and check its layout."""
    ds = open_store(path, "model", MODEL_FORMAT)
    kind = ds.attrs.get("kind", "field")
    if kind not in KINDS:
        raise StoreError(f"model store {path} has kind {kind!r}, not one of {KINDS}")
    for name in ("weight", "bias", *(("source",) if kind == "sparse" else ())):
        if name not in ds:
            raise StoreError(f"model store {path} has no {name} array")
    for name in ("weight", "bias"):
        if ds[name].dtype.name not in WEIGHT_DTYPES:
            raise StoreError(
                f"model store {path} has {name} of dtype {ds[name].dtype}, not one "
                f"of {WEIGHT_DTYPES}"
            )
    ds.encoding["dmask_path"] = store_path(path)
    return ds
