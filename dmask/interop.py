"""Exchange models with the reference implementation's weight files.

The reference stores one model per channel as a ``scipy.sparse`` CSR matrix of
shape ``d x (d + 1)``, ``d = H * W``: row ``p`` is output pixel ``p`` and
column ``q`` input pixel ``q`` (both row-major), the last column the bias,
saved with :func:`scipy.sparse.save_npz`. Prediction is ``y = W [x; 1]`` on the
(min-max normalised) image. :func:`export_reference` writes a :class:`Model`
in that form and :func:`import_reference` reads such files back into one.

Export layout::

    out_dir/manifest.json
    out_dir/<target>/channel_<c>.npz
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from dmask import storage
from dmask.errors import InputError
from dmask.model import NORMALIZATIONS, SINGLE_TARGET, Model

__all__ = ["MANIFEST", "UNKNOWN_LAM", "export_reference", "import_reference"]

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
EXPORT_FORMAT = "dmask-reference-weights"
EXPORT_VERSION = 1
UNKNOWN_LAM = -1.0
"""``lam`` of an imported model whose penalty is unknown."""
IMPORT_TILE = 64
FIELD_LAYOUT = (
    "row-major window offsets (offset_y, offset_x); "
    "weights of offsets outside the image are 0"
)


# ----------------------------------------------------------------------- export


def _window_csr(weight: np.ndarray, bias: np.ndarray, offsets: np.ndarray) -> Any:
    """One channel's CSR ``d x (d + 1)`` from weights ``(H, W, k)`` and bias.

    Every in-image window entry is stored (zeros too), then the bias, so the
    sparsity pattern is the clipped window. Row-major window offsets give
    increasing columns within a row, so the matrix is in canonical form.
    """
    height, width, k = weight.shape
    d = height * width
    ys = np.arange(height)[:, None, None] + offsets[None, None, :, 0]
    xs = np.arange(width)[None, :, None] + offsets[None, None, :, 1]
    inside = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
    index_dtype = np.int32 if d + 1 <= np.iinfo(np.int32).max // (k + 1) else np.int64
    columns = np.empty((d, k + 1), dtype=index_dtype)
    columns[:, :k] = (ys * width + xs).reshape(d, k)
    columns[:, k] = d
    values = np.empty((d, k + 1), dtype=np.float64)
    values[:, :k] = weight.reshape(d, k)
    values[:, k] = bias.reshape(d)
    keep = np.ones((d, k + 1), dtype=bool)
    keep[:, :k] = inside.reshape(d, k)
    indptr = np.zeros(d + 1, dtype=index_dtype)
    np.cumsum(keep.sum(axis=1), out=indptr[1:])
    return sp.csr_matrix((values[keep], columns[keep], indptr), shape=(d, d + 1))


def _safe_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise InputError(f"target name {name!r} cannot be used as a directory name")
    return name


def _json_lam(value: Any) -> float:
    lam = float(value)
    return lam if math.isfinite(lam) else UNKNOWN_LAM


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
        _safe_name(name)
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
                matrix = _window_csr(weight[:, :, c], bias[:, :, c], offsets)
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
            "lam": _json_lam(model.lam),
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
        _replace(partial, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    logger.info("reference weights written to %s", out_dir)
    written = [out_dir / rel for name in names for rel in files[name]]
    return [*written, out_dir / MANIFEST]


def _replace(partial: Path, out_dir: Path, overwrite: bool) -> None:
    """Rename ``partial`` to ``out_dir``, moving an existing one aside first."""
    if not os.path.lexists(out_dir):
        partial.rename(out_dir)
        return
    if not overwrite:
        raise InputError(f"output directory {out_dir} already exists (pass overwrite)")
    if out_dir.is_dir() and not out_dir.is_symlink():
        old = partial.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:12]}"
        out_dir.rename(old)
        partial.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        out_dir.unlink()
        partial.rename(out_dir)


# ----------------------------------------------------------------------- import


def _unreadable(path: Path, exc: Exception) -> InputError:
    lines = str(exc).splitlines()
    reason = lines[0] if lines else type(exc).__name__
    return InputError(
        f"cannot read reference weights {path}: {reason} "
        "(expected a scipy.sparse.save_npz file)"
    )


def _peek_shape(path: Path) -> tuple[int, int]:
    """The matrix shape recorded in a ``save_npz`` file, without its data."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            shape = tuple(int(v) for v in archive["shape"])
            str(archive["format"])
    except Exception as exc:  # numpy raises many kinds here
        raise _unreadable(path, exc) from exc
    if len(shape) != 2:
        raise InputError(f"reference weights {path} are not a 2-D matrix")
    return shape[0], shape[1]


def _load(path: Path, shape: tuple[int, int]) -> Any:
    """Load one sparse file as canonical float64 CSR, or raise InputError."""
    try:
        matrix = sp.load_npz(path)
    except Exception as exc:  # numpy and scipy raise many kinds here
        raise _unreadable(path, exc) from exc
    if matrix.shape != shape:
        raise InputError(f"reference weights {path} changed while being read")
    kind = matrix.dtype
    if not (np.issubdtype(kind, np.floating) or np.issubdtype(kind, np.integer)):
        raise InputError(f"reference weights {path} have dtype {kind}, not real")
    matrix = matrix.tocsr()
    if matrix.dtype != np.float64:
        matrix = matrix.astype(np.float64)
    matrix.sum_duplicates()
    if not np.all(np.isfinite(matrix.data)):
        raise InputError(f"reference weights {path} contain NaN or infinite values")
    return matrix


def _check_field(field: Any, where: str) -> int:
    if isinstance(field, bool) or not isinstance(field, (int, np.integer)):
        raise InputError(f"{where} must be an odd integer >= 1, got {field!r}")
    if field < 1 or field % 2 == 0:
        raise InputError(f"{where} must be an odd integer >= 1, got {field}")
    return int(field)


def _check_lam(lam: Any, where: str, allow_unknown: bool) -> float:
    try:
        value = float(lam)
    except (TypeError, ValueError):
        raise InputError(f"{where} must be a positive number, got {lam!r}") from None
    if allow_unknown and value == UNKNOWN_LAM:
        return value
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"{where} must be a positive finite number, got {lam!r}")
    return value


def _check_image_shape(image_shape: Any) -> tuple[int, int]:
    if (
        not isinstance(image_shape, (tuple, list))
        or len(image_shape) != 2
        or any(
            isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1
            for v in image_shape
        )
    ):
        raise InputError(
            f"image_shape must be two positive integers (H, W), got {image_shape!r}"
        )
    return int(image_shape[0]), int(image_shape[1])


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.is_file():
        raise InputError(f"{directory} has no {MANIFEST} (not a reference export)")
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"cannot read {path}: {reason}") from exc
    if not isinstance(manifest, dict):
        raise InputError(f"{path} is not a JSON object")
    for key in ("height", "width", "channels", "targets", "files"):
        if key not in manifest:
            raise InputError(f"{path} has no {key!r} entry")
    files = manifest["files"]
    targets = manifest["targets"]
    if (
        not isinstance(targets, list)
        or not targets
        or not all(isinstance(t, str) for t in targets)
        or not isinstance(files, dict)
    ):
        raise InputError(f"{path} has malformed 'targets' or 'files' entries")
    for name in targets:
        listed = files.get(name)
        if not isinstance(listed, list) or len(listed) != manifest["channels"]:
            raise InputError(
                f"{path} lists {listed!r} for target {name!r}, expected "
                f"{manifest['channels']} file(s)"
            )
        for entry in listed:
            if (
                not isinstance(entry, str)
                or Path(entry).is_absolute()
                or ".." in Path(entry).parts
            ):
                raise InputError(f"{path} lists {entry!r}, not a path inside it")
    return manifest


def _matrix_shape(
    shapes: Sequence[tuple[Path, tuple[int, int]]],
    image_shape: tuple[int, int] | None,
) -> tuple[int, int]:
    """Check every matrix is ``d x (d + 1)`` for one image shape, and return it."""
    if image_shape is not None:
        height, width = image_shape
        d = height * width
        for path, shape in shapes:
            if shape != (d, d + 1):
                raise InputError(
                    f"reference weights {path} have shape {shape}, expected "
                    f"{(d, d + 1)} for {height}x{width} images"
                )
        return height, width
    first_path, first = shapes[0]
    for path, shape in shapes:
        if shape != first:
            raise InputError(
                f"reference weights {path} have shape {shape} but "
                f"{first_path} has shape {first}"
            )
    rows, cols = first
    if cols != rows + 1 or rows < 1:
        raise InputError(
            f"reference weights {first_path} have shape {first}, expected "
            "(d, d + 1) with the bias in the last column"
        )
    side = math.isqrt(rows)
    if side * side != rows:
        raise InputError(
            f"reference weights {first_path} have d = {rows} pixels, not a square "
            "image: pass image_shape"
        )
    return side, side


def _entries(matrix: Any, width: int) -> tuple[np.ndarray, ...]:
    """Rows, columns, values and window displacements of a canonical CSR.

    Displacements of bias entries (column ``d``) are meaningless.
    """
    d = matrix.shape[0]
    small = np.int32 if d + 1 < np.iinfo(np.int32).max else np.int64
    flat = np.arange(d + 1, dtype=small)
    ytab, xtab = flat // width, flat % width
    counts = np.diff(matrix.indptr)
    rows = np.repeat(flat[:d], counts)
    cols = matrix.indices
    dy = ytab[cols] - np.repeat(ytab[:d], counts)
    dx = xtab[cols] - np.repeat(xtab[:d], counts)
    return rows, cols, matrix.data, dy, dx


def _reach(matrix: Any, width: int) -> int:
    """Largest ``max(|dy|, |dx|)`` of the non-zero weights (0 if none)."""
    _, cols, values, dy, dx = _entries(matrix, width)
    use = (cols < matrix.shape[0]) & (values != 0)
    if not use.any():
        return 0
    return int(np.maximum(np.abs(dy[use]), np.abs(dx[use])).max())


def _unpack(
    matrix: Any, height: int, width: int, field: int
) -> tuple[np.ndarray, np.ndarray, tuple[int, int] | None]:
    """Weights ``(H, W, r*r)`` and bias ``(H, W)`` of one channel.

    Also returns the first non-zero outside the window, as (output pixel,
    input pixel) flat indices, or None; such entries are left out.
    """
    d = height * width
    b = field // 2
    rows, cols, values, dy, dx = _entries(matrix, width)
    is_bias = cols == d
    inside = (np.abs(dy) <= b) & (np.abs(dx) <= b) & ~is_bias
    outside = ~inside & ~is_bias & (values != 0)
    first = None
    if outside.any():
        i = int(np.argmax(outside))
        first = (int(rows[i]), int(cols[i]))
    weight = np.zeros(d * field * field)
    bias = np.zeros(d)
    bias[rows[is_bias]] = values[is_bias]
    slot = (dy[inside] + b) * field + (dx[inside] + b)
    weight[rows[inside].astype(np.int64) * (field * field) + slot] = values[inside]
    return weight.reshape(height, width, -1), bias.reshape(height, width), first


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
        manifest = _read_manifest(directory)
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
        manifest_shape = _check_image_shape([manifest["height"], manifest["width"]])
        if (
            image_shape is not None
            and _check_image_shape(image_shape) != manifest_shape
        ):
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
            image_shape = _check_image_shape(image_shape)

    if field is None and manifest.get("field") is not None:
        field = _check_field(manifest["field"], f"field in {MANIFEST}")
    elif field is not None:
        field = _check_field(field, "field")
    if lam is not None:
        lam = _check_lam(lam, "lam", allow_unknown=False)
    elif manifest.get("lam") is not None:
        lam = _check_lam(manifest["lam"], f"lam in {MANIFEST}", allow_unknown=True)
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
    shapes = [(p, _peek_shape(p)) for name in names for p in paths[name]]
    height, width = _matrix_shape(shapes, image_shape)
    shape = shapes[0][1]

    if field is None:
        reach = max(_reach(_load(p, shape), width) for p, _ in shapes)
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
            weight[t, :, :, c], bias[t, :, :, c], first = _unpack(
                _load(path, shape), height, width, field
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
    grid = (-(-height // tile_shape[0]), -(-width // tile_shape[1]))
    attrs = {
        "field": field,
        "lam": float(lam),
        "normalize": normalize,
        "channel_mode": "independent",
        "field_layout": FIELD_LAYOUT,
        "height": height,
        "width": width,
        "channels": channels,
        "n_samples": 0,
        "single_target": single,
        "training_fingerprint": "reference-import",
        "tile_shape": tile_shape,
        "complete": True,
    }
    dataset = storage.model_dataset(
        weight, bias, names, field, np.ones(grid, dtype="u1"), attrs
    )
    logger.info(
        "imported %d target(s) of %dx%dx%d reference weights, field %d",
        len(names), height, width, channels, field,
    )  # fmt: skip
    return Model(dataset)
