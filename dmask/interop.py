"""Models to and from the reference implementation's weight files."""

from __future__ import annotations

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
from dmask.core.planning import tile_grid
from dmask.errors import InputError
from dmask.io import atomic, model_store
from dmask.io.reference import (
    EXPORT_FORMAT,
    EXPORT_VERSION,
    MANIFEST,
    UNKNOWN_LAM,
    check_field,
    check_image_shape,
    check_lam,
    field_reach,
    json_lam,
    matrix_shape,
    peek_shape,
    read_manifest,
    read_matrix,
    safe_name,
    unpack,
    window_csr,
)
from dmask.model import Model

logger = logging.getLogger(__name__)

__all__ = ["IMPORT_TILE", "export_reference", "import_reference"]


IMPORT_TILE = 64


def export_reference(
    model: Model,
    out_dir: str | os.PathLike,
    target: str | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write a model as the reference implementation's per-channel CSR files.

    Parameters
    ----------
    model : Model
        The model (in memory or opened from a store).
    out_dir : str or path
        New directory; receives ``<target>/channel_<c>.npz`` and ``manifest.json``.
    target : str, optional
        Export this target only; all targets when omitted.
    overwrite : bool
        Replace an existing ``out_dir``.

    Returns
    -------
    list of pathlib.Path
        Absolute paths of the ``.npz`` files (by target, then channel), then
        of ``manifest.json``.

    Raises
    ------
    InputError
        ``out_dir`` exists and ``overwrite`` is false, or ``target`` is unknown.
    """
    out_dir = Path(os.path.abspath(out_dir))
    names = model.targets
    if target is not None:
        if target not in names:
            raise InputError(f"target {target!r} is not in the model (has {names})")
        names = [target]
    for name in names:
        safe_name(name)
    if os.path.lexists(out_dir) and not overwrite:
        raise InputError(f"output directory {out_dir} already exists (pass overwrite)")
    height, width = model.image_shape
    channels = model.channels
    offsets = np.stack(
        [
            np.asarray(model.dataset["offset_y"].values, dtype=np.int64),
            np.asarray(model.dataset["offset_x"].values, dtype=np.int64),
        ],
        axis=1,
    )
    parent = out_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    partial = parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:12]}"
    partial.mkdir()
    try:
        files: dict[str, list[str]] = {}
        for name in names:
            (partial / name).mkdir()
            weight = np.asarray(model.weights(name).values, dtype=np.float64)
            bias = np.asarray(model.bias(name).values, dtype=np.float64)
            files[name] = []
            for c in range(channels):
                relative = f"{name}/channel_{c}.npz"
                matrix = window_csr(weight[:, :, c], bias[:, :, c], offsets)
                sp.save_npz(partial / relative, matrix, compressed=False)
                files[name].append(relative)
            logger.info("exported target %s (%d channel(s))", name, channels)
        manifest = {
            "format": EXPORT_FORMAT,
            "format_version": EXPORT_VERSION,
            "height": height,
            "width": width,
            "channels": channels,
            "targets": names,
            "field": model.field,
            "lam": json_lam(model.lam),
            "normalize": model.normalize,
            "single_target": bool(model.dataset.attrs.get("single_target", False))
            and len(names) == 1,
            "layout": "per channel a scipy.sparse CSR d x (d+1), d = height*width, "
            "rows output pixels and columns input pixels in row-major order, "
            "last column the bias; y = W [x; 1]",
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


def import_reference(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    image_shape: tuple[int, int] | None = None,
    field: int | None = None,
    targets: list[str] | None = None,
    lam: float | None = None,
    normalize: str | None = None,
) -> Model:
    """Read the reference implementation's per-channel CSR files as a model.

    Parameters
    ----------
    source : str, path or sequence of them
        A directory written by :func:`export_reference` (its ``manifest.json``
        gives shapes, targets, field, lam and normalisation), or the ``.npz``
        files of one target, one per channel in channel order.
    image_shape : tuple of int, optional
        ``(H, W)``; from the manifest, else square images are assumed.
    field : int, optional
        Odd receptive field size ``r``: every non-zero weight must lie in the
        ``r x r`` window around its output pixel. From the manifest, else the
        smallest odd size covering every non-zero weight.
    targets : list of str, optional
        For a directory, the targets to read (default all); for files, the
        name of their single target (default ``"target"``).
    lam : float, optional
        Ridge penalty to record; from the manifest, else ``-1.0`` (unknown).
    normalize : {"minmax", "none"}, optional
        Input normalisation; from the manifest, else ``"minmax"``.

    Returns
    -------
    Model
        An in-memory model; :meth:`Model.save` writes it to a store.

    Raises
    ------
    InputError
        Unreadable files, wrong or inconsistent shapes, or a non-zero weight
        outside the receptive field (naming the first output pixel and channel).
    """
    manifest: dict[str, Any] = {}
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        directory = Path(source)
        manifest = read_manifest(directory)
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
        paths = {
            name: [directory / f for f in manifest["files"][name]] for name in names
        }
        single = bool(manifest.get("single_target", False)) and len(names) == 1
        manifest_shape = check_image_shape([manifest["height"], manifest["width"]])
        if image_shape is not None and check_image_shape(image_shape) != manifest_shape:
            raise InputError(
                f"image_shape {tuple(image_shape)} differs from {manifest_shape} "
                f"in {directory / MANIFEST}"
            )
        image_shape = manifest_shape
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
        single = targets is None
        paths = {names[0]: [Path(p) for p in listed]}
        if image_shape is not None:
            image_shape = check_image_shape(image_shape)

    if field is None and manifest.get("field") is not None:
        field = check_field(manifest["field"], f"field in {MANIFEST}")
    elif field is not None:
        field = check_field(field, "field")
    if lam is not None:
        lam = check_lam(lam, "lam", allow_unknown=False)
    elif manifest.get("lam") is not None:
        lam = check_lam(manifest["lam"], f"lam in {MANIFEST}", allow_unknown=True)
    else:
        lam = UNKNOWN_LAM
    if normalize is None:
        normalize = manifest.get("normalize", "minmax")
    if normalize not in NORMALIZATIONS:
        raise InputError(
            f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}"
        )

    channels = len(paths[names[0]])
    if manifest and manifest["channels"] != channels:
        raise InputError(
            f"{MANIFEST} says {manifest['channels']} channel(s), files give {channels}"
        )
    shapes = [(p, peek_shape(p)) for name in names for p in paths[name]]
    height, width = matrix_shape(shapes, image_shape)
    shape = shapes[0][1]

    if field is None:
        reach = max(field_reach(read_matrix(p, shape), width) for p, _ in shapes)
        field = 2 * reach + 1
        if field > 2 * max(height, width) - 1:
            raise InputError(
                f"reference weights need a {field}x{field} field, larger than "
                f"{height}x{width} images allow"
            )
        logger.info("inferred receptive field %d from the weights", field)
    k = field * field
    weight = np.empty((len(names), height, width, channels, k))
    bias = np.empty((len(names), height, width, channels))
    for t, name in enumerate(names):
        worst = None
        for c, path in enumerate(paths[name]):
            weight[t, :, :, c], bias[t, :, :, c], first = unpack(
                read_matrix(path, shape), height, width, field
            )
            if first is not None and (worst is None or first[0] < worst[0][0]):
                worst = (first, c, path)
        if worst is not None:
            (out, read), c, path = worst
            raise InputError(
                f"reference weights {path} (target {name!r}): output pixel "
                f"(y, x) = {divmod(out, width)} channel {c} reads input pixel "
                f"{divmod(read, width)} outside the {field}x{field} field"
            )

    tile_shape = [min(IMPORT_TILE, height), min(IMPORT_TILE, width)]
    grid = tile_grid((height, width), tile_shape)
    attrs = model_store.ModelAttrs(
        field=field,
        lam=float(lam),
        normalize=normalize,
        height=height,
        width=width,
        channels=channels,
        n_samples=0,
        single_target=single,
        training_fingerprint="reference-import",
        tile_shape=tuple(tile_shape),
    ).to_dict()
    attrs["complete"] = True
    dataset = model_store.model_dataset(
        weight, bias, names, field, np.ones(grid, dtype="u1"), attrs
    )
    logger.info(
        "imported %d target(s) of %dx%dx%d reference weights, field %d",
        len(names), height, width, channels, field,
    )  # fmt: skip
    return Model(dataset)
