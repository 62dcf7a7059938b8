"""Facial landmarks in photographs: dlib's HOG face detector and 68-point model.

The detector ships in ``dlib-bin`` (dlib's own frontal-face HOG detector) and
the landmark model in ``face_recognition_models``
(``shape_predictor_68_face_landmarks.dat``, trained on iBUG 300-W), both from
PyPI: nothing is downloaded at run time. Of the 68 points an alignment uses
five (:data:`dmask.core.alignment.LANDMARKS`): the two eye centres (means of
each eye's six contour points), the base of the nose (point 33) and the mouth
corners (48, 54).

dlib's detector objects are not safe to share between threads, so each thread
builds its own (a few milliseconds); the landmark model is shared.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import threading
from typing import Any

import numpy as np

from dmask.io.photographs import dtype_peak

__all__ = [
    "DETECT_SIDE",
    "available",
    "detect_landmarks",
    "missing_reason",
]

logger = logging.getLogger(__name__)

#: Short side of the copy the detector looks at (large photos are downscaled).
DETECT_SIDE = 400

#: The 68-point model's indices of the five alignment points.
_EYE_LEFT, _EYE_RIGHT = range(36, 42), range(42, 48)
_NOSE, _MOUTH_LEFT, _MOUTH_RIGHT = 33, 48, 54

_local = threading.local()


@functools.cache
def _model_file() -> str | None:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(
        next(iter(spec.submodule_search_locations)),
        "models",
        "shape_predictor_68_face_landmarks.dat",
    )
    return path if os.path.isfile(path) else None


@functools.cache
def missing_reason() -> str | None:
    """Why landmarks cannot be found here (a missing package), or None."""
    if importlib.util.find_spec("dlib") is None:
        return "dlib is not installed (pip install dlib-bin)"
    if _model_file() is None:
        return (
            "the landmark model is not installed (pip install face_recognition_models)"
        )
    return None


def available() -> bool:
    """Whether :func:`detect_landmarks` can run in this environment."""
    return missing_reason() is None


@functools.cache
def _predictor() -> Any:
    import dlib

    logger.debug("loading the landmark model %s", _model_file())
    return dlib.shape_predictor(_model_file())


def _detector() -> Any:
    found = getattr(_local, "detector", None)
    if found is None:
        import dlib

        found = _local.detector = dlib.get_frontal_face_detector()
    return found


def _as_uint8(image: np.ndarray) -> np.ndarray:
    """An 8-bit copy dlib accepts: ``(H, W)`` grey or ``(H, W, 3)`` RGB."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.dtype != np.uint8:
        peak = dtype_peak(image.dtype)
        image = np.rint(np.clip(image.astype(np.float64) / peak, 0, 1) * 255)
        image = image.astype(np.uint8)
    return np.ascontiguousarray(image)


def _downscaled(image: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    from PIL import Image

    height, width = image.shape[:2]
    scale = min(1.0, side / min(height, width))
    if scale >= 1.0:
        return image, 1.0
    shape = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = np.asarray(Image.fromarray(image).resize(shape, Image.Resampling.BOX))
    return np.ascontiguousarray(small), height / small.shape[0]


def detect_landmarks(
    image: np.ndarray,
) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
    """The five alignment points of the largest frontal face, or None.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, C)`` with C 1 or 3, uint8 or uint16 (as read).

    Returns
    -------
    tuple or None
        ``(points, box)``: ``points`` ``(5, 2)`` float64 ``(x, y)`` in the
        image's pixels, in :data:`dmask.core.alignment.LANDMARKS` order;
        ``box`` the face box ``(y, x, h, w)``. None when no face is found or no
        detector is installed (:func:`missing_reason`).
    """
    if not available():
        return None
    import dlib

    full = _as_uint8(image)
    small, factor = _downscaled(full, DETECT_SIDE)
    detector = _detector()
    found = detector(small, 0)
    if not len(found):  # small faces: look again on a twice-enlarged copy
        found = detector(small, 1)
    if not len(found):
        return None
    best = max(found, key=lambda r: (r.width() * r.height(), -r.top(), -r.left()))
    rect = dlib.rectangle(
        round(best.left() * factor),
        round(best.top() * factor),
        round(best.right() * factor),
        round(best.bottom() * factor),
    )
    shape = _predictor()(full, rect)
    pts = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
    points = np.stack(
        [
            pts[list(_EYE_LEFT)].mean(axis=0),
            pts[list(_EYE_RIGHT)].mean(axis=0),
            pts[_NOSE],
            pts[_MOUTH_LEFT],
            pts[_MOUTH_RIGHT],
        ]
    )
    height, width = full.shape[:2]
    y = int(np.clip(rect.top(), 0, height - 1))
    x = int(np.clip(rect.left(), 0, width - 1))
    h = int(max(1, min(height - y, rect.height())))
    w = int(max(1, min(width - x, rect.width())))
    return points, (y, x, h, w)
