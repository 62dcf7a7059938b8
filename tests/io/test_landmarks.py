"""The landmark detector on the shipped photographs, and alignment built on it."""

from __future__ import annotations

import numpy as np
import pytest

from dmask.core import alignment
from dmask.datasets import samples
from dmask.io import face_crops, landmarks

pytestmark = pytest.mark.skipif(
    not landmarks.available(), reason=str(landmarks.missing_reason())
)

#: Where the demo's synthetic faces have their landmarks (fractions).
CANONICAL = np.array(
    [[0.394, 0.485], [0.607, 0.485], [0.501, 0.589], [0.407, 0.66], [0.595, 0.66]]
)


@pytest.fixture(scope="module")
def photos():
    found = samples.sample_photographs()
    if "astronaut" not in found:
        pytest.skip("scikit-image's astronaut is not available")
    return found


def test_found_on_people_and_sketches_not_on_the_cat(photos):
    for name in ("astronaut", "grace_hopper"):
        if name not in photos:
            continue
        for image in (photos[name], samples.sketch(photos[name])):
            found = landmarks.detect_landmarks(image)
            assert found is not None, name
            points, (_, x, _, w) = found
            eye_l, eye_r, nose, mouth_l, mouth_r = points
            assert eye_l[0] < eye_r[0] and mouth_l[0] < mouth_r[0]
            assert max(eye_l[1], eye_r[1]) < nose[1] < min(mouth_l[1], mouth_r[1])
            assert (x <= points[:, 0]).all() and (points[:, 0] <= x + w).all()
    if "chelsea" in photos:
        assert landmarks.detect_landmarks(photos["chelsea"]) is None
    assert landmarks.detect_landmarks(np.full((200, 200, 3), 128, np.uint8)) is None


def test_grey_and_16_bit_photographs_give_the_same_points(photos):
    image = photos["astronaut"]
    points = landmarks.detect_landmarks(image)[0]
    deep = image.astype(np.uint16) * 257
    np.testing.assert_allclose(landmarks.detect_landmarks(deep)[0], points)
    grey = face_crops.convert_channels(image, 1)
    assert np.abs(landmarks.detect_landmarks(grey)[0] - points).max() <= 3


def test_aligned_crops_have_the_landmarks_where_canonical_says(photos, rng):
    """A photograph moved by a random similarity (turned, scaled, shifted in a
    larger frame) is aligned back: detected again in the 128 x 128 crop, its
    landmarks lie within 2 pixels of where they are in the aligned crop of the
    photograph itself, and the eyes within 2 pixels of the canonical eyes."""
    image = photos["astronaut"]
    size = (128, 128)
    target = alignment.from_fractions(CANONICAL, size)
    reference = face_crops.align_face(image, size, "align", CANONICAL)
    assert reference.method == "landmarks"
    again = landmarks.detect_landmarks(reference.face)[0]
    for _ in range(2):
        angle, scale = rng.uniform(-0.3, 0.3), rng.uniform(1.3, 2.0)
        c, s = scale * np.cos(angle), scale * np.sin(angle)
        moved = np.array([[c, -s, rng.uniform(50, 150)], [s, c, rng.uniform(0, 80)]])
        photo = alignment.warp_to_crop(image, moved, (1024, 1024))
        photo = np.clip(np.rint(photo), 0, 255).astype(np.uint8)
        taken = face_crops.align_face(photo, size, "align", CANONICAL)
        assert taken.method == "landmarks"
        seen = landmarks.detect_landmarks(taken.face)[0]
        assert np.hypot(*(seen - again).T).max() <= 2.0
        assert np.hypot(*(seen[:2] - target[:2]).T).max() <= 2.0
        # the crop's transform takes the photograph's landmarks next to canonical
        in_photo = landmarks.detect_landmarks(photo)[0]
        np.testing.assert_allclose(
            taken.points, alignment.apply_transform(taken.matrix, in_photo)
        )
        assert np.hypot(*(taken.points - target).T).max() <= 6.0


def test_fallbacks_face_box_then_centre(photos):
    size = (64, 64)
    blank = np.full((90, 120, 3), 200, np.uint8)
    taken = face_crops.align_face(blank, size, "align", CANONICAL)
    assert taken.method == "centre" and taken.face.shape == (64, 64, 3)
    assert (
        face_crops.align_face(blank, size, "align", CANONICAL, centre_fallback=False)
        is None
    )
    # without canonical positions, align starts at the face box
    boxed = face_crops.align_face(photos["astronaut"], size, "align", None)
    assert boxed.method == "face box"
    whole = face_crops.align_face(np.zeros((64, 64, 3), np.uint8), size, "auto")
    assert whole.method == "whole image"
    np.testing.assert_allclose(whole.matrix, np.eye(2, 3), atol=1e-12)
