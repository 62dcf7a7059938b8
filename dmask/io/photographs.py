"""Photographs: reading, face detection, square crops, resizing, sketches.

numpy, Pillow and scikit-image only (no Dask, no Zarr). Images are
``(H, W, C)`` numpy arrays with ``C`` 1 or 3 and dtype uint8 or uint16.
A crop box is ``(y0, y1, x0, x1)``; a face box ``(y, x, h, w)``.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from dmask.errors import InputError

__all__ = [
    "CROP_MODES",
    "IMAGE_SUFFIXES",
    "ImageReadError",
    "center_box",
    "convert_channels",
    "crop_box",
    "crop_face",
    "crop_resize",
    "detect_face",
    "find_crop",
    "image_files",
    "prepare_face",
    "read_image",
    "resize_image",
    "sample_photographs",
    "sketch",
]

logger = logging.getLogger(__name__)

#: How faces are cropped: found by the cascade, the centred square, or not at all.
CROP_MODES: tuple[str, ...] = ("detect", "center", "none")
#: Short side of the copy the detector works on (large photos are downscaled).
DETECT_SIDE = 400
#: The LBP cascade's window side: no smaller face can be found.
CASCADE_WINDOW = 24
#: Luminance weights (ITU-R 601-2, as Pillow's ``L`` conversion) for ``channels=1``.
LUMA = (0.299, 0.587, 0.114)
#: Luminance weights for detection and sketches (ITU-R 709, as scikit-image).
LUMA_709 = (0.2125, 0.7154, 0.0721)

Box = tuple[int, int, int, int]


#: File name endings read as images (case-insensitive).
IMAGE_SUFFIXES = frozenset(
    ".png .jpg .jpeg .bmp .tif .tiff .gif .webp .ppm .pgm .pnm".split()
)


def image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder``, recursively, sorted; hidden ones skipped."""
    root = Path(folder)
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


class ImageReadError(InputError):
    """A file is missing, not an image, corrupt, truncated or of unsupported kind.

    ``reason`` holds the message without the file name.
    """

    reason: str = ""


def _read_error(path: str, reason: str) -> ImageReadError:
    error = ImageReadError(f"cannot read image {path}: {reason}")
    error.reason = reason
    return error


# ------------------------------------------------------------------- reading


def _reason(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not an image file Pillow can read"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).splitlines()[0].strip() if str(exc).strip() else ""
    return text or type(exc).__name__


def _replace_rawmode(image: Image.Image, rawmode: str) -> None:
    tiles = []
    for tile in image.tile:
        args = tile.args
        if isinstance(args, tuple):
            args = (rawmode, *args[1:])
        else:
            args = rawmode
        tiles.append(tile._replace(args=args))
    image.tile = tiles


def _png16_rawmode(image: Image.Image) -> str | None:
    """The raw mode of a 16-bit RGB(A) PNG that Pillow would reduce to 8 bits."""
    if image.format != "PNG" or image.mode not in ("RGB", "RGBA"):
        return None
    for tile in image.tile:
        args = tile.args[0] if isinstance(tile.args, tuple) else tile.args
        if args in ("RGB;16B", "RGBA;16B"):
            return args
    return None


def _low_bytes(path: str, rawmode: str) -> np.ndarray:
    """Decode a 16-bit PNG again, keeping each sample's low byte."""
    with Image.open(path) as image:
        _replace_rawmode(image, rawmode.replace(";16B", ";16L"))
        image.load()
        return np.asarray(image)


def _composite_white(colour: np.ndarray, alpha: np.ndarray, peak: int) -> np.ndarray:
    """Colour over a white background, in integers of the same range."""
    c = colour.astype(np.int64)
    a = alpha.astype(np.int64)[..., None]
    out = (c * a + peak * (peak - a) + peak // 2) // peak
    return out.astype(colour.dtype)


def _as_array(image: Image.Image, path: str, rawmode: str | None = None) -> np.ndarray:
    """Pixels of a decoded Pillow image as ``(H, W, C)`` uint8 or uint16.

    ``rawmode`` names a 16-bit RGB(A) PNG's raw mode (found before decoding).
    """
    mode = image.mode
    if rawmode is not None:
        high = np.asarray(image).astype(np.uint16)
        low = _low_bytes(path, rawmode).astype(np.uint16)
        data = (high << 8) | low
        if data.shape[-1] == 4:
            return _composite_white(data[..., :3], data[..., 3], 65535)
        return data
    if mode in ("1", "L"):
        return np.asarray(image.convert("L"))[..., None]
    if mode.startswith("I;16"):
        return np.asarray(image).astype(np.uint16)[..., None]
    if mode == "I":
        data = np.asarray(image)
        if data.size and (data.min() < 0 or data.max() > 65535):
            raise _read_error(path, "32-bit pixel values outside 0-65535")
        return data.astype(np.uint16)[..., None]
    if mode == "F":
        raise _read_error(path, "floating-point pixels are not supported")
    if mode in ("LA", "La", "PA") or (mode == "P" and "transparency" in image.info):
        if mode in ("LA", "La"):
            data = np.asarray(image.convert("LA"))
            return _composite_white(data[..., :1], data[..., 1], 255)
        data = np.asarray(image.convert("RGBA"))
        return _composite_white(data[..., :3], data[..., 3], 255)
    if mode in ("RGBA", "RGBa"):
        data = np.asarray(image.convert("RGBA"))
        return _composite_white(data[..., :3], data[..., 3], 255)
    return np.asarray(image.convert("RGB"))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a photograph as ``(H, W, C)`` pixels, C 1 or 3.

    16-bit files keep 16 bits (uint16), others are uint8. Palette, CMYK and
    other colour modes become RGB; transparent images are laid over white;
    the EXIF orientation is applied. The whole file is decoded, so truncated
    files are caught here.

    Parameters
    ----------
    path : str or path
        Any image Pillow reads (PNG, JPEG, TIFF, BMP, ...).

    Returns
    -------
    numpy.ndarray
        ``(H, W, C)`` uint8 or uint16.

    Raises
    ------
    ImageReadError
        The file is missing, not an image, corrupt or truncated.
    """
    path = os.fspath(path)
    try:
        with Image.open(path) as opened:
            rawmode = _png16_rawmode(opened)
            opened.load()
            if rawmode is not None:
                return _orient(_as_array(opened, path, rawmode), opened)
            image = ImageOps.exif_transpose(opened)
            return np.ascontiguousarray(_as_array(image, path))
    except ImageReadError:
        raise
    except (
        OSError,
        ValueError,
        SyntaxError,
        EOFError,
        struct.error,
        Image.DecompressionBombError,
    ) as exc:
        raise _read_error(path, _reason(exc)) from exc


def _orient(data: np.ndarray, image: Image.Image) -> np.ndarray:
    """Apply an EXIF orientation to an array (for pixels Pillow cannot hold)."""
    orientation = image.getexif().get(0x0112, 1)
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.rot90(a, 1)[::-1, ::-1],
        8: lambda a: np.rot90(a, 1),
    }
    return np.ascontiguousarray(ops.get(orientation, lambda a: a)(data))


# ------------------------------------------------------------------ detection


def _check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3) or 0 in image.shape:
        raise InputError(
            f"{name} must be (H, W) or (H, W, C) with C 1 or 3, got {image.shape}"
        )
    return image


def _luminance(image: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """Luminance as float64 in the image's own units."""
    if image.shape[2] == 1:
        return image[..., 0].astype(np.float64)
    w = np.asarray(weights, dtype=np.float64)
    return image.astype(np.float64) @ w


def _peak(dtype: np.dtype) -> float:
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0


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

    image = _check_image(image)
    gray = _luminance(image, LUMA_709) / _peak(image.dtype)
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


# ---------------------------------------------------------------------- crops


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


def find_crop(
    image: np.ndarray, crop: str = "detect", margin: float = 0.25
) -> Box | None:
    """The crop box of a crop mode (see :data:`CROP_MODES`), None if no face."""
    if crop not in CROP_MODES:
        raise InputError(f"crop must be one of {', '.join(CROP_MODES)}, got {crop!r}")
    height, width = image.shape[:2]
    if crop == "none":
        return 0, height, 0, width
    if crop == "center":
        return center_box(image.shape)
    face = detect_face(image)
    return None if face is None else crop_box(image.shape, face, margin)


# -------------------------------------------------------- resizing and colour


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError):
        raise InputError(f"size must be (height, width), got {size!r}") from None
    if height < 1 or width < 1:
        raise InputError(f"size must be positive, got {height}x{width}")
    return height, width


def resize_image(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Resize to ``size = (H, W)`` with Lanczos filtering, keeping the dtype."""
    image = _check_image(image)
    height, width = _check_size(size)
    if image.shape[:2] == (height, width):
        return image.copy()
    if image.dtype == np.uint8:
        mode = "L" if image.shape[2] == 1 else "RGB"
        pil = Image.fromarray(image[..., 0] if mode == "L" else image, mode)
        out = np.asarray(pil.resize((width, height), Image.Resampling.LANCZOS))
        return out.reshape(height, width, image.shape[2])
    if image.dtype != np.uint16:
        raise InputError(f"image dtype must be uint8 or uint16, got {image.dtype}")
    planes = []
    for c in range(image.shape[2]):
        pil = Image.fromarray(image[..., c].astype(np.float32), "F")
        planes.append(np.asarray(pil.resize((width, height), Image.Resampling.LANCZOS)))
    out = np.rint(np.clip(np.stack(planes, axis=-1), 0, 65535))
    return out.astype(np.uint16)


def convert_channels(image: np.ndarray, channels: int | None) -> np.ndarray:
    """1 (luminance), 3 (grey replicated) or None (as is) channels."""
    image = _check_image(image)
    if channels is None or image.shape[2] == channels:
        return image
    if channels == 3:
        return np.repeat(image, 3, axis=2)
    if channels == 1:
        luma = np.rint(_luminance(image, LUMA))
        return np.clip(luma, 0, _peak(image.dtype)).astype(image.dtype)[..., None]
    raise InputError(f"channels must be 1, 3 or None, got {channels!r}")


def crop_resize(
    image: np.ndarray,
    box: Box,
    size: Sequence[int],
    channels: int | None = None,
) -> np.ndarray:
    """Crop ``box`` (edge-padded), resize to ``size`` and convert the channels."""
    if channels not in (None, 1, 3):
        raise InputError(f"channels must be 1, 3 or None, got {channels!r}")
    image = _check_image(image)
    return convert_channels(resize_image(crop_face(image, box), size), channels)


def prepare_face(
    image: np.ndarray,
    size: tuple[int, int],
    crop: str = "detect",
    margin: float = 0.25,
    channels: int | None = None,
) -> np.ndarray | None:
    """Crop a face photograph and resize it for a dataset.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W, C)`` uint8 or uint16, as from :func:`read_image`.
    size : tuple of int
        Output ``(H, W)``.
    crop : {"detect", "center", "none"}
        The detected face's square enlarged by ``margin``, the largest centred
        square, or the whole image (only resized).
    margin : float
        Margin around a detected face, a fraction of its side on each side.
    channels : {1, 3, None}
        Luminance, grey replicated to RGB, or as read.

    Returns
    -------
    numpy.ndarray or None
        ``(H, W, C)`` of the input dtype; None when ``crop="detect"`` finds no
        face.
    """
    image = _check_image(image)
    _check_size(size)
    if channels not in (None, 1, 3):
        raise InputError(f"channels must be 1, 3 or None, got {channels!r}")
    box = find_crop(image, crop, margin)
    if box is None:
        return None
    return crop_resize(image, box, size, channels)


# ---------------------------------------------------------------------- misc


def sketch(image: np.ndarray) -> np.ndarray:
    """A pencil-sketch rendering of a photograph.

    Grey, inverted and blurred copy colour-dodged onto the grey image, then
    darkened a little for contrast. Deterministic.

    Returns
    -------
    numpy.ndarray
        ``(H, W, 1)`` uint8.
    """
    from skimage.filters import gaussian

    image = _check_image(image)
    gray = _luminance(image, LUMA_709) * (255.0 / _peak(image.dtype))
    sigma = max(1.0, min(gray.shape) / 60.0)
    blurred = gaussian(255.0 - gray, sigma=sigma, preserve_range=True)
    room = np.maximum(255.0 - blurred, 1e-6)
    dodge = np.minimum(255.0, gray * 255.0 / room)
    out = 255.0 * (dodge / 255.0) ** 1.5
    return np.rint(np.clip(out, 0, 255)).astype(np.uint8)[..., None]


def sample_photographs() -> dict[str, np.ndarray]:
    """Real photographs shipped by installed packages, as ``(H, W, 3)`` uint8.

    ``astronaut`` and ``chelsea`` (a cat) from scikit-image, ``grace_hopper``
    from matplotlib; any that is unavailable is left out with a warning.
    """
    photos: dict[str, np.ndarray] = {}

    def astronaut() -> np.ndarray:
        from skimage.data import astronaut

        return astronaut()

    def chelsea() -> np.ndarray:
        from skimage.data import chelsea

        return chelsea()

    def grace_hopper() -> np.ndarray:
        from matplotlib import cbook

        return read_image(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))

    for name, load in (
        ("astronaut", astronaut),
        ("chelsea", chelsea),
        ("grace_hopper", grace_hopper),
    ):
        try:
            photos[name] = _check_image(np.asarray(load()))
        except Exception as exc:  # missing package or data file
            logger.warning("sample photograph %s unavailable: %s", name, _reason(exc))
    return photos
