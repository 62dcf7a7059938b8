"""Min-max normalisation of images (the one copy)."""

from __future__ import annotations

import numpy as np

__all__ = [
    "normalize_images",
    "minmax_parameters",
    "minmax_scale",
    "normalize_block",
    "sample_bounds",
]


def minmax_parameters(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image offset and scale of min-max normalisation.

    Parameters
    ----------
    images : numpy.ndarray
        ``(sample, y, x, channel)``.

    Returns
    -------
    low, scale : numpy.ndarray
        ``(sample,)`` float64 each, so that ``(image - low) * scale`` lies in
        ``[0, 1]``. A constant image gets scale 0 (it normalises to zeros).
    """
    low, high = sample_bounds(images)
    return low, minmax_scale(low, high)


def sample_bounds(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image minimum and maximum over all pixels and channels, as float64."""
    flat = images.reshape(images.shape[0], -1)
    return flat.min(axis=1).astype(np.float64), flat.max(axis=1).astype(np.float64)


def minmax_scale(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """``1 / (high - low)`` per image, 0 where the image is constant."""
    span = np.asarray(high, dtype=np.float64) - np.asarray(low, dtype=np.float64)
    return np.divide(1.0, span, out=np.zeros_like(span), where=span > 0)


def normalize_block(
    images: np.ndarray, low: np.ndarray | None, scale: np.ndarray | None
) -> np.ndarray:
    """Normalise a block of images with per-image parameters, as float64.

    Parameters
    ----------
    images : numpy.ndarray
        ``(sample, y, x, channel)`` of any real dtype.
    low, scale : numpy.ndarray or None
        ``(sample,)`` parameters from :func:`minmax_parameters`; None leaves the
        values as they are.

    Returns
    -------
    numpy.ndarray
        Float64 copy.
    """
    out = np.array(images, dtype=np.float64, copy=True)
    if low is not None and scale is not None:
        shape = (-1,) + (1,) * (out.ndim - 1)
        out -= np.asarray(low, dtype=np.float64).reshape(shape)
        out *= np.asarray(scale, dtype=np.float64).reshape(shape)
    return out


def normalize_images(images: np.ndarray) -> np.ndarray:
    """Each image min-max scaled to ``[0, 1]`` over all its pixels, as float64."""
    return normalize_block(images, *minmax_parameters(images))
