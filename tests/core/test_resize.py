"""Resizing as OpenCV does: the documented formulas, then OpenCV itself."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dmask.core import resize
from dmask.errors import InputError

#: (input H, W) -> (output H, W): down, up, mixed, one axis only, non-square.
SHAPES = [
    ((13, 17), (5, 7)),
    ((6, 9), (11, 20)),
    ((12, 8), (7, 19)),
    ((10, 10), (10, 3)),
    ((9, 14), (9, 14)),
    ((1, 7), (3, 2)),
    ((21, 5), (4, 1)),
]


def _separable(image: np.ndarray, size, taps) -> np.ndarray:
    """Every output value as the sum of its input taps, one at a time."""
    height, width, channels = image.shape
    out = np.zeros((*size, channels))
    for y in range(size[0]):
        for x in range(size[1]):
            for c in range(channels):
                for sy, wy in taps(y, height, size[0]):
                    for sx, wx in taps(x, width, size[1]):
                        out[y, x, c] += wy * wx * image[sy, sx, c]
    return out


def _loop_bilinear(image: np.ndarray, size) -> np.ndarray:
    """``src = (dst + 0.5) * in / out - 0.5``, clamped, per pixel and channel."""

    def taps(d: int, n_in: int, n_out: int) -> list[tuple[int, float]]:
        s = min(max((d + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1.0)
        low = math.floor(s)
        frac = s - low
        return [(low, 1.0 - frac), (min(low + 1, n_in - 1), frac)]

    return _separable(image, size, taps)


def _loop_area(image: np.ndarray, size) -> np.ndarray:
    """Each input pixel weighted by its overlap with the output's footprint."""

    def taps(d: int, n_in: int, n_out: int) -> list[tuple[int, float]]:
        scale = n_in / n_out
        start, stop = d * scale, (d + 1) * scale
        found = []
        for s in range(n_in):
            overlap = min(stop, s + 1) - max(start, s)
            if overlap > 1e-12:
                found.append((s, overlap / scale))
        return found

    return _separable(image, size, taps)


@pytest.mark.parametrize(
    ("name", "loop"), [("bilinear", _loop_bilinear), ("area", _loop_area)]
)
@pytest.mark.parametrize(("shape", "size"), SHAPES)
def test_against_the_formula(rng, name, loop, shape, size):
    function = getattr(resize, name)
    for channels in (1, 2, 3):
        image = rng.random((*shape, channels))
        expected = loop(image, size)
        out = function(image, size)
        assert out.dtype == np.float64 and out.shape == (*size, channels)
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)
        np.testing.assert_allclose(
            function(image[..., 0], size), expected[..., 0], rtol=0, atol=1e-12
        )
    for dtype in (np.uint8, np.uint16):  # rounded to the nearest integer
        pixels = rng.integers(0, np.iinfo(dtype).max + 1, (*shape, 3), dtype=dtype)
        out = function(pixels, size)
        assert out.dtype == dtype
        expected = loop(pixels.astype(np.float64), size)
        assert np.abs(out - expected).max() <= 0.5 + 1e-9
    single = rng.random((*shape, 3)).astype(np.float32)
    assert function(single, size).dtype == np.float32


def test_weights_sum_to_one_and_constants_stay():
    for n_in, n_out in [(1, 5), (5, 1), (7, 3), (3, 7), (100, 9), (9, 100), (4, 4)]:
        for weights in (resize.bilinear_weights, resize.area_weights):
            index, weight = weights(n_in, n_out)
            assert index.shape == weight.shape and index.shape[0] == n_out
            assert index.min() >= 0 and index.max() < n_in
            np.testing.assert_allclose(weight.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    flat = np.full((9, 14, 3), 200, np.uint8)
    for size in [(4, 5), (30, 17)]:
        assert np.all(resize.bilinear(flat, size) == 200)
        assert np.all(resize.area(flat, size) == 200)


def test_area_means_blocks_and_copies_when_growing(rng):
    image = rng.random((6, 9))
    blocks = image.reshape(2, 3, 3, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(resize.area(image, (2, 3)), blocks, atol=1e-12)
    grown = resize.area(image, (18, 27))  # integer factor: each pixel repeated
    np.testing.assert_array_equal(grown, np.repeat(np.repeat(image, 3, 0), 3, 1))


def test_same_size_copies_and_bad_input_is_refused(rng):
    image = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    for function in (resize.bilinear, resize.area):
        out = function(image, (5, 6))
        np.testing.assert_array_equal(out, image)
        assert out is not image
    with pytest.raises(InputError, match="size must be positive"):
        resize.bilinear(image, (0, 4))
    with pytest.raises(InputError, match=r"\(H, W\) or \(H, W, C\)"):
        resize.area(image[None], (4, 4))
    with pytest.raises(InputError, match="dtype"):
        resize.bilinear(image.astype(bool), (4, 4))


# ------------------------------------------------------------------ OpenCV


def _cv2_cases():
    """(shape, size) pairs: shrinking, enlarging (bilinear only), one axis."""
    return [
        ((48, 64), (17, 23)),
        ((48, 64), (24, 32)),  # exactly half: OpenCV's fast area path
        ((31, 45), (64, 100)),
        ((40, 40), (128, 128)),
        ((100, 75), (33, 75)),
        ((7, 300), (3, 64)),
    ]


@pytest.mark.parametrize(("shape", "size"), _cv2_cases())
@pytest.mark.parametrize("channels", [None, 1, 3, 4])
def test_against_opencv(rng, shape, size, channels):
    cv2 = pytest.importorskip("cv2")
    full = shape if channels is None else (*shape, channels)
    image = rng.integers(0, 256, full, dtype=np.uint8)
    deep = rng.integers(0, 65536, full, dtype=np.uint16)
    floats = rng.random(full).astype(np.float32)
    methods = [("bilinear", cv2.INTER_LINEAR)]
    if size[0] <= shape[0] and size[1] <= shape[1]:
        # Enlarging, OpenCV's INTER_AREA follows the same overlap rule in
        # floating point, which at times takes the neighbouring pixel where a
        # footprint ends on a pixel boundary (45 -> 100: output 60 reads 26).
        methods.append(("area", cv2.INTER_AREA))
    for name, flag in methods:
        function = getattr(resize, name)
        for data, tolerance in ((image, 1), (deep, 1), (floats, 1e-5)):
            theirs = cv2.resize(data, size[::-1], interpolation=flag)
            ours = function(data, size)
            assert ours.dtype == data.dtype
            difference = np.abs(ours.astype(np.float64) - theirs.reshape(ours.shape))
            assert difference.max() <= tolerance, (name, data.dtype)
