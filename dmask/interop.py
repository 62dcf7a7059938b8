"""Models to and from the reference implementation's weight files.

The reference MR code and its sibling sparse methods (LSRF, OMP) store a model
as scipy.sparse CSR ``d x (d + 1)`` matrices, ``d = H * W``, bias last,
``y = W [x; 1]``: one per channel, in OpenCV's channel order (file 1 is blue,
2 green, 3 red), or one matrix applied to each channel in turn. dmask's own
exports add a ``manifest.json`` that records shapes, targets, settings and the
channel order of the files.

A model is imported as an ``r x r`` field when its rows fill the window its
weights span, else as a sparse model (a few slots per output value,
:mod:`dmask.core.sparse`); either is exported back exactly.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from dmask.checks import NORMALIZATIONS, SINGLE_TARGET
from dmask.core import sparse
from dmask.errors import InputError, check_choice
from dmask.graph import runtime
from dmask.io import atomic, model_store
from dmask.io.locations import is_local
from dmask.io.reference import (
    CHANNEL_ORDERS,
    EXPORT_FORMAT,
    EXPORT_VERSION,
    MANIFEST,
    NAMINGS,
    UNKNOWN_LAM,
    check_field,
    check_image_shape,
    check_lam,
    field_reach,
    json_lam,
    matrix_shape,
    max_row_entries,
    peek_entries,
    peek_shape,
    read_manifest,
    read_matrix,
    reference_file_name,
    safe_name,
    unpack,
    window_csr,
)
from dmask.model import Model

logger = logging.getLogger(__name__)

__all__ = [
    "IMPORT_KINDS",
    "IMPORT_TILE",
    "export_reference",
    "import_reference",
]


IMPORT_TILE = 64
"""Tile side of an imported field model."""

IMPORT_KINDS = ("auto", "field", "sparse")


def _file_order(channel_order: str, channels: int) -> list[int]:
    """Image channel of each file, in file order."""
    order = list(range(channels))
    return order[::-1] if channel_order == "bgr" else order


# ----------------------------------------------------------------------------
# export


def export_reference(
    model: Model,
    out_dir: str | os.PathLike,
    target: str | Sequence[str] | None = None,
    overwrite: bool = False,
    *,
    channel_order: str | None = None,
    naming: str = "dmask",
) -> list[Any]:
    """Write a model as the reference implementation's CSR files.

    Parameters
    ----------
    model : Model
        The model (a field or a sparse model, in memory or opened from a store).
    out_dir : str or path
        New directory (or fsspec URL): per target a folder of ``.npz`` files, and
        ``manifest.json``.
    target : str or sequence of str, optional
        Export this target (or these) only; all targets when omitted.
    overwrite : bool
        Replace an existing ``out_dir``.
    channel_order : {"rgb", "bgr"}, optional
        Order of the per-channel files: ``"bgr"`` is the reference's (OpenCV
        reads images as blue, green, red, so its file 1 is blue). Default
        ``"bgr"`` with ``naming="reference"``, else ``"rgb"``.
    naming : {"dmask", "reference"}
        ``channel_<i>.npz`` (``i`` from 0 in file order), or the reference's
        ``mr_weights_<YYYYMMDD>_<i>.npz`` (``i`` from 1). A model whose channels
        share one matrix is written as one file (``weights.npz`` or
        ``mr_weights_<YYYYMMDD>.npz``).

    Returns
    -------
    list of pathlib.Path (or of str, for a URL)
        Absolute paths of the ``.npz`` files (by target, then file order), then
        of ``manifest.json``. A URL (``s3://...``) is written in a local
        temporary folder and uploaded, the manifest last.

    Raises
    ------
    InputError
        ``out_dir`` exists and ``overwrite`` is false, ``target`` is unknown, or
        the model reads across channels (a joint colour model, or such a sparse
        model: the format is per channel).
    """
    check_choice("naming", naming, NAMINGS)
    if not is_local(out_dir):
        return _export_to_url(
            model, str(out_dir), target, overwrite, channel_order, naming
        )
    if model.dataset.attrs.get("channel_mode") == "joint" and model.channels > 1:
        raise InputError(
            "a joint colour model reads every input channel for each output channel; "
            "the reference format has one matrix per channel, so it cannot hold it"
        )
    if channel_order is None:
        channel_order = "bgr" if naming == "reference" else "rgb"
    check_choice("channel_order", channel_order, CHANNEL_ORDERS)
    out_dir = Path(os.path.abspath(out_dir))
    names = model.targets
    if target is not None:
        wanted = [target] if isinstance(target, str) else list(dict.fromkeys(target))
        for one in wanted:
            if one not in names:
                raise InputError(f"target {one!r} is not in the model (has {names})")
        names = wanted
    for name in names:
        safe_name(name)
    if os.path.lexists(out_dir) and not overwrite:
        raise InputError(f"output directory {out_dir} already exists (pass overwrite)")
    height, width = model.image_shape
    channels = model.channels
    shared = bool(model.dataset.attrs.get("shared_channels", False))
    order = _file_order(channel_order, channels)
    date = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d")
    parent = out_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    partial = parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:12]}"
    partial.mkdir()
    try:
        per_target = {name: _channel_matrices(model, name) for name in names}
        shared = shared and all(
            _same(m[0], other) for m in per_target.values() for other in m[1:]
        )
        files: dict[str, list[str]] = {}
        for name in names:
            (partial / name).mkdir()
            matrices = per_target[name]
            chosen = [matrices[0]] if shared else [matrices[c] for c in order]
            files[name] = []
            for i, matrix in enumerate(chosen):
                number = None if shared else i + (naming == "reference")
                relative = f"{name}/{reference_file_name(naming, date, number)}"
                sp.save_npz(partial / relative, matrix, compressed=False)
                files[name].append(relative)
            logger.info("exported target %s (%d file(s))", name, len(chosen))
        manifest = {
            "format": EXPORT_FORMAT,
            "format_version": EXPORT_VERSION,
            "kind": model.kind,
            "height": height,
            "width": width,
            "channels": channels,
            "channel_order": channel_order,
            "shared_channels": shared,
            "targets": names,
            "field": model.field,
            "lam": json_lam(model.lam),
            "normalize": model.normalize,
            "single_target": bool(model.dataset.attrs.get("single_target", False))
            and len(names) == 1,
            "layout": "per channel a scipy.sparse CSR d x (d+1), d = height*width, "
            "rows output pixels and columns input pixels in row-major order, "
            "last column the bias; y = W [x; 1]; files in channel_order "
            "(bgr: blue first, as OpenCV reads images), or one file applied to "
            "every channel when shared_channels",
            "files": files,
        }
        with open(partial / MANIFEST, "w", encoding="utf-8") as handle:
            json.dump(manifest, handle, indent=2)
        atomic.replace_directory(partial, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    logger.info("reference weights written to %s", out_dir)
    written = [out_dir / rel for name in names for rel in files[name]]
    return [*written, out_dir / MANIFEST]


def _export_to_url(
    model: Model,
    url: str,
    target: str | Sequence[str] | None,
    overwrite: bool,
    channel_order: str | None,
    naming: str,
) -> list[str]:
    """:func:`export_reference` to object storage: written in a local temporary
    folder, uploaded beside ``url`` and then put in place, manifest last."""
    import tempfile

    import fsspec

    fs, location = fsspec.core.url_to_fs(url)
    if fs.exists(location) and not overwrite:
        raise InputError(f"output directory {url} already exists (pass overwrite)")
    head, _, name = url.rstrip("/").rpartition("/")
    staged = f"{head}/.{name}.partial-{uuid.uuid4().hex[:12]}"
    with tempfile.TemporaryDirectory(prefix="dmask-export-") as folder:
        local = Path(folder) / name
        written = export_reference(
            model, local, target, channel_order=channel_order, naming=naming
        )
        _, staged_location = fsspec.core.url_to_fs(staged)
        try:
            for path in written:
                relative = path.relative_to(local).as_posix()
                fs.put_file(str(path), f"{staged_location}/{relative}")
            atomic.replace_remote(staged, url, last=(MANIFEST,))
        except BaseException:
            with contextlib.suppress(OSError):
                fs.rm(staged_location, recursive=True)
            raise
    logger.info("reference weights uploaded to %s", url)
    return [f"{url.rstrip('/')}/{p.relative_to(local).as_posix()}" for p in written]


def _same(a: Any, b: Any) -> bool:
    return a.shape == b.shape and (a != b).nnz == 0


def _channel_matrices(model: Model, name: str) -> list[Any]:
    """One CSR ``d x (d + 1)`` per image channel of one target."""
    channels = model.channels
    bias = np.asarray(model.bias(name).values, dtype=np.float64)
    weight = np.asarray(model.weights(name).values, dtype=np.float64)
    if model.kind == "field":
        offsets = np.stack(
            [
                np.asarray(model.dataset["offset_y"].values, dtype=np.int64),
                np.asarray(model.dataset["offset_x"].values, dtype=np.int64),
            ],
            axis=1,
        )
        return [
            window_csr(weight[:, :, c], bias[:, :, c], offsets) for c in range(channels)
        ]
    source = np.asarray(model.slot_sources(name).values, dtype=np.int64)
    matrices = []
    for c in range(channels):
        index = source[:, :, c].reshape(-1, source.shape[-1])
        used = index >= 0
        wrong = used & (index % channels != c)
        if wrong.any():
            row, slot = np.argwhere(wrong)[0]
            pixel = divmod(int(row), model.image_shape[1])
            raise InputError(
                f"target {name!r}: output pixel {pixel} channel {c} reads input "
                f"channel {index[row, slot] % channels}; "
                "the reference format has one matrix per channel"
            )
        pixels = np.where(used, index // channels, sparse.UNUSED)
        matrices.append(
            sparse.slots_to_csr(
                pixels, weight[:, :, c].reshape(index.shape), bias[:, :, c].reshape(-1)
            )
        )
    return matrices


# ----------------------------------------------------------------------------
# import


def import_reference(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    image_shape: tuple[int, int] | None = None,
    field: int | None = None,
    targets: list[str] | None = None,
    lam: float | None = None,
    normalize: str | None = None,
    *,
    kind: str = "auto",
    channel_order: str | None = None,
    channels: int | None = None,
) -> Model:
    """Read the reference implementation's CSR files as a model.

    Parameters
    ----------
    source : str, path or sequence of them
        A directory written by :func:`export_reference` (its ``manifest.json``
        gives shapes, targets, settings and channel order), or the ``.npz``
        files of one target: one per channel, or one for every channel.
    image_shape : tuple of int, optional
        ``(H, W)``; from the manifest, else square images are assumed.
    field : int, optional
        Odd receptive field size ``r`` of a field import: every non-zero weight
        must lie in the ``r x r`` window around its output pixel. From the
        manifest, else the smallest odd size covering every non-zero weight.
    targets : list of str, optional
        For a directory, the targets to read (default all); for files, the
        name of their single target (default ``"target"``).
    lam : float, optional
        Ridge penalty to record; from the manifest, else ``-1.0`` (unknown).
    normalize : {"minmax", "none"}, optional
        Input normalisation; from the manifest, else ``"minmax"``.
    kind : {"auto", "field", "sparse"}
        ``"auto"``: the manifest's kind; else a field when the fullest row
        fills at least a quarter of the ``r x r`` window the weights span (as
        MR's do), a sparse model otherwise (OMP, LSRF, lasso).
    channel_order : {"rgb", "bgr"}, optional
        Image channel of each file in the given order: ``"bgr"`` (the
        reference's OpenCV order: file 1 blue, 2 green, 3 red) is the default
        for files; a directory's manifest says its own.
    channels : int, optional
        Channels of the images the model applies to. With one file: 3 by
        default (one matrix applied to each of R, G and B, the sparse methods'
        convention); 1 for greyscale. With several files, their count.

    Returns
    -------
    Model
        An in-memory model; :meth:`Model.save` writes it to a store.

    Raises
    ------
    InputError
        Unreadable files, wrong or inconsistent shapes, a non-zero weight
        outside a forced field (naming the first output pixel and channel), or
        more memory needed than the machine has free (with the figure).
    """
    check_choice("kind", kind, IMPORT_KINDS)
    if channel_order is not None:
        check_choice("channel_order", channel_order, CHANNEL_ORDERS)
    plan = _read_plan(source, image_shape, targets, channel_order, channels)
    if field is None and plan.manifest.get("field") is not None and plan.from_dmask:
        if kind != "sparse" and plan.manifest.get("kind", "field") == "field":
            field = check_field(plan.manifest["field"], f"field in {MANIFEST}")
    elif field is not None:
        field = check_field(field, "field")
    if lam is not None:
        lam = check_lam(lam, "lam", allow_unknown=False)
    elif plan.manifest.get("lam") is not None:
        lam = check_lam(plan.manifest["lam"], f"lam in {MANIFEST}", allow_unknown=True)
    else:
        lam = UNKNOWN_LAM
    if normalize is None:
        normalize = plan.manifest.get("normalize", "minmax")
    check_choice("normalize", normalize, NORMALIZATIONS)

    shapes = [(p, peek_shape(p)) for name in plan.names for p in plan.paths[name]]
    height, width = matrix_shape(shapes, plan.image_shape)
    shape = shapes[0][1]
    entries = sum(peek_entries(p) for p, _ in shapes)
    _check_memory(
        40 * entries,
        f"{len(shapes)} weight file(s) of {entries} entries",
        "free memory, or import fewer targets at a time",
    )
    matrices = {
        name: [read_matrix(p, shape) for p in plan.paths[name]] for name in plan.names
    }
    for note in plan.notes:
        logger.warning("%s", note)
    every = [m for name in plan.names for m in matrices[name]]
    reach = max(field_reach(m, width) for m in every)
    span = 2 * reach + 1
    widest = max(max_row_entries(m) for m in every)
    if kind == "auto":
        manifest_kind = plan.manifest.get("kind") if plan.from_dmask else None
        if field is not None:
            kind = "field"
        elif manifest_kind in model_store.KINDS:
            kind = manifest_kind
        else:
            fits = 4 * widest >= span * span  # the window at least a quarter used
            kind = "field" if fits else "sparse"
        logger.info(
            "weights span %dx%d pixels, at most %d per output: importing as %s",
            span, span, widest, "a field" if kind == "field" else "a sparse model",
        )  # fmt: skip
    single = plan.single
    common = {
        "lam": float(lam),
        "normalize": normalize,
        "height": height,
        "width": width,
        "channels": plan.channels,
        "n_samples": 0,
        "single_target": single,
        "training_fingerprint": "reference-import",
        "shared_channels": plan.shared or None,
        "origin": "reference-import",
    }
    if kind == "sparse":
        model = _import_sparse(plan, matrices, height, width, span, widest, common)
    else:
        if field is None:
            field = span
            if field > 2 * max(height, width) - 1:
                raise InputError(
                    f"reference weights need a {field}x{field} field, larger than "
                    f"{height}x{width} images allow"
                )
            logger.info("inferred receptive field %d from the weights", field)
        model = _import_field(plan, matrices, height, width, field, common)
    logger.info("imported %s", model)
    return model


class _Plan:
    """What an import reads: targets, their files, and how files map to channels."""

    def __init__(self) -> None:
        self.manifest: dict[str, Any] = {}
        self.from_dmask = False
        self.names: list[str] = []
        self.paths: dict[str, list[Path]] = {}
        self.single = False
        self.image_shape: tuple[int, int] | None = None
        self.channels = 1
        self.shared = False
        self.order: list[int] = [0]
        self.notes: list[str] = []  # conventions assumed, said once the files read


def _read_plan(
    source: Any,
    image_shape: Any,
    targets: list[str] | None,
    channel_order: str | None,
    channels: int | None,
) -> _Plan:
    plan = _Plan()
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        directory = Path(source)
        manifest = read_manifest(directory)
        plan.manifest, plan.from_dmask = manifest, True
        names = list(manifest["targets"])
        if targets is not None:
            for name in targets:
                if name not in names:
                    raise InputError(
                        f"target {name!r} is not in {directory / MANIFEST} "
                        f"(has {names})"
                    )
            if len(set(targets)) != len(targets) or not targets:
                raise InputError(f"targets {targets!r} must be distinct and not empty")
            names = list(targets)
        plan.names = names
        plan.paths = {
            name: [directory / f for f in manifest["files"][name]] for name in names
        }
        plan.single = bool(manifest.get("single_target", False)) and len(names) == 1
        manifest_shape = check_image_shape([manifest["height"], manifest["width"]])
        if image_shape is not None and check_image_shape(image_shape) != manifest_shape:
            raise InputError(
                f"image_shape {tuple(image_shape)} differs from {manifest_shape} "
                f"in {directory / MANIFEST}"
            )
        plan.image_shape = manifest_shape
        if channels is not None and channels != manifest["channels"]:
            raise InputError(
                f"channels={channels} but {directory / MANIFEST} says "
                f"{manifest['channels']}"
            )
        plan.channels = int(manifest["channels"])
        plan.shared = bool(manifest.get("shared_channels", False))
        order = manifest.get("channel_order", "rgb")
        if order not in CHANNEL_ORDERS:
            raise InputError(f"{directory / MANIFEST} has channel_order {order!r}")
        if channel_order is not None and channel_order != order:
            raise InputError(
                f"channel_order={channel_order!r} but {directory / MANIFEST} says "
                f"its files are {order!r}"
            )
    else:
        listed = [source] if isinstance(source, (str, os.PathLike)) else list(source)
        if not listed:
            raise InputError("source names no reference weight files")
        if targets is None:
            names = [SINGLE_TARGET]
        elif len(targets) == 1 and isinstance(targets[0], str):
            names = list(targets)
        else:
            raise InputError(
                f"a list of files holds one target, got targets={targets!r}"
            )
        plan.names = names
        plan.single = targets is None
        plan.paths = {names[0]: [Path(p) for p in listed]}
        if image_shape is not None:
            plan.image_shape = check_image_shape(image_shape)
        order = _files_channels(plan, listed, channels, channel_order)
    plan.order = _file_order(order, 1 if plan.shared else plan.channels)
    return plan


def _files_channels(
    plan: _Plan, listed: list[Any], channels: int | None, channel_order: str | None
) -> str:
    """Channels and channel order of bare files; returns the order.

    Files that are exactly one target's files in a dmask export take its
    manifest's settings (channels, channel order, image shape), in its order.
    """
    if channels is not None and (
        isinstance(channels, bool) or not isinstance(channels, int) or channels < 1
    ):
        raise InputError(f"channels must be a positive integer, got {channels!r}")
    beside = _exported_files(listed)
    if beside is not None:
        manifest, ordered = beside
        plan.paths = {plan.names[0]: ordered}
        if plan.image_shape is None:
            plan.image_shape = check_image_shape(
                [manifest["height"], manifest["width"]]
            )
        exported = int(manifest["channels"])
        if channels is not None and channels != exported:
            raise InputError(
                f"channels={channels} but the export these files belong to says "
                f"{exported}"
            )
        plan.channels = exported
        plan.shared = bool(manifest.get("shared_channels", False))
        order = str(manifest.get("channel_order", "rgb"))
        if channel_order is not None and channel_order != order:
            raise InputError(
                f"channel_order={channel_order!r} but the export these files belong "
                f"to says they are {order!r}"
            )
        return order
    if len(listed) == 1:
        if channels is None:
            plan.notes.append(
                f"one weight file {listed[0]}: applied to each of R, G and B, as "
                "the sparse methods do (--channels 1, channels=1: a greyscale model)"
            )
        plan.channels = 3 if channels is None else channels
        plan.shared = plan.channels > 1
        return channel_order or "rgb"
    if channels is not None and channels != len(listed):
        raise InputError(
            f"channels={channels} but {len(listed)} weight files were given "
            "(one per channel, or one for every channel)"
        )
    plan.channels = len(listed)
    if channel_order is None:
        channel_order = "bgr"
        order = "B, G, R" if len(listed) == 3 else "the image's channels reversed"
        plan.notes.append(
            f"reading {len(listed)} weight files as {order} (the reference's "
            "OpenCV order: the first is blue); pass --channel-order rgb "
            "(channel_order='rgb') if they are not"
        )
    return channel_order


def _exported_files(listed: list[Any]) -> tuple[dict[str, Any], list[Path]] | None:
    """The manifest of the dmask export whose target has exactly these files.

    Returns it with the files in its order, or None (then they are bare files).
    """
    wanted = {Path(p).resolve() for p in listed}
    if len(wanted) != len(listed):
        return None
    for parent in {p.parent for p in wanted}:
        for place in (parent, parent.parent):
            if not (place / MANIFEST).is_file():
                continue
            try:
                manifest = read_manifest(place)
            except InputError:
                continue
            for files in manifest["files"].values():
                ordered = [(place / f).resolve() for f in files]
                if set(ordered) == wanted:
                    return manifest, ordered
    return None


def _check_memory(needed: int, what: str, advice: str) -> None:
    runtime.check_process_memory(needed, f"importing {what}", advice)


def _import_field(
    plan: _Plan,
    matrices: dict[str, list[Any]],
    height: int,
    width: int,
    field: int,
    common: dict[str, Any],
) -> Model:
    k = field * field
    n_targets = len(plan.names)
    channels = plan.channels
    needed = 2 * 8 * n_targets * height * width * channels * (k + 2)
    _check_memory(
        needed,
        f"a {field}x{field} field for {height}x{width}x{channels} images",
        "import it as a sparse model (kind='sparse', --kind sparse)",
    )
    weight = np.empty((n_targets, height, width, channels, k))
    bias = np.empty((n_targets, height, width, channels))
    for t, name in enumerate(plan.names):
        worst = None
        for i, (path, matrix) in enumerate(
            zip(plan.paths[name], matrices[name], strict=True)
        ):
            w, b, first = unpack(matrix, height, width, field)
            for c in [plan.order[i]] if not plan.shared else range(channels):
                weight[t, :, :, c], bias[t, :, :, c] = w, b
            if first is not None and (worst is None or first[0] < worst[0][0]):
                worst = (first, plan.order[i], path)
        if worst is not None:
            (out, read), c, path = worst
            raise InputError(
                f"reference weights {path} (target {name!r}): output pixel "
                f"(y, x) = {divmod(out, width)} channel {c} reads input pixel "
                f"{divmod(read, width)} outside the {field}x{field} field"
            )
    tile_shape = (min(IMPORT_TILE, height), min(IMPORT_TILE, width))
    attrs = model_store.ModelAttrs(
        field=field, tile_shape=tile_shape, **common
    ).to_dict()
    attrs["complete"] = True
    dataset = model_store.model_dataset(weight, bias, plan.names, field, attrs)
    return Model(dataset)


def _import_sparse(
    plan: _Plan,
    matrices: dict[str, list[Any]],
    height: int,
    width: int,
    span: int,
    slots: int,
    common: dict[str, Any],
) -> Model:
    n_targets = len(plan.names)
    channels = plan.channels
    slots = max(slots, 1)
    values = n_targets * height * width * channels
    if height * width * channels > np.iinfo(sparse.INDEX_DTYPE).max:
        raise InputError(
            f"{height}x{width}x{channels} images are too large for a sparse model's "
            f"int32 input positions ({plan.paths[plan.names[0]][0]})"
        )
    _check_memory(
        2 * sparse.sparse_bytes(values, slots),
        f"{slots} weights per output for {height}x{width}x{channels} images",
        "free memory, or import fewer targets at a time",
    )
    index = np.empty((n_targets, height, width, channels, slots), sparse.INDEX_DTYPE)
    weight = np.empty((n_targets, height, width, channels, slots))
    bias = np.empty((n_targets, height, width, channels))
    for t, name in enumerate(plan.names):
        for i, matrix in enumerate(matrices[name]):
            pixels, w, b = sparse.slots_from_csr(matrix, slots)
            for c in [plan.order[i]] if not plan.shared else range(channels):
                flat = np.where(pixels >= 0, pixels * channels + c, sparse.UNUSED)
                index[t, :, :, c] = flat.reshape(height, width, slots)
                weight[t, :, :, c] = w.reshape(height, width, slots)
                bias[t, :, :, c] = b.reshape(height, width)
    attrs = model_store.ModelAttrs(field=span, tile_shape=(0, 0), **common)
    dataset = model_store.sparse_model_dataset(index, weight, bias, plan.names, attrs)
    return Model(dataset)
