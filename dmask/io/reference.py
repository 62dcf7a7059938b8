"""The reference implementation's weight files: per channel a scipy.sparse CSR
``d x (d+1)`` matrix (rows: output pixels, columns: input pixels, bias last),
read and written exactly, with the manifest dmask adds beside them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from dmask.errors import InputError

__all__ = [
    "CHANNEL_ORDERS",
    "EXPORT_FORMAT",
    "EXPORT_VERSION",
    "MANIFEST",
    "NAMINGS",
    "UNKNOWN_LAM",
]


MANIFEST = "manifest.json"


EXPORT_FORMAT = "dmask-reference-weights"


EXPORT_VERSION = 2
"""2 adds ``kind``, ``channel_order`` and ``shared_channels`` (version 1: RGB files)."""


#: Orders of per-channel files: the reference reads images with OpenCV (BGR).
CHANNEL_ORDERS = ("rgb", "bgr")


#: File names on export: dmask's ``channel_<i>.npz`` or the reference's.
NAMINGS = ("dmask", "reference")


def reference_file_name(naming: str, date: str, number: int | None) -> str:
    """The file name of one matrix; ``number`` None for one shared by all channels.

    The reference names its files ``mr_weights_<date>_<c>.npz``, ``c`` from 1.
    """
    if naming == "reference":
        return (
            f"mr_weights_{date}.npz"
            if number is None
            else (f"mr_weights_{date}_{number}.npz")
        )
    return "weights.npz" if number is None else f"channel_{number}.npz"


UNKNOWN_LAM = -1.0
"""``lam`` of an imported model whose penalty is unknown."""


def window_csr(weight: np.ndarray, bias: np.ndarray, offsets: np.ndarray) -> Any:
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


def safe_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise InputError(f"target name {name!r} cannot be used as a directory name")
    return name


def json_lam(value: Any) -> float:
    lam = float(value)
    return lam if math.isfinite(lam) else UNKNOWN_LAM


def _unreadable(path: Path, exc: Exception) -> InputError:
    lines = str(exc).splitlines()
    reason = lines[0] if lines else type(exc).__name__
    return InputError(
        f"cannot read reference weights {path}: {reason} "
        "(expected a scipy.sparse.save_npz file)"
    )


def peek_shape(path: Path) -> tuple[int, int]:
    """The matrix shape recorded in a ``save_npz`` file, without its data."""
    import zipfile

    if path.is_file() and not zipfile.is_zipfile(path):
        raise InputError(
            f"cannot read reference weights {path}: not a scipy.sparse .npz file "
            "(save_npz writes a zip archive)"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            shape = tuple(int(v) for v in archive["shape"])
            str(archive["format"])
    except Exception as exc:  # numpy raises many kinds here
        raise _unreadable(path, exc) from exc
    if len(shape) != 2:
        raise InputError(f"reference weights {path} are not a 2-D matrix")
    return shape[0], shape[1]


def peek_entries(path: Path) -> int:
    """Stored entries of a ``save_npz`` file, from its header (data not read)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive, archive.open("data.npy") as member:
            version = np.lib.format.read_magic(member)
            header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, _ = header(member)
    except Exception as exc:  # zipfile and numpy raise many kinds here
        raise _unreadable(path, exc) from exc
    return int(np.prod(shape))


def read_matrix(path: Path, shape: tuple[int, int]) -> Any:
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


def check_field(field: Any, where: str) -> int:
    if isinstance(field, bool) or not isinstance(field, (int, np.integer)):
        raise InputError(f"{where} must be an odd integer >= 1, got {field!r}")
    if field < 1 or field % 2 == 0:
        raise InputError(f"{where} must be an odd integer >= 1, got {field}")
    return int(field)


def check_lam(lam: Any, where: str, allow_unknown: bool) -> float:
    try:
        value = float(lam)
    except (TypeError, ValueError):
        raise InputError(f"{where} must be a positive number, got {lam!r}") from None
    if allow_unknown and value == UNKNOWN_LAM:
        return value
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"{where} must be a positive finite number, got {lam!r}")
    return value


def check_image_shape(image_shape: Any) -> tuple[int, int]:
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


def read_manifest(directory: Path) -> dict[str, Any]:
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
    expected = 1 if manifest.get("shared_channels", False) else manifest["channels"]
    for name in targets:
        listed = files.get(name)
        if not isinstance(listed, list) or len(listed) != expected:
            raise InputError(
                f"{path} lists {listed!r} for target {name!r}, expected "
                f"{expected} file(s)"
            )
        for entry in listed:
            if (
                not isinstance(entry, str)
                or Path(entry).is_absolute()
                or ".." in Path(entry).parts
            ):
                raise InputError(f"{path} lists {entry!r}, not a path inside it")
    return manifest


def matrix_shape(
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


def field_reach(matrix: Any, width: int) -> int:
    """Largest ``max(|dy|, |dx|)`` of the non-zero weights (0 if none)."""
    _, cols, values, dy, dx = _entries(matrix, width)
    use = (cols < matrix.shape[0]) & (values != 0)
    if not use.any():
        return 0
    return int(np.maximum(np.abs(dy[use]), np.abs(dx[use])).max())


def max_row_entries(matrix: Any) -> int:
    """Most stored weights of one row, the bias column left out."""
    d = matrix.shape[0]
    counts = np.diff(matrix.indptr)
    if matrix.nnz:
        rows = np.repeat(np.arange(d), counts)
        counts = counts - np.bincount(rows[matrix.indices == d], minlength=d)
    return int(counts.max(initial=0))


def unpack(
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
