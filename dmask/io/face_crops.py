"""Faces in photographs: alignment, detection, square crops, resizing, channels.

A face is taken out of a photograph in one of these ways, tried in order
(:func:`align_face`): by its landmarks (:mod:`dmask.io.landmarks`), moved by a
similarity transform to where the training faces have theirs; by the square
around the face box the LBP cascade finds; by the photograph's centre. Every
way records its transform (photograph to crop), which paste-back inverts.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from dmask.core import alignment
from dmask.core import resize as core_resize
from dmask.errors import InputError, check_choice
from dmask.io import landmarks
from dmask.io.photographs import dtype_peak

__all__ = [
    "ALIGN_METHODS",
    "AlignedFace",
    "Box",
    "CASCADE_WINDOW",
    "CROP_MODES",
    "DETECT_SIDE",
    "LUMA",
    "LUMA_709",
    "PRECROPPED_FACTOR",
    "RESIZE_METHODS",
    "align_face",
    "warp_face",
    "center_box",
    "convert_channels",
    "crop_box",
    "crop_face",
    "crop_resize",
    "detect_face",
    "find_crop",
    "is_face_crop",
    "prepare_face",
    "resize_image",
]


#: How faces are cropped: ``align`` moves the face's landmarks to the canonical
#: positions (the training faces'), else takes the face box, else the centre;
#: ``auto`` takes an image that already is a face crop (see
#: :func:`is_face_crop`) whole and treats any other as ``align`` where
#: canonical positions are known, as ``detect`` where not; ``detect`` takes the
#: square around the face box (the LBP cascade); ``center`` the centred square;
#: ``none`` the whole image.
CROP_MODES: tuple[str, ...] = ("auto", "align", "detect", "center", "none")

#: How a face was taken, as :class:`AlignedFace` and the reports name it.
ALIGN_METHODS: tuple[str, ...] = ("landmarks", "face box", "centre", "whole image")


#: A square image at most this many times the output's longer side is taken
#: for a face crop already (``crop="auto"``).
PRECROPPED_FACTOR = 2


#: How images are resized: Lanczos (Pillow), or as OpenCV's ``INTER_LINEAR``
#: and ``INTER_AREA`` (:mod:`dmask.core.resize`).
RESIZE_METHODS: tuple[str, ...] = ("lanczos", "bilinear", "area")


#: Short side of the copy the detector works on (large photos are downscaled).
DETECT_SIDE = 400


#: The LBP cascade's window side: no smaller face can be found.
CASCADE_WINDOW = 24


#: Luminance weights (ITU-R 601-2, as Pillow's ``L`` conversion) for ``channels=1``.
LUMA = (0.299, 0.587, 0.114)


#: Luminance weights for detection and sketches (ITU-R 709, as scikit-image).
LUMA_709 = (0.2125, 0.7154, 0.0721)


Box = tuple[int, int, int, int]


def check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3) or 0 in image.shape:
        raise InputError(
            f"{name} must be (H, W) or (H, W, C) with C 1 or 3, got {image.shape}"
        )
    return image


def luminance_of(image: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """Luminance as float64 in the image's own units."""
    if image.shape[2] == 1:
        return image[..., 0].astype(np.float64)
    w = np.asarray(weights, dtype=np.float64)
    return image.astype(np.float64) @ w


@functools.cache
def _cascade() -> Any:
    """scikit-image's LBP frontal-face cascade, loaded once per process."""
    from skimage.data import lbp_frontal_face_cascade_filename
    from skimage.feature import Cascade

    return Cascade(lbp_frontal_face_cascade_filename())


def detect_face(image: np.ndarray) -> tuple[int, int, int, int] | None:
    """The largest frontal face in a photograph.

    Uses scikit-image's LBP frontal-face cascade on a grey copy whose short
    side is at most :data:`DETECT_SIDE` pixels.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, C)``.

    Returns
    -------
    tuple of int or None
        ``(y, x, h, w)`` of the face in ``image``'s pixels, or None.
    """
    from skimage.transform import resize

    image = check_image(image)
    gray = luminance_of(image, LUMA_709) / dtype_peak(image.dtype)
    height, width = gray.shape
    scale = min(1.0, DETECT_SIDE / min(height, width))
    if scale < 1.0:
        shape = (max(1, round(height * scale)), max(1, round(width * scale)))
        gray = resize(gray, shape, anti_aliasing=True)
    short = min(gray.shape)
    low = max(CASCADE_WINDOW, short // 8)
    if low > short:
        return None
    found = _cascade().detect_multi_scale(
        gray,
        scale_factor=1.2,
        step_ratio=1,
        min_size=(low, low),
        max_size=(short, short),
    )
    if not found:
        return None
    best = max(found, key=lambda d: (d["width"] * d["height"], -d["r"], -d["c"]))
    sy, sx = height / gray.shape[0], width / gray.shape[1]
    y = min(height - 1, max(0, round(best["r"] * sy)))
    x = min(width - 1, max(0, round(best["c"] * sx)))
    h = max(1, min(height - y, round(best["height"] * sy)))
    w = max(1, min(width - x, round(best["width"] * sx)))
    return int(y), int(x), int(h), int(w)


def _place(center: float, side: int, extent: int) -> int:
    start = math.floor(center - side / 2 + 0.5)
    if side <= extent:
        return min(max(start, 0), extent - side)
    return min(max(start, extent - side), 0)


def crop_box(
    shape: Sequence[int], box: tuple[int, int, int, int], margin: float = 0.25
) -> Box:
    """A square around a face box, enlarged by ``margin`` on each side.

    The square is shifted to lie inside the image where it fits. Along an
    axis where it is longer than the image it covers the whole axis and
    reaches beyond it (:func:`crop_face` fills that part with edge values).

    Parameters
    ----------
    shape : sequence of int
        Image shape, ``(H, W, ...)``.
    box : tuple of int
        Face box ``(y, x, h, w)``.
    margin : float
        Added on each side, as a fraction of the face box side.

    Returns
    -------
    tuple of int
        ``(y0, y1, x0, x1)``, with ``y1 - y0 == x1 - x0``.
    """
    height, width = int(shape[0]), int(shape[1])
    y, x, h, w = (int(v) for v in box)
    if margin < 0 or not math.isfinite(margin):
        raise InputError(f"margin must be a non-negative number, got {margin}")
    if h < 1 or w < 1:
        raise InputError(f"face box must have a positive size, got {box}")
    side = max(1, round(max(h, w) * (1 + 2 * margin)))
    y0 = _place(y + h / 2, side, height)
    x0 = _place(x + w / 2, side, width)
    return y0, y0 + side, x0, x0 + side


def center_box(shape: Sequence[int]) -> Box:
    """The largest centred square of an image: ``(y0, y1, x0, x1)``."""
    height, width = int(shape[0]), int(shape[1])
    side = min(height, width)
    y0, x0 = (height - side) // 2, (width - side) // 2
    return y0, y0 + side, x0, x0 + side


def crop_face(image: np.ndarray, box: Box) -> np.ndarray:
    """Cut ``box`` out of ``image``; parts outside it repeat the edge pixels."""
    y0, y1, x0, x1 = (int(v) for v in box)
    height, width = image.shape[:2]
    if y1 <= max(0, y0) or x1 <= max(0, x0) or y0 >= height or x0 >= width:
        raise InputError(f"crop box {box} does not overlap the {height}x{width} image")
    part = image[max(0, y0) : min(height, y1), max(0, x0) : min(width, x1)]
    pad = [(max(0, -y0), max(0, y1 - height)), (max(0, -x0), max(0, x1 - width))]
    if any(p for pair in pad for p in pair):
        pad += [(0, 0)] * (image.ndim - 2)
        part = np.pad(part, pad, mode="edge")
    return part


def is_face_crop(shape: Sequence[int], size: Sequence[int] | None = None) -> bool:
    """Whether an image of ``shape`` is taken for a face crop already.

    It is when it is square and its side is at most :data:`PRECROPPED_FACTOR`
    times the longer side of the output ``size`` (any square image when no
    size is given), as the aligned crops of face datasets are.
    """
    height, width = int(shape[0]), int(shape[1])
    if height != width:
        return False
    return size is None or height <= PRECROPPED_FACTOR * max(int(v) for v in size)


def find_crop(
    image: np.ndarray,
    crop: str = "detect",
    margin: float = 0.25,
    size: Sequence[int] | None = None,
) -> Box | None:
    """The crop box of a crop mode (see :data:`CROP_MODES`), None if no face.

    ``size`` is the output size, which ``auto`` compares the image with.
    """
    check_choice("crop", crop, CROP_MODES)
    if crop == "align":
        crop = "detect"
    height, width = image.shape[:2]
    if crop == "none" or (crop == "auto" and is_face_crop(image.shape, size)):
        return 0, height, 0, width
    if crop == "center":
        return center_box(image.shape)
    face = detect_face(image)
    return None if face is None else crop_box(image.shape, face, margin)


def check_resize(method: str) -> str:
    return check_choice("resize", method, RESIZE_METHODS)


def resize_image(
    image: np.ndarray, size: Sequence[int], method: str = "lanczos"
) -> np.ndarray:
    """Resize to ``size = (H, W)``, keeping the dtype.

    ``method`` is one of :data:`RESIZE_METHODS`: ``lanczos`` filters with
    Pillow's Lanczos (antialiased when shrinking); ``bilinear`` and ``area``
    are OpenCV's ``INTER_LINEAR`` and ``INTER_AREA``
    (:func:`dmask.core.resize.bilinear`, :func:`dmask.core.resize.area`).
    """
    image = check_image(image)
    height, width = core_resize.check_size(size)
    check_resize(method)
    if image.shape[:2] == (height, width):
        return image.copy()
    if image.dtype not in (np.uint8, np.uint16):
        raise InputError(f"image dtype must be uint8 or uint16, got {image.dtype}")
    if method == "bilinear":
        return core_resize.bilinear(image, (height, width))
    if method == "area":
        return core_resize.area(image, (height, width))
    if image.dtype == np.uint8:
        mode = "L" if image.shape[2] == 1 else "RGB"
        pil = Image.fromarray(image[..., 0] if mode == "L" else image, mode)
        out = np.asarray(pil.resize((width, height), Image.Resampling.LANCZOS))
        return out.reshape(height, width, image.shape[2])
    planes = []
    for c in range(image.shape[2]):
        pil = Image.fromarray(image[..., c].astype(np.float32), "F")
        planes.append(np.asarray(pil.resize((width, height), Image.Resampling.LANCZOS)))
    out = np.rint(np.clip(np.stack(planes, axis=-1), 0, 65535))
    return out.astype(np.uint16)


def convert_channels(image: np.ndarray, channels: int | None) -> np.ndarray:
    """1 (luminance), 3 (grey replicated) or None (as is) channels."""
    image = check_image(image)
    if channels is None or image.shape[2] == channels:
        return image
    if channels == 3:
        return np.repeat(image, 3, axis=2)
    if channels == 1:
        luma = np.rint(luminance_of(image, LUMA))
        return np.clip(luma, 0, dtype_peak(image.dtype)).astype(image.dtype)[..., None]
    raise InputError(f"channels must be 1, 3 or None, got {channels!r}")


def crop_resize(
    image: np.ndarray,
    box: Box,
    size: Sequence[int],
    channels: int | None = None,
    resize: str = "lanczos",
) -> np.ndarray:
    """Crop ``box`` (edge-padded), resize to ``size`` and convert the channels.

    ``resize`` is the method of :func:`resize_image`.
    """
    if channels not in (None, 1, 3):
        raise InputError(f"channels must be 1, 3 or None, got {channels!r}")
    image = check_image(image)
    face = resize_image(crop_face(image, box), size, resize)
    return convert_channels(face, channels)


def prepare_face(
    image: np.ndarray,
    size: tuple[int, int],
    crop: str = "detect",
    margin: float = 0.25,
    channels: int | None = None,
    resize: str = "lanczos",
) -> np.ndarray | None:
    """Crop a face photograph and resize it for a dataset.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W, C)`` uint8 or uint16, as from :func:`read_image`.
    size : tuple of int
        Output ``(H, W)``.
    crop : {"detect", "auto", "center", "none"}
        The detected face's square enlarged by ``margin``; the whole image if
        it is a face crop already (:func:`is_face_crop`), else as ``detect``;
        the largest centred square; or the whole image (only resized).
    margin : float
        Margin around a detected face, a fraction of its side on each side.
    channels : {1, 3, None}
        Luminance, grey replicated to RGB, or as read.
    resize : {"lanczos", "bilinear", "area"}
        How the crop is resized (:func:`resize_image`).

    Returns
    -------
    numpy.ndarray or None
        ``(H, W, C)`` of the input dtype; None when ``crop`` is ``detect`` or
        ``auto`` and no face is found.
    """
    taken = align_face(
        image, size, crop, None, margin, channels, resize, centre_fallback=False
    )
    return None if taken is None else taken.face


@dataclass
class AlignedFace:
    """A face taken out of a photograph, and how.

    Attributes
    ----------
    face : numpy.ndarray
        ``(H, W, C)`` crop, the photograph's dtype.
    matrix : numpy.ndarray
        ``(2, 3)`` transform from the photograph's pixels to the crop's.
    method : str
        One of :data:`ALIGN_METHODS`.
    points : numpy.ndarray or None
        The landmarks in the crop's pixels (``(5, 2)`` ``(x, y)``), when found.
    """

    face: np.ndarray
    matrix: np.ndarray
    method: str
    points: np.ndarray | None = None


def _canonical(
    canonical: np.ndarray | None, size: tuple[int, int]
) -> np.ndarray | None:
    if canonical is None:
        return None
    fractions = np.asarray(canonical, dtype=np.float64)
    if fractions.shape != (len(alignment.LANDMARKS), 2):
        raise InputError(
            f"canonical landmarks must be {len(alignment.LANDMARKS)} (x, y) "
            f"fractions, got shape {fractions.shape}"
        )
    return alignment.from_fractions(fractions, size)


def align_face(
    image: np.ndarray,
    size: tuple[int, int],
    crop: str = "align",
    canonical: np.ndarray | None = None,
    margin: float = 0.25,
    channels: int | None = None,
    resize: str = "lanczos",
    centre_fallback: bool = True,
) -> AlignedFace | None:
    """Take the face out of a photograph at ``size`` (the one way ingest and apply do).

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W[, C])`` uint8 or uint16, as read.
    size : tuple of int
        The crop's ``(H, W)``.
    crop : str
        One of :data:`CROP_MODES`.
    canonical : numpy.ndarray, optional
        ``(5, 2)`` landmark positions as fractions of the crop's width and
        height (:data:`dmask.core.alignment.LANDMARKS` order): where the
        training faces have them. Without, ``align`` starts at the face box.
    margin, channels, resize
        As :func:`prepare_face` (the face box's margin, the channels, how box
        crops are resized; aligned faces are sampled bilinearly, smoothed
        first where they shrink).
    centre_fallback : bool
        ``align`` and ``auto`` take the centre where no face is found
        (False: None is returned instead).

    Returns
    -------
    AlignedFace or None
        None when no face is found and the mode has no fallback left.
    """
    image = check_image(image)
    size = core_resize.check_size(size)
    check_choice("crop", crop, CROP_MODES)
    check_resize(resize)
    if channels not in (None, 1, 3):
        raise InputError(f"channels must be 1, 3 or None, got {channels!r}")
    target = _canonical(canonical, size)
    precropped = crop == "auto" and is_face_crop(image.shape, size)
    centre_fallback = centre_fallback and crop in ("align", "auto")
    if crop == "auto" and not precropped:
        crop = "align" if target is not None else "detect"
    if crop == "align" and target is not None:
        found = landmarks.detect_landmarks(image)
        if found is not None:
            face, matrix = warp_face(image, found[0], canonical, size, channels)
            points = alignment.apply_transform(matrix, found[0])
            return AlignedFace(face, matrix, "landmarks", points)
    if precropped or crop == "none":
        box, method = (0, image.shape[0], 0, image.shape[1]), "whole image"
    elif crop == "center":
        box, method = center_box(image.shape), "centre"
    else:
        face_box = detect_face(image)
        if face_box is not None:
            box, method = crop_box(image.shape, face_box, margin), "face box"
        elif centre_fallback:
            box, method = center_box(image.shape), "centre"
        else:
            return None
    face = crop_resize(image, box, size, channels, resize)
    return AlignedFace(face, alignment.box_transform(box, size), method)


def warp_face(
    image: np.ndarray,
    points: np.ndarray,
    canonical: np.ndarray,
    size: tuple[int, int],
    channels: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A face moved so its landmarks go where ``canonical`` says.

    ``points`` are the photograph's ``(5, 2)`` landmarks, ``canonical`` their
    place as fractions of the crop (:func:`align_face`). The similarity that
    takes one to the other in the least-squares sense
    (:func:`dmask.core.alignment.similarity`) resamples the photograph
    (:func:`dmask.core.alignment.warp_to_crop`), rounded to its dtype.

    Returns
    -------
    face, matrix : numpy.ndarray
        The ``(H, W, C)`` crop and its ``(2, 3)`` transform.
    """
    target = _canonical(canonical, size)
    assert target is not None
    matrix = alignment.similarity(np.asarray(points, dtype=np.float64), target)
    warped = alignment.warp_to_crop(image, matrix, size)
    face = np.clip(np.rint(warped), 0, dtype_peak(image.dtype)).astype(image.dtype)
    return convert_channels(face, channels), matrix
