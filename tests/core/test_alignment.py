"""Alignment maths against slow, obviously-right versions: transforms, warps, masks."""

from __future__ import annotations

import numpy as np
import pytest

from dmask.core import alignment
from dmask.core import resize as core_resize
from dmask.datasets.drawing import landmark_fractions, render_face, subject_params


def _similarity_matrix(angle: float, scale: float, shift) -> np.ndarray:
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, shift[0]], [s, c, shift[1]]])


def _least_squares_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The slow way: x' = a x - b y + tx, y' = b x + a y + ty by lstsq."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        rows.append([x, -y, 1, 0])
        rhs.append(u)
        rows.append([y, x, 0, 1])
        rhs.append(v)
    a, b, tx, ty = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


def test_similarity_is_the_least_squares_one(rng):
    src = rng.uniform(0, 100, size=(5, 2))
    known = _similarity_matrix(0.3, 1.7, (12.0, -4.0))
    exact = alignment.apply_transform(known, src)
    np.testing.assert_allclose(alignment.similarity(src, exact), known, atol=1e-9)
    noisy = exact + rng.normal(0, 2.0, size=exact.shape)
    np.testing.assert_allclose(
        alignment.similarity(src, noisy),
        _least_squares_similarity(src, noisy),
        atol=1e-9,
    )
    # never a reflection, even when the points are mirrored
    mirrored = src * np.array([-1.0, 1.0])
    assert np.linalg.det(alignment.similarity(src, mirrored)[:, :2]) > 0
    back = alignment.invert(known)
    np.testing.assert_allclose(alignment.apply_transform(back, exact), src, atol=1e-9)
    with pytest.raises(ValueError, match="coincide"):
        alignment.similarity(np.ones((5, 2)), src)


def test_fractions_round_trip_and_pixel_centres():
    size = (7, 10)
    points = np.array([[0.0, 0.0], [9.0, 6.0], [4.5, 3.0]])
    fractions = alignment.to_fractions(points, size)
    np.testing.assert_allclose(fractions[0], [0.05, 1 / 14])
    np.testing.assert_allclose(alignment.from_fractions(fractions, size), points)


@pytest.mark.parametrize("box", [(3, 19, 5, 17), (-4, 12, -2, 14), (0, 9, 0, 9)])
def test_box_transform_is_the_resize_convention(rng, box):
    """Warping by a box's transform equals cropping the box and resizing it
    bilinearly with half-pixel centres (OpenCV's INTER_LINEAR), where the crop
    grows (no smoothing either way)."""
    image = rng.integers(0, 256, size=(24, 30, 3)).astype(np.uint8)
    size = (21, 18)
    y0, y1, x0, x1 = box
    rows = np.clip(np.arange(y0, y1), 0, image.shape[0] - 1)
    cols = np.clip(np.arange(x0, x1), 0, image.shape[1] - 1)
    cropped = image[np.ix_(rows, cols)]
    expected = core_resize.bilinear(cropped, size).astype(np.float64)
    matrix = alignment.box_transform(box, size)
    warped = alignment.warp_to_crop(image, matrix, size)
    # where the resize reads beyond the box's outer pixel centres it repeats
    # the box's edge, the warp reads the photograph on: compare the rest
    jj, ii = np.meshgrid(np.arange(size[1]), np.arange(size[0]))
    xs = (jj + 0.5) / matrix[0, 0] + x0 - 0.5
    ys = (ii + 0.5) / matrix[1, 1] + y0 - 0.5
    inside = (xs >= x0) & (xs <= x1 - 1) & (ys >= y0) & (ys <= y1 - 1)
    assert inside.mean() > 0.75
    # the uint8 resize rounds; the warp does not
    assert np.abs(warped - expected)[inside].max() <= 0.5 + 1e-9


def _bilinear(image: np.ndarray, x: float, y: float) -> np.ndarray:
    """``image`` at ``(x, y)`` from its four neighbours, the edge repeated."""
    x = min(max(x, 0), image.shape[1] - 1)
    y = min(max(y, 0), image.shape[0] - 1)
    ix, iy = min(int(x), image.shape[1] - 2), min(int(y), image.shape[0] - 2)
    fx, fy = x - ix, y - iy
    return (
        image[iy, ix] * (1 - fx) * (1 - fy)
        + image[iy, ix + 1] * fx * (1 - fy)
        + image[iy + 1, ix] * (1 - fx) * fy
        + image[iy + 1, ix + 1] * fx * fy
    )


def test_warp_samples_where_the_transform_says(rng):
    """Each crop pixel is the bilinear value of the photograph at the inverse."""
    image = rng.uniform(0, 1, size=(40, 50, 2))
    matrix = _similarity_matrix(-0.4, 1.3, (-10.0, 8.0))  # grows: no smoothing
    size = (16, 12)
    crop = alignment.warp_to_crop(image, matrix, size)
    inverse = alignment.invert(matrix)
    for i in range(size[0]):
        for j in range(size[1]):
            x, y = alignment.apply_transform(inverse, np.array([[j, i]]))[0]
            want = _bilinear(image, x, y)
            np.testing.assert_allclose(crop[i, j], want, atol=1e-12)


def _marked_face(subject: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """A drawn face with a green dot on each landmark, and the landmarks."""
    params = subject_params(7, subject)
    face = render_face(params, "neutral", side, side).astype(np.float64)
    points = alignment.from_fractions(landmark_fractions(params), (side, side))
    jj, ii = np.meshgrid(np.arange(side), np.arange(side))
    for x, y in points:
        dot = (jj - x) ** 2 + (ii - y) ** 2 <= (side / 64) ** 2
        face[dot] = (0.0, 1.0, 0.0)
    return face, points


def _dots(image: np.ndarray, near: np.ndarray, reach: float) -> np.ndarray:
    """Centroids of the green dots of an image, one near each point given."""
    green = np.clip(image[..., 1] - np.maximum(image[..., 0], image[..., 2]), 0, None)
    jj, ii = np.meshgrid(np.arange(image.shape[1]), np.arange(image.shape[0]))
    found = []
    for x, y in near:
        w = green * ((jj - x) ** 2 + (ii - y) ** 2 <= reach**2)
        found.append([(w * jj).sum() / w.sum(), (w * ii).sum() / w.sum()])
    return np.array(found)


@pytest.mark.parametrize("subject", [0, 1, 2])
def test_alignment_puts_drawn_landmarks_on_the_canonical_positions(rng, subject):
    """A drawn face placed in a larger photograph by a random similarity is
    brought back so that its landmarks, found in the pixels, lie within 2
    pixels of the canonical positions: the subject's own, and the mean of
    several subjects (the dataset's), at 128 x 128."""
    face, points = _marked_face(subject, 256)
    angle, scale = rng.uniform(-0.35, 0.35), rng.uniform(1.2, 2.2)
    placed = _similarity_matrix(angle, scale, (rng.uniform(40, 90), 30.0))
    photo_size = (int(256 * scale) + 140, int(256 * scale) + 200)
    photo = alignment.warp_to_crop(face, placed, photo_size)
    in_photo = alignment.apply_transform(placed, points)  # what a detector finds
    size = (128, 128)
    mean = np.mean([landmark_fractions(subject_params(7, s)) for s in range(6)], 0)
    for canonical in (landmark_fractions(subject_params(7, subject)), mean):
        target = alignment.from_fractions(canonical, size)
        matrix = alignment.similarity(in_photo, target)
        crop = alignment.warp_to_crop(photo, matrix, size)
        seen = _dots(crop, target, reach=6)
        assert np.hypot(*(seen - target).T).max() <= 2.0


def test_face_mask_is_feathered_and_follows_the_landmarks():
    size = (64, 60)
    points = np.array([[20.0, 24], [40, 24], [30, 34], [22, 44], [38, 44]])
    mask = alignment.face_mask(size, points)
    assert mask.shape == size and mask.min() == 0 and mask.max() == 1
    centre = (np.mean([24, 44]), 30)
    assert mask[round(centre[0]), round(centre[1])] == 1
    assert mask[0, 0] == 0 and mask[-1, -1] == 0
    band = (mask > 0) & (mask < 1)
    assert band.sum() > 0.1 * (mask > 0).sum()  # a real band, not an edge
    # rotating the landmarks rotates the mask
    turn = _similarity_matrix(np.pi / 2, 1.0, (0.0, 0.0))
    centre_xy = np.array([29.5, 29.5])
    rotated = alignment.apply_transform(turn, points - centre_xy) + centre_xy
    square = alignment.face_mask((60, 60), rotated)
    plain = alignment.face_mask((60, 60), points)
    np.testing.assert_allclose(np.rot90(plain, k=-1), square, atol=0.08)
    without = alignment.face_mask(size)
    assert without[32, 30] == 1 and without[0, 0] == 0
    # landmarks of a tight crop: the ellipse leaves the crop, the mask still
    # falls to 0 at its edge (no seam in the photograph)
    tight = alignment.face_mask(size, (points - [30, 34]) * 2.5 + [30, 34])
    assert tight[:, 0].max() == tight[:, -1].max() == 0
    assert tight[0].max() == tight[-1].max() == 0
    assert np.abs(np.diff(tight, axis=1)).max() <= 1 / 3 + 1e-9


def test_colour_match_and_paste_back(rng, monkeypatch):
    photo = rng.uniform(0, 255, size=(50, 70, 3))
    matrix = _similarity_matrix(0.2, 0.8, (-5.0, -3.0))
    size = (24, 24)
    crop = alignment.warp_to_crop(photo, matrix, size)
    mask = alignment.face_mask(size)
    shifted = crop * 0.5 + 40
    matched = alignment.match_colour(shifted, crop, mask)
    np.testing.assert_allclose(matched, crop, atol=1e-9)  # affine per channel: undone
    out = alignment.paste_back(photo, np.zeros_like(crop), matrix, mask)
    # the slow way: every photograph pixel through the transform
    expected = photo.copy()
    for i in range(photo.shape[0]):
        for j in range(photo.shape[1]):
            x, y = alignment.apply_transform(matrix, np.array([[j, i]]))[0]
            if not (0 <= x <= size[1] - 1 and 0 <= y <= size[0] - 1):
                continue
            alpha = _bilinear(mask, x, y)
            expected[i, j] = (1 - alpha) * photo[i, j]
    np.testing.assert_allclose(out, expected, atol=1e-9)
    # in bands of a few rows: the same
    monkeypatch.setattr(alignment, "PASTE_BAND", 50)
    banded = alignment.paste_back(photo, np.zeros_like(crop), matrix, mask)
    np.testing.assert_array_equal(banded, out)


def test_landmarks_attribute_round_trip_and_refusals():
    xy = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.7], [0.65, 0.7]])
    attr = alignment.landmarks_attribute(xy, 12, "drawn")
    assert attr["points"] == list(alignment.LANDMARKS) and attr["faces"] == 12
    np.testing.assert_allclose(alignment.read_landmarks({"landmarks": attr}), xy)
    assert alignment.read_landmarks({}) is None
    with pytest.raises(ValueError, match="name the points"):
        alignment.read_landmarks({"landmarks": {"points": ["a"], "xy": []}})
    with pytest.raises(ValueError, match=r"\(5, 2\)"):
        alignment.read_landmarks({"landmarks": {**attr, "xy": [[0, 0]]}})
    with pytest.raises(ValueError, match="coinciding"):
        alignment.read_landmarks({"landmarks": {**attr, "xy": [[0.5, 0.5]] * 5}})
