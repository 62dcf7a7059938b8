"""Resizing images as OpenCV does: bilinear (``INTER_LINEAR``) and pixel areas.

Both are separable: every output row (column) is a weighted sum of a few input
rows (columns), with weights worked out exactly in integers per axis and then
applied to whole planes at once (a loop over the few taps, never over pixels).

``bilinear`` is OpenCV's ``INTER_LINEAR``: output pixel ``d`` of an axis reads
the input at ``s = (d + 0.5) * n_in / n_out - 0.5`` (half-pixel centres),
clamped to ``[0, n_in - 1]``, and interpolates linearly between the two pixels
around it. It does not antialias: shrinking by more than 2 skips pixels.

``area`` weights each input pixel by the part of the output pixel's footprint
``[d, d + 1) * n_in / n_out`` that it covers. Shrinking, that is the mean over
the footprint, as OpenCV's ``INTER_AREA``. Enlarging, the footprint lies in one
input pixel (a copy) or straddles two (their overlap fractions): the rule of
``INTER_AREA`` when both axes grow, which OpenCV computes in floating point, so
that where a footprint ends exactly on a pixel boundary it sometimes copies the
neighbouring pixel instead (45 -> 100 columns: output 60 reads input 26, not
27). Where one axis shrinks and the other grows OpenCV applies the enlarging
rule to both axes; here each axis keeps its own.

Integer images are rounded half to even and saturated, like OpenCV's
``saturate_cast``; float images keep their dtype. OpenCV computes 8-bit
bilinear in 11-bit fixed point, so its pixels may differ from these by one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from dmask.errors import InputError

__all__ = ["area", "area_weights", "bilinear", "bilinear_weights", "resize"]


def bilinear_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Input indices and weights of ``INTER_LINEAR`` along one axis.

    Returns
    -------
    index : numpy.ndarray
        ``(n_out, 2)`` intp: the pixels at and after the sample position.
    weight : numpy.ndarray
        ``(n_out, 2)`` float64, each row summing to 1.
    """
    d = np.arange(n_out, dtype=np.int64)
    # s = num / den exactly, clamped to the image: no rounding of positions.
    num = np.clip((2 * d + 1) * n_in - n_out, 0, (n_in - 1) * 2 * n_out)
    den = 2 * n_out
    low = num // den
    frac = (num - low * den) / den
    high = np.minimum(low + 1, n_in - 1)
    index = np.stack([low, high], axis=1).astype(np.intp)
    return index, np.stack([1.0 - frac, frac], axis=1)


def area_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Input indices and weights of pixel-area resizing along one axis.

    In units of ``1 / n_out`` input pixels, output pixel ``d`` covers
    ``[d * n_in, (d + 1) * n_in)`` and input pixel ``s`` covers
    ``[s * n_out, (s + 1) * n_out)``; the weight is their overlap over ``n_in``.

    Returns
    -------
    index, weight : numpy.ndarray
        ``(n_out, taps)`` each; unused taps have weight 0.
    """
    d = np.arange(n_out, dtype=np.int64)[:, None]
    taps = min(n_in, n_in // n_out + 2)
    first = (d * n_in) // n_out
    s = first + np.arange(taps, dtype=np.int64)[None, :]
    start = np.maximum(d * n_in, s * n_out)
    stop = np.minimum((d + 1) * n_in, (s + 1) * n_out)
    weight = np.maximum(stop - start, 0) / n_in
    index = np.minimum(s, n_in - 1).astype(np.intp)
    return index, weight


def _resample(
    values: np.ndarray, axis: int, index: np.ndarray, weight: np.ndarray
) -> np.ndarray:
    shape = [1] * values.ndim
    shape[axis] = -1
    out = None
    for k in range(index.shape[1]):
        w = weight[:, k]
        if not w.any():
            continue
        term = np.take(values, index[:, k], axis=axis) * w.reshape(shape)
        out = term if out is None else out + term
    assert out is not None  # every output pixel has a tap of positive weight
    return out


def _check(image: np.ndarray, size: Sequence[int]) -> tuple[np.ndarray, int, int]:
    image = np.asarray(image)
    if image.ndim not in (2, 3) or 0 in image.shape:
        raise InputError(f"image must be (H, W) or (H, W, C), got {image.shape}")
    if image.dtype.kind not in "uif":
        raise InputError(f"image dtype must be integer or float, got {image.dtype}")
    height, width = check_size(size)
    return image, height, width


def check_size(size: Sequence[int]) -> tuple[int, int]:
    """``(height, width)`` as positive integers, or InputError."""
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError):
        raise InputError(f"size must be (height, width), got {size!r}") from None
    if height < 1 or width < 1:
        raise InputError(f"size must be positive, got {height}x{width}")
    return height, width


def _cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


Weights = Callable[[int, int], tuple[np.ndarray, np.ndarray]]


def resize(image: np.ndarray, size: Sequence[int], weights: Weights) -> np.ndarray:
    """Resize ``(H, W)`` or ``(H, W, C)`` to ``size = (H, W)`` with per-axis weights.

    ``weights(n_in, n_out)`` gives one axis's ``(index, weight)`` (such as
    :func:`bilinear_weights`). The axis shrunk most goes first (less work).
    The result has the input's dtype.
    """
    image, height, width = _check(image, size)
    if image.shape[:2] == (height, width):
        return image.copy()
    ratios = [height / image.shape[0], width / image.shape[1]]
    values = image.astype(np.float64)
    for axis in sorted((0, 1), key=lambda a: ratios[a]):
        n_out = (height, width)[axis]
        if values.shape[axis] != n_out:
            index, weight = weights(values.shape[axis], n_out)
            values = _resample(values, axis, index, weight)
    return _cast(values, image.dtype)


def bilinear(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """OpenCV's ``INTER_LINEAR`` resize to ``size = (H, W)``, keeping the dtype."""
    return resize(image, size, bilinear_weights)


def area(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Pixel-area resize (OpenCV's ``INTER_AREA``) to ``size``, keeping the dtype."""
    return resize(image, size, area_weights)
