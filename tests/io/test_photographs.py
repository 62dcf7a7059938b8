"""Reading photographs, face detection, crops, resizing and sketches."""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
from helpers import HALF_LEVEL, JPEG_LEVELS
from PIL import Image

from dmask.core import resize
from dmask.datasets import samples
from dmask.errors import InputError
from dmask.io import face_crops, photographs
from dmask.io.photographs import ImageReadError


def write_png16(path, array: np.ndarray, filter_type: int = 0) -> None:
    """A 16-bit RGB or RGBA PNG written by hand (Pillow cannot write one)."""
    height, width, channels = array.shape
    bpp = 2 * channels
    rows = [np.frombuffer(row.astype(">u2").tobytes(), np.uint8) for row in array]
    data = bytearray()
    for row in rows:
        raw = row.astype(np.int64)
        if filter_type == 1:  # Sub: each byte minus the byte one pixel left
            left = np.concatenate([np.zeros(bpp, np.int64), raw[:-bpp]])
            raw = (raw - left) % 256
        data.append(filter_type)
        data += raw.astype(np.uint8).tobytes()

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    colour = {3: 2, 4: 6}[channels]
    header = struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0)
    with open(path, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n")
        handle.write(chunk(b"IHDR", header))
        handle.write(chunk(b"IDAT", zlib.compress(bytes(data))))
        handle.write(chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return samples.sample_photographs()


# ------------------------------------------------------------------- reading


def test_read_gray_rgb_and_rgba_png(tmp_path, rng):
    gray = rng.integers(0, 256, (12, 10), dtype=np.uint8)
    rgb = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.zeros((12, 10, 1), np.uint8)], axis=2)
    rgba[:6, :, 3] = 255  # top half opaque, bottom half transparent
    Image.fromarray(gray).save(tmp_path / "g.png")
    Image.fromarray(rgb).save(tmp_path / "c.png")
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")

    out = photographs.read_image(tmp_path / "g.png")
    assert out.shape == (12, 10, 1) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], gray)
    np.testing.assert_array_equal(photographs.read_image(tmp_path / "c.png"), rgb)
    over_white = photographs.read_image(tmp_path / "a.png")
    assert over_white.shape == (12, 10, 3)
    np.testing.assert_array_equal(over_white[:6], rgb[:6])
    assert np.all(over_white[6:] == 255)


def test_read_palette_and_cmyk_become_rgb(tmp_path, rng):
    rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).quantize(16).save(tmp_path / "p.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "k.jpg")
    palette = photographs.read_image(tmp_path / "p.png")
    assert palette.shape == (8, 8, 3) and palette.dtype == np.uint8
    expected = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))
    np.testing.assert_array_equal(palette, expected)
    cmyk = photographs.read_image(tmp_path / "k.jpg")
    assert cmyk.shape == (8, 8, 3) and cmyk.dtype == np.uint8


def test_read_16_bit_png_keeps_16_bits(tmp_path, rng):
    gray = rng.integers(0, 65536, (9, 7), dtype=np.uint16)
    Image.fromarray(gray).save(tmp_path / "g16.png")
    out = photographs.read_image(tmp_path / "g16.png")
    assert out.dtype == np.uint16 and out.shape == (9, 7, 1)
    np.testing.assert_array_equal(out[..., 0], gray)

    rgb = rng.integers(0, 65536, (9, 7, 3), dtype=np.uint16)
    for filter_type in (0, 1):
        write_png16(tmp_path / "c16.png", rgb, filter_type)
        out = photographs.read_image(tmp_path / "c16.png")
        assert out.dtype == np.uint16
        np.testing.assert_array_equal(out, rgb)

    rgba = np.concatenate([rgb, np.full((9, 7, 1), 65535, np.uint16)], axis=2)
    rgba[0, 0, 3] = 0
    write_png16(tmp_path / "a16.png", rgba)
    out = photographs.read_image(tmp_path / "a16.png")
    assert out.dtype == np.uint16 and out.shape == (9, 7, 3)
    np.testing.assert_array_equal(out[1:], rgb[1:])
    assert np.all(out[0, 0] == 65535)


def test_read_jpeg_and_exif_orientation(tmp_path):
    y, x = np.mgrid[0:40, 0:60]
    smooth = np.stack([y * 6, x * 4, (x + y) * 2], axis=-1).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "s.jpg", quality=95)
    out = photographs.read_image(tmp_path / "s.jpg")
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - smooth).mean() < 3

    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: shown turned 90 degrees clockwise
    Image.fromarray(smooth).save(tmp_path / "r.jpg", quality=95, exif=exif)
    turned = photographs.read_image(tmp_path / "r.jpg")
    assert turned.shape == (60, 40, 3)
    np.testing.assert_allclose(turned, np.rot90(out, -1), atol=JPEG_LEVELS)


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("subsampling", [0, 1, 2])
def test_fast_jpeg_decoding_gives_pillows_pixels(
    photos, rng, monkeypatch, subsampling, progressive
):
    """simplejpeg (libjpeg-turbo's TurboJPEG API) decodes what Pillow would."""
    assert photographs._decode_jpeg is not None  # installed: a dependency
    images = [
        photos["grace_hopper"],
        rng.integers(0, 256, (33, 47, 3), dtype=np.uint8),
        rng.integers(0, 256, (9, 5), dtype=np.uint8),  # grey
    ]
    for pixels in images:
        encoded = io.BytesIO()
        options = {"subsampling": subsampling} if pixels.ndim == 3 else {}
        Image.fromarray(pixels).save(
            encoded, format="JPEG", quality=90, progressive=progressive, **options
        )
        data = encoded.getvalue()
        with Image.open(io.BytesIO(data)) as opened:
            fast = photographs._decode_fast(data, opened)
        assert fast is not None
        with monkeypatch.context() as patched:
            patched.setattr(photographs, "_decode_jpeg", None)  # Pillow alone
            slow = photographs.decode_image(data)
        assert fast.dtype == np.uint8 and fast.flags.c_contiguous
        np.testing.assert_array_equal(fast, slow)
        np.testing.assert_array_equal(photographs.decode_image(data), slow)
    # what it leaves to Pillow: turned, CMYK, truncated, other formats
    exif = Image.Exif()
    exif[0x0112] = 6
    for image, options in [
        (Image.fromarray(images[0]), {"exif": exif}),
        (Image.fromarray(images[0]).convert("CMYK"), {}),
    ]:
        encoded = io.BytesIO()
        image.save(encoded, format="JPEG", **options)
        with Image.open(encoded) as opened:
            assert photographs._decode_fast(encoded.getvalue(), opened) is None
    with pytest.raises(ImageReadError, match=r"(?i)half\.jpg: .*truncated"):
        photographs.decode_image(data[: len(data) // 2], "half.jpg")


@pytest.mark.parametrize("kind", ["truncated", "text", "missing", "empty"])
def test_unreadable_files_name_the_file(tmp_path, rng, kind):
    path = tmp_path / f"bad_{kind}.png"
    if kind == "truncated":
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        path.write_text("not an image\n")
    elif kind == "empty":
        path.write_bytes(b"")
    with pytest.raises(ImageReadError) as info:
        photographs.read_image(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert isinstance(info.value, InputError)


# ----------------------------------------------------------------- detection


def test_detect_face_on_real_portraits(photos):
    box = face_crops.detect_face(photos["astronaut"])
    assert box is not None
    y, x, h, w = box
    # Astronaut's face lies around rows 30-200, columns 150-330.
    assert 30 <= y + h / 2 <= 200 and 150 <= x + w / 2 <= 330
    assert y >= 20 and y + h <= 210 and x >= 140 and x + w <= 340
    assert 60 <= h <= 170

    y, x, h, w = face_crops.detect_face(photos["grace_hopper"])
    # Grace Hopper's face: rows about 110-330, columns 150-380 of 600x512.
    assert 110 <= y + h / 2 <= 330 and 150 <= x + w / 2 <= 380
    assert face_crops.detect_face(photos["chelsea"]) is None  # a cat


def test_detect_face_flat_large_and_16_bit(photos):
    assert face_crops.detect_face(np.full((200, 160), 128, np.uint8)) is None
    small = photos["astronaut"]
    box = np.array(face_crops.detect_face(small))
    # On a big photo detection runs on a downscaled copy, mapped back.
    big = np.repeat(np.repeat(small, 2, axis=0), 2, axis=1)
    big_box = np.array(face_crops.detect_face(big))
    assert np.all(np.abs(big_box - 2 * box) <= 0.15 * 2 * box[2])
    # 16 bits: the same grey values found the same way.
    assert face_crops.detect_face(small.astype(np.uint16) * 257) == tuple(box)


# -------------------------------------------------------------------- crops


def test_crop_box_square_shifted_inside():
    y0, y1, x0, x1 = face_crops.crop_box((100, 200), (40, 90, 20, 20), margin=0.25)
    assert (y1 - y0, x1 - x0) == (30, 30)
    assert (y0, x0) == (35, 85)  # centred on the face
    y0, y1, x0, x1 = face_crops.crop_box((100, 200), (0, 0, 20, 30), margin=0.5)
    assert (y0, x0) == (0, 0) and y1 - y0 == x1 - x0 == 60  # shifted inside
    y0, y1, x0, x1 = face_crops.crop_box((100, 200), (70, 180, 30, 20), margin=0.5)
    assert (y1, x1) == (100, 200)  # shifted inside from the far corner


def test_crop_box_larger_than_image_is_padded_with_edges():
    image = np.arange(20 * 30, dtype=np.uint8).reshape(20, 30, 1)
    box = face_crops.crop_box(image.shape, (2, 5, 16, 16), margin=0.25)
    y0, y1, x0, x1 = box
    assert y1 - y0 == x1 - x0 == 24
    assert y0 <= 0 and y1 >= 20 and 0 <= x0 and x1 <= 30  # covers all rows
    crop = face_crops.crop_face(image, box)
    assert crop.shape == (24, 24, 1)
    inside = slice(-y0, -y0 + 20)
    np.testing.assert_array_equal(crop[inside], image[:, x0:x1])
    np.testing.assert_array_equal(
        crop[:-y0, :, 0], np.repeat(image[:1, x0:x1, 0], -y0, 0)
    )
    with pytest.raises(InputError, match="margin"):
        face_crops.crop_box(image.shape, (2, 5, 16, 16), margin=-1)


def test_center_box():
    assert face_crops.center_box((100, 60, 3)) == (20, 80, 0, 60)
    assert face_crops.center_box((50, 51)) == (0, 50, 0, 50)


# ---------------------------------------------------------- prepare_face


def test_prepare_face_modes(photos, rng):
    astronaut = photos["astronaut"]
    face = face_crops.prepare_face(astronaut, (64, 48))
    assert face.shape == (64, 48, 3) and face.dtype == np.uint8
    y0, y1, x0, x1 = face_crops.crop_box(
        astronaut.shape, face_crops.detect_face(astronaut), 0.25
    )
    np.testing.assert_array_equal(
        face, face_crops.resize_image(astronaut[y0:y1, x0:x1], (64, 48))
    )

    wide = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    centre = face_crops.prepare_face(wide, (30, 30), crop="center")
    np.testing.assert_array_equal(centre, wide[:, 10:40])  # no resize needed
    whole = face_crops.prepare_face(wide, (15, 25), crop="none")
    assert whole.shape == (15, 25, 3)
    expected = Image.fromarray(wide).resize((25, 15), Image.Resampling.LANCZOS)
    np.testing.assert_array_equal(whole, np.asarray(expected))

    assert face_crops.prepare_face(np.full((80, 80, 3), 90, np.uint8), (32, 32)) is None
    with pytest.raises(InputError, match="crop"):
        face_crops.prepare_face(wide, (8, 8), crop="middle")
    with pytest.raises(InputError, match="channels"):
        face_crops.prepare_face(wide, (8, 8), crop="none", channels=2)


def test_prepare_face_channels_and_dtypes(rng):
    rgb = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    gray = face_crops.prepare_face(rgb, (10, 10), crop="none", channels=1)
    assert gray.shape == (10, 10, 1) and gray.dtype == np.uint8
    small = face_crops.resize_image(rgb, (10, 10)).astype(float)
    luma = small @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(gray[..., 0], luma, atol=HALF_LEVEL)

    single = rng.integers(0, 256, (20, 20, 1), dtype=np.uint8)
    three = face_crops.prepare_face(single, (20, 20), crop="none", channels=3)
    assert three.shape == (20, 20, 3)
    np.testing.assert_array_equal(three, np.repeat(single, 3, axis=2))

    deep = rng.integers(0, 65536, (24, 32, 3), dtype=np.uint16)
    out = face_crops.prepare_face(deep, (12, 12), crop="center")
    assert out.dtype == np.uint16 and out.shape == (12, 12, 3)
    # The 16-bit path and the 8-bit path agree on 8-bit content scaled by 257.
    eight = (deep >> 8).astype(np.uint8)
    a = face_crops.prepare_face(eight.astype(np.uint16) * 257, (12, 12), crop="center")
    b = face_crops.prepare_face(eight, (12, 12), crop="center")
    assert np.abs(a / 257.0 - b).max() <= 1.0


# ---------------------------------------------------- resizing and display


def test_resize_methods(rng):
    image = rng.integers(0, 256, (30, 44, 3), dtype=np.uint8)
    deep = rng.integers(0, 65536, (30, 44, 1), dtype=np.uint16)
    for method, function in (("bilinear", resize.bilinear), ("area", resize.area)):
        for data in (image, deep):
            out = face_crops.resize_image(data, (12, 20), method)
            np.testing.assert_array_equal(out, function(data, (12, 20)))
        box = (2, 30, 5, 33)
        np.testing.assert_array_equal(
            face_crops.crop_resize(image, box, (16, 16), resize=method),
            function(image[2:30, 5:33], (16, 16)),
        )
        np.testing.assert_array_equal(
            face_crops.prepare_face(image, (15, 15), crop="center", resize=method),
            function(image[:, 7:37], (15, 15)),
        )
    lanczos = Image.fromarray(image).resize((20, 12), Image.Resampling.LANCZOS)
    np.testing.assert_array_equal(
        face_crops.resize_image(image, (12, 20)), np.asarray(lanczos)
    )
    with pytest.raises(InputError, match="resize must be one of lanczos, bilinear"):
        face_crops.resize_image(image, (8, 8), "cubic")
    with pytest.raises(InputError, match="resize must be"):
        face_crops.prepare_face(image, (8, 8), resize="nearest")


def test_face_crops_are_taken_whole_with_auto(rng):
    assert face_crops.is_face_crop((64, 64, 3), (32, 32))
    assert not face_crops.is_face_crop((65, 65), (32, 32))  # > 2 x 32
    assert face_crops.is_face_crop((65, 65), (32, 40))  # the longer side
    assert not face_crops.is_face_crop((128, 127), (128, 128))  # not square
    assert face_crops.is_face_crop((3000, 3000), None)
    # A flat square: no face to find, but small enough to be a crop already.
    flat = rng.integers(80, 100, (80, 80, 3), dtype=np.uint8)
    assert face_crops.find_crop(flat, "detect") is None
    assert face_crops.find_crop(flat, "auto", size=(40, 40)) == (0, 80, 0, 80)
    assert face_crops.find_crop(flat, "auto", size=(32, 32)) is None  # 80 > 64
    face = face_crops.prepare_face(flat, (40, 40), crop="auto")
    np.testing.assert_array_equal(face, face_crops.resize_image(flat, (40, 40)))
    assert face_crops.prepare_face(flat, (32, 32), crop="auto") is None


def test_stretch_is_opencv_minmax_normalize(rng):
    cv2 = pytest.importorskip("cv2")
    for shape in [(9, 7, 3), (12, 5, 1), (6, 8)]:
        for dtype in (np.float32, np.float64):
            for spread in (1e-3, 0.7, 40.0):
                values = (rng.normal(0.4, spread, shape)).astype(dtype)
                ours = photographs.stretch_uint8(values)
                theirs = cv2.normalize(
                    values, None, 0, 255, cv2.NORM_MINMAX, dtype=cv2.CV_8U
                )
                np.testing.assert_array_equal(ours, theirs.reshape(ours.shape))
                assert ours.min() == 0 and ours.max() == 255
    constant = np.full((4, 4, 3), 0.3)
    np.testing.assert_array_equal(
        photographs.stretch_uint8(constant),
        cv2.normalize(constant, None, 0, 255, cv2.NORM_MINMAX, dtype=cv2.CV_8U),
    )
    odd = np.array([[np.nan, -np.inf, 0.25], [np.inf, 0.5, 0.75]])
    assert photographs.stretch_uint8(odd).tolist() == [[0, 0, 0], [255, 128, 255]]


def test_display_modes(tmp_path, rng):
    values = rng.normal(0.5, 0.4, (10, 12, 3))
    clipped = photographs.to_uint8(values)
    np.testing.assert_array_equal(
        clipped, np.rint(np.clip(values, 0, 1) * 255).astype(np.uint8)
    )
    stretched = photographs.to_uint8(values, 2.0, display="stretch")  # peak unused
    np.testing.assert_array_equal(stretched, photographs.stretch_uint8(values))
    photographs.write_png(tmp_path / "s.png", values, display="stretch")
    np.testing.assert_array_equal(photographs.read_image(tmp_path / "s.png"), stretched)
    with pytest.raises(InputError, match="display must be one of clip, stretch"):
        photographs.to_uint8(values, display="normalize")


def test_clip_keeps_the_old_formula(rng):
    """to_uint8's in-place clip: NaN black, infinities clipped, as before."""
    values = np.concatenate(
        [
            rng.normal(0.5, 0.6, 5000),
            np.arange(-1, 257) / 255,  # every level, and the halves between
            (np.arange(0, 256) + 0.5) / 255,
            [np.nan, np.inf, -np.inf, 1e308, -1e308, 0.0, 1.0],
        ]
    )
    for peak in (1.0, 0.7, 255.0, 65535.0):
        with np.errstate(over="ignore"):
            given = values * peak  # 1e308 * 255: inf
        scaled = np.asarray(given, dtype=np.float64) / peak
        scaled = np.nan_to_num(scaled, nan=0.0, posinf=1.0, neginf=0.0)
        old = np.rint(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)
        np.testing.assert_array_equal(photographs.to_uint8(given, peak), old)


@pytest.mark.parametrize("deflate", ["fast", "zlib"])
@pytest.mark.parametrize(
    "shape", [(1, 1), (1, 1, 3), (7, 5, 3), (3, 9, 1), (16, 16, 4), (5, 4, 2)]
)
def test_png_bytes_decode_to_the_same_pixels(rng, monkeypatch, deflate, shape):
    """Any reader gives the pixels back: Pillow, and OpenCV (in BGR order)."""
    import cv2

    if deflate == "zlib":  # the fallback where isal is not installed
        monkeypatch.setattr(photographs, "_deflate", photographs._zlib_deflate)
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    if pixels.ndim == 3 and pixels.shape[2] >= 3:
        pixels[0, 0, :3] = (255, 0, 0)  # red: OpenCV gives it last
    data = photographs.png_bytes(pixels)
    flat = pixels[..., 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        np.testing.assert_array_equal(np.asarray(image), flat)
    if pixels.ndim == 3 and pixels.shape[2] == 2:
        return  # OpenCV reads grey and alpha as BGRA
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels.ndim == 3 and pixels.shape[2] >= 3:
        assert decoded[0, 0, 2] == 255 and decoded[0, 0, 0] == 0  # red, as BGR
        decoded = decoded[..., [2, 1, 0, 3][: pixels.shape[2]]]
    np.testing.assert_array_equal(decoded, flat)


def test_png_bytes_of_a_photograph_match_pillows_file(photos, tmp_path):
    """The same pixels as Pillow's own PNG, about as small (Pillow's fastest)."""
    photo = photos["astronaut"] if "astronaut" in photos else photos["grace_hopper"]
    for pixels in (photo, photo[..., 1]):
        data = photographs.png_bytes(pixels)
        Image.fromarray(pixels).save(tmp_path / "p.png", compress_level=1)
        with Image.open(io.BytesIO(data)) as ours:
            np.testing.assert_array_equal(np.asarray(ours), pixels)
        assert len(data) < 1.1 * (tmp_path / "p.png").stat().st_size
    with pytest.raises(InputError, match="uint8"):
        photographs.png_bytes(photo.astype(np.uint16))
    with pytest.raises(InputError, match="must be"):
        photographs.png_bytes(np.zeros((4, 4, 5), np.uint8))


def test_write_file_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "new" / "deeper" / "f.png"
    photographs.write_file(path, b"first")
    photographs.write_file(path, b"second")
    assert path.read_bytes() == b"second"

    def failing_write(handle, data):
        raise OSError("disk full")

    with monkeypatch.context() as patched, pytest.raises(OSError, match="full"):
        patched.setattr(os, "write", failing_write)
        photographs.write_file(path, b"third")
    assert path.read_bytes() == b"second"
    assert os.listdir(path.parent) == ["f.png"]  # no partial file left


# -------------------------------------------------------------------- misc


def test_sketch(photos):
    photo = photos["grace_hopper"]
    out = samples.sketch(photo)
    assert out.shape == (*photo.shape[:2], 1) and out.dtype == np.uint8
    assert out.min() < 60 and out.max() == 255
    assert np.median(out) > 200  # mostly paper, dark strokes
    np.testing.assert_array_equal(out, samples.sketch(photo))
    flat = samples.sketch(np.full((32, 32, 3), 100, np.uint8))
    assert np.all(flat == 255)  # no edges, no strokes


def test_sample_photographs(photos):
    assert set(photos) == {"astronaut", "chelsea", "grace_hopper"}
    assert photos["astronaut"].shape == (512, 512, 3)
    assert photos["chelsea"].shape == (300, 451, 3)
    assert photos["grace_hopper"].shape == (600, 512, 3)
    assert all(p.dtype == np.uint8 for p in photos.values())
