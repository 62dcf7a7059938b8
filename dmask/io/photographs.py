"""Photographs as files: reading them (8 or 16 bit, grey, RGB, alpha, EXIF)."""

from __future__ import annotations

import functools
import io
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps

from dmask.errors import InputError, check_choice
from dmask.io.atomic import atomic_path
from dmask.io.locations import as_path

__all__ = [
    "DISPLAY_MODES",
    "IMAGE_SUFFIXES",
    "ImageReadError",
    "decode_image",
    "encode_png",
    "png_bytes",
    "image_files",
    "read_file",
    "read_image",
    "stretch_uint8",
    "to_uint8",
    "write_file",
    "write_png",
]


#: File name endings read as images (case-insensitive).
IMAGE_SUFFIXES = frozenset(
    ".png .jpg .jpeg .bmp .tif .tiff .gif .webp .ppm .pgm .pnm".split()
)


def image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder``, recursively, sorted; hidden ones skipped."""
    root = as_path(folder)
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


def failure_reason(exc: BaseException) -> str:
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


def _low_bytes(source: IO[bytes], rawmode: str) -> np.ndarray:
    """Decode a 16-bit PNG again, keeping each sample's low byte."""
    source.seek(0)
    with Image.open(source) as image:
        _replace_rawmode(image, rawmode.replace(";16B", ";16L"))
        image.load()
        return np.asarray(image)


def _composite_white(colour: np.ndarray, alpha: np.ndarray, peak: int) -> np.ndarray:
    """Colour over a white background, in integers of the same range."""
    c = colour.astype(np.int64)
    a = alpha.astype(np.int64)[..., None]
    out = (c * a + peak * (peak - a) + peak // 2) // peak
    return out.astype(colour.dtype)


def _as_array(
    image: Image.Image,
    source: IO[bytes],
    rawmode: str | None = None,
    name: str = "<bytes>",
) -> np.ndarray:
    """Pixels of a decoded Pillow image as ``(H, W, C)`` uint8 or uint16.

    ``rawmode`` names a 16-bit RGB(A) PNG's raw mode (found before decoding),
    whose low bytes are decoded again from ``source``; ``name`` is the file.
    """
    mode = image.mode
    if rawmode is not None:
        high = np.asarray(image).astype(np.uint16)
        low = _low_bytes(source, rawmode).astype(np.uint16)
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
            raise _read_error(name, "32-bit pixel values outside 0-65535")
        return data.astype(np.uint16)[..., None]
    if mode == "F":
        raise _read_error(name, "floating-point pixels are not supported")
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
        Any image Pillow reads (PNG, JPEG, TIFF, BMP, ...), a local path or an
        fsspec URL (``s3://bucket/face.jpg``), read whole before decoding.

    Returns
    -------
    numpy.ndarray
        ``(H, W, C)`` uint8 or uint16.

    Raises
    ------
    ImageReadError
        The file is missing, not an image, corrupt or truncated.
    """
    return decode_image(read_file(path), os.fspath(path))


def read_file(path: str | os.PathLike) -> bytes:
    """A file's bytes, local or at an fsspec URL.

    Raises
    ------
    ImageReadError
        The file is missing or cannot be read.
    """
    path = os.fspath(path)
    try:
        if "://" in path:
            import fsspec

            with fsspec.open(path, "rb") as handle:
                return bytes(handle.read())
        with open(path, "rb") as handle:
            return handle.read()
    except (OSError, ValueError) as exc:
        raise _read_error(path, failure_reason(exc)) from exc


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """The pixels of an image file's bytes, as :func:`read_image` (``name``
    is the file, for the error).

    Raises
    ------
    ImageReadError
        The bytes are not an image, corrupt or truncated.
    """
    try:
        source = io.BytesIO(data)
        with Image.open(source) as opened:
            fast = _decode_fast(data, opened)
            if fast is not None:
                return fast
            rawmode = _png16_rawmode(opened)
            opened.load()
            if rawmode is not None:
                return _orient(_as_array(opened, source, rawmode, name), opened)
            image = ImageOps.exif_transpose(opened)
            return np.ascontiguousarray(_as_array(image, source, name=name))
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
        raise _read_error(name, failure_reason(exc)) from exc


def _jpeg_decoder() -> Callable[..., np.ndarray] | None:
    """libjpeg-turbo's decoder through its TurboJPEG API (``simplejpeg``, a
    dependency), None where it is not installed."""
    try:
        import simplejpeg
    except ImportError:  # a platform without simplejpeg's wheels
        return None
    return simplejpeg.decode_jpeg


_decode_jpeg = _jpeg_decoder()


def _decode_fast(data: bytes, opened: Image.Image) -> np.ndarray | None:
    """The pixels of an 8-bit RGB or grey JPEG by :data:`_decode_jpeg`, twice
    as fast as Pillow's decoding (which reads the same library's output
    through more layers), the same pixels; None for any other file: other
    formats and modes, a JPEG to be turned (EXIF or XMP orientation), one the
    decoder refuses (it raises on any libjpeg warning: Pillow then decodes
    it, or names what is wrong)."""
    if (
        _decode_jpeg is None
        or opened.format != "JPEG"
        or opened.mode not in ("RGB", "L")
        or opened.getexif().get(0x0112, 1) != 1
    ):
        return None
    try:
        pixels = _decode_jpeg(
            data, colorspace="RGB" if opened.mode == "RGB" else "GRAY"
        )
    except ValueError:
        return None
    if pixels.shape[:2] != (opened.height, opened.width):
        return None
    return pixels


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


def dtype_peak(dtype: np.dtype) -> float:
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0


#: How values become 8-bit pixels for display: ``clip`` to ``[0, peak]``, or
#: ``stretch`` each image's own range to 0-255 (:func:`stretch_uint8`).
DISPLAY_MODES: tuple[str, ...] = ("clip", "stretch")


def stretch_uint8(values: np.ndarray) -> np.ndarray:
    """One image's values stretched to 8-bit pixels, as OpenCV's min-max normalize.

    The minimum over all pixels and channels becomes 0 and the maximum 255:
    ``rint(v * s + t)`` with ``s = 255 / (max - min)`` and ``t = -min * s``,
    rounded half to even and saturated, as ``cv2.normalize(v, None, 0, 255,
    cv2.NORM_MINMAX)`` followed by a conversion to ``uint8``. A constant image
    is black. Non-finite values are left out of the range; NaN and -inf become
    0, +inf 255.
    """
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    scale, shift = 0.0, 0.0
    if finite.any():
        low, high = values[finite].min(), values[finite].max()
        if high - low > np.finfo(np.float64).eps:
            scale = 255.0 / (high - low)
            shift = -low * scale
    with np.errstate(invalid="ignore"):
        out = np.where(finite, values * scale + shift, 0.0)
    out[np.isposinf(values)] = 255.0
    return np.rint(np.clip(out, 0.0, 255.0)).astype(np.uint8)


def to_uint8(
    values: np.ndarray, peak: float = 1.0, display: str = "clip"
) -> np.ndarray:
    """Values on ``[0, peak]`` as 8-bit pixels.

    ``display`` is one of :data:`DISPLAY_MODES`: ``clip`` clips to
    ``[0, peak]`` and rounds (NaN is black); ``stretch`` maps the values'
    own minimum and maximum to 0 and 255 (:func:`stretch_uint8`; ``peak`` is
    not used).
    """
    check_display(display)
    if display == "stretch":
        return stretch_uint8(values)
    values = np.asarray(values)
    if values.dtype == np.uint8 and peak == 255:  # already 8-bit pixels
        return values
    if values.dtype == np.uint16 and peak == 65535:  # rint(v / 257), exactly
        return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)
    scaled = np.divide(values, peak, dtype=np.float64)
    # clipped to [0, 1] in place, NaN to 0 (fmax and fmin drop NaN; inf clips)
    np.fmax(scaled, 0.0, out=scaled)
    np.fmin(scaled, 1.0, out=scaled)
    np.multiply(scaled, 255.0, out=scaled)
    return np.rint(scaled, out=scaled).astype(np.uint8)


def check_display(display: str) -> str:
    return check_choice("display", display, DISPLAY_MODES)


def write_png(
    path: str | os.PathLike,
    values: np.ndarray,
    peak: float = 1.0,
    display: str = "clip",
) -> None:
    """Write ``(H, W, C)`` values on ``[0, peak]`` as an 8-bit PNG, atomically.

    ``display`` says how values become pixels (:func:`to_uint8`). One channel
    is written as grey. The file appears whole at ``path`` or not at all (a
    temporary name, then a rename); missing folders are made.
    """
    write_file(path, encode_png(values, peak, display))


def encode_png(values: np.ndarray, peak: float = 1.0, display: str = "clip") -> bytes:
    """The bytes of an 8-bit PNG of ``(H, W, C)`` values on ``[0, peak]``
    (:func:`write_png`)."""
    return png_bytes(to_uint8(values, peak, display))


#: PNG colour types by channels: grey, grey and alpha, RGB, RGBA.
_PNG_COLOUR = {1: 0, 2: 4, 3: 2, 4: 6}
#: Bytes of compressed data per IDAT chunk (a chunk holds fewer than 2**31).
_IDAT_BYTES = 2**30


def _zlib_deflate(data: bytes) -> bytes:
    """A zlib stream: level 1, run-length matches only (as fast as zlib goes
    on filtered image rows, and smaller than its level 1's default)."""
    stream = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    return stream.compress(data) + stream.flush()


def _compressor() -> tuple[str, Callable[[bytes], bytes]]:
    """The fastest zlib stream compressor at hand: ISA-L's level 1 (``isal``,
    a dependency: 3 times as fast as :func:`_zlib_deflate`, about as small),
    else :func:`_zlib_deflate`."""
    try:
        from isal import isal_zlib
    except ImportError:  # a platform without isal's wheels
        return "zlib", _zlib_deflate
    return "isal", functools.partial(isal_zlib.compress, level=1)


_DEFLATE_NAME, _deflate = _compressor()


def _chunk(kind: bytes, body: bytes | memoryview) -> bytes:
    crc = zlib.crc32(body, zlib.crc32(kind))
    return struct.pack(">I", len(body)) + kind + bytes(body) + struct.pack(">I", crc)


def png_bytes(pixels: np.ndarray) -> bytes:
    """An 8-bit PNG file of ``(H, W)`` or ``(H, W, C)`` uint8 pixels, C 1 to 4.

    Every row is stored with PNG's ``Up`` filter (its difference from the row
    above), compressed by ISA-L at level 1: 7 times as fast as Pillow's
    encoder at its fastest level (``compress_level=1``, adaptive filters) on
    128 x 128 RGB faces, and about as small. Any PNG reader gives back the
    same pixels.
    """
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise InputError(f"PNG pixels must be uint8, got {pixels.dtype}")
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.ndim != 3 or pixels.shape[2] not in _PNG_COLOUR:
        raise InputError(f"PNG pixels must be (H, W[, 1-4]), got {pixels.shape}")
    height, width, channels = pixels.shape
    rows = pixels.reshape(height, width * channels)
    filtered = np.empty((height, width * channels + 1), np.uint8)
    filtered[:, 0] = 2  # Up: each byte less the one above it, modulo 256
    filtered[:1, 1:] = rows[:1]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    data = _deflate(filtered.tobytes())
    header = struct.pack(">IIBBBBB", width, height, 8, _PNG_COLOUR[channels], 0, 0, 0)
    view = memoryview(data)
    idat = [
        _chunk(b"IDAT", view[i : i + _IDAT_BYTES])
        for i in range(0, max(len(data), 1), _IDAT_BYTES)
    ]
    return b"".join(
        [b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", header), *idat, _chunk(b"IEND", b"")]
    )


#: How :func:`write_file` creates its temporary file: new, for writing (and,
#: as every descriptor Python opens, not inherited by child processes).
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)


def write_file(path: str | os.PathLike, data: bytes) -> None:
    """Write a local file atomically: whole at ``path`` or not at all (a
    temporary name, then a rename); missing folders are made."""
    path = os.fspath(path)
    with atomic_path(path) as partial:
        try:
            handle = os.open(partial, _CREATE, 0o666)
        except FileNotFoundError:  # the folder is not there yet
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            handle = os.open(partial, _CREATE, 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(handle, view) :]
        finally:
            os.close(handle)
