"""Face alignment and paste-back: similarity transforms, warps, feathered masks.

Plain numpy and scipy, no detector: points come from
:mod:`dmask.io.landmarks` (or the drawing of a synthetic face). Points are
``(x, y)`` in pixels of their image, pixel ``[i, j]`` centred at ``x = j``,
``y = i``. A transform is a ``(2, 3)`` matrix ``M`` taking a photograph's
point ``p`` to the crop's ``M @ [p, 1]``; the crop samples the photograph at
the inverse. Canonical positions are kept resolution-free, as fractions of
the crop's width and height (:func:`to_fractions`, :func:`from_fractions`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = [
    "EDGE_FADE",
    "FEATHER",
    "LANDMARKS",
    "PASTE_BAND",
    "PasteMap",
    "apply_transform",
    "box_transform",
    "face_mask",
    "from_fractions",
    "invert",
    "landmarks_attribute",
    "match_colour",
    "paste_back",
    "paste_map",
    "paste_with",
    "read_landmarks",
    "similarity",
    "to_fractions",
    "warp_to_crop",
]

#: The landmarks an alignment uses, left and right as seen in the image.
LANDMARKS: tuple[str, ...] = (
    "eye_left",
    "eye_right",
    "nose",
    "mouth_left",
    "mouth_right",
)

#: Width of the mask's feathered band, a fraction of the face ellipse's size.
FEATHER = 0.2

#: The mask also falls to 0 over this fraction of the crop's side at its edge.
EDGE_FADE = 0.06

#: Photograph pixels a paste handles at once (bounds its temporaries).
PASTE_BAND = 1 << 20


def to_fractions(points: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Pixel points ``(n, 2)`` of an ``(H, W)`` image as fractions of its sides."""
    height, width = int(size[0]), int(size[1])
    points = np.asarray(points, dtype=np.float64)
    return (points + 0.5) / np.array([width, height], dtype=np.float64)


def from_fractions(fractions: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """The inverse of :func:`to_fractions`: pixel points of an ``(H, W)`` image."""
    height, width = int(size[0]), int(size[1])
    fractions = np.asarray(fractions, dtype=np.float64)
    return fractions * np.array([width, height], dtype=np.float64) - 0.5


def similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The least-squares similarity (scale, rotation, shift) taking source to target.

    Umeyama's closed form without reflection, over ``(n, 2)`` point pairs
    (``n >= 2``, not all the same point).

    Returns
    -------
    numpy.ndarray
        ``(2, 3)``: ``target ~ M[:, :2] @ source + M[:, 2]``.
    """
    src = np.asarray(source, dtype=np.float64)
    dst = np.asarray(target, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need (n >= 2, 2) point pairs, got {src.shape}, {dst.shape}")
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    a, b = src - mu_s, dst - mu_d
    var = (a**2).sum() / len(a)
    if var == 0:
        raise ValueError("source points all coincide")
    u, sig, vt = np.linalg.svd(b.T @ a / len(a))
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    rotation = u @ np.diag(d) @ vt
    scale = (sig * d).sum() / var
    linear = scale * rotation
    return np.hstack([linear, (mu_d - linear @ mu_s)[:, None]])


def box_transform(box: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """The transform of a crop box ``(y0, y1, x0, x1)`` resized to ``(H, W)``.

    Pixel centres map as a resize with half-pixel centres does (OpenCV's and
    Pillow's convention): the box's edges go to the crop's edges.
    """
    y0, y1, x0, x1 = (float(v) for v in box)
    height, width = int(size[0]), int(size[1])
    sx, sy = width / (x1 - x0), height / (y1 - y0)
    return np.array(
        [[sx, 0.0, (0.5 - x0) * sx - 0.5], [0.0, sy, (0.5 - y0) * sy - 0.5]]
    )


def invert(matrix: np.ndarray) -> np.ndarray:
    """The inverse of a ``(2, 3)`` transform."""
    linear = np.linalg.inv(np.asarray(matrix, dtype=np.float64)[:, :2])
    return np.hstack([linear, -(linear @ matrix[:, 2])[:, None]])


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points ``(n, 2)`` through a ``(2, 3)`` transform."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def _sample(image: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """``image`` (H, W, C) at float coordinates (bilinear, edge repeated)."""
    taps, weights = _bilinear_taps(xs, ys, image.shape[0], image.shape[1])
    return _gather(image.reshape(-1, image.shape[2]), taps, weights)


def _gather(
    flat: np.ndarray, taps: Sequence[np.ndarray], weights: Sequence[np.ndarray]
) -> np.ndarray:
    """The weighted sum of ``flat``'s rows (pixels, channels) at the taps."""
    return sum(w[..., None] * flat[t] for t, w in zip(taps, weights, strict=True))


def _through(
    matrix: np.ndarray, cols: Sequence[int], rows: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Where the pixel centres ``cols x rows`` go under ``matrix``: ``xs, ys``."""
    jj, ii = np.meshgrid(
        np.asarray(cols, dtype=np.float64), np.asarray(rows, dtype=np.float64)
    )
    xs = matrix[0, 0] * jj + matrix[0, 1] * ii + matrix[0, 2]
    ys = matrix[1, 0] * jj + matrix[1, 1] * ii + matrix[1, 2]
    return xs, ys


def _scale_of(matrix: np.ndarray) -> float:
    return float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))


def warp_to_crop(
    image: np.ndarray, matrix: np.ndarray, size: Sequence[int]
) -> np.ndarray:
    """The ``(H, W, C)`` crop of ``image`` under ``matrix``, as float64.

    Bilinear sampling at the inverse transform; where the crop shrinks the
    photograph, the part it reads is first smoothed by a Gaussian of
    ``sigma = (1 / scale - 1) / 2`` (as scikit-image's anti-aliasing), so
    large photographs do not alias. Outside the photograph the edge repeats.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    height, width = int(size[0]), int(size[1])
    xs, ys = _through(invert(matrix), range(width), range(height))
    sigma = max(0.0, (1.0 / _scale_of(matrix) - 1.0) / 2.0)
    pad = int(np.ceil(4 * sigma)) + 2
    rows, cols = image.shape[:2]
    y0 = int(np.clip(np.floor(ys.min()) - pad, 0, rows - 1))
    y1 = int(np.clip(np.ceil(ys.max()) + pad + 1, y0 + 1, rows))
    x0 = int(np.clip(np.floor(xs.min()) - pad, 0, cols - 1))
    x1 = int(np.clip(np.ceil(xs.max()) + pad + 1, x0 + 1, cols))
    part = image[y0:y1, x0:x1].astype(np.float64)
    if sigma > 0:
        part = ndimage.gaussian_filter(part, (sigma, sigma, 0), mode="nearest")
    return _sample(part, xs - x0, ys - y0)


def face_mask(
    size: Sequence[int],
    points: np.ndarray | None = None,
    feather: float = FEATHER,
) -> np.ndarray:
    """A feathered ``(H, W)`` mask in [0, 1] over the face of a crop.

    With the crop's landmarks (``(5, 2)`` in :data:`LANDMARKS` order) an
    ellipse around eyes, nose and mouth: centred between the eyes' and the
    mouth's midpoints, 1.1 interocular distances wide each side and reaching
    from above the brows to the chin. Without, the crop's inscribed ellipse
    shrunk by 10 %. The mask is 1 inside the ellipse shrunk by ``feather``
    and falls linearly to 0 at the ellipse.
    """
    height, width = int(size[0]), int(size[1])
    if points is not None:
        p = np.asarray(points, dtype=np.float64)
        eyes, mouth = p[:2].mean(axis=0), p[3:5].mean(axis=0)
        iod = float(np.hypot(*(p[1] - p[0])))
        down = mouth - eyes
        length = float(np.hypot(*down))
        if iod <= 0 or length <= 0:
            raise ValueError("landmarks of a face mask must be distinct points")
        centre = (eyes + mouth) / 2
        axis_v = down / length
        semi = (1.1 * iod, 1.45 * length)
    else:
        centre = np.array([(width - 1) / 2, (height - 1) / 2])
        axis_v = np.array([0.0, 1.0])
        semi = (0.45 * width, 0.45 * height)
    axis_u = np.array([axis_v[1], -axis_v[0]])
    jj, ii = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height))
    dx, dy = jj - centre[0], ii - centre[1]
    u = (dx * axis_u[0] + dy * axis_u[1]) / semi[0]
    v = (dx * axis_v[0] + dy * axis_v[1]) / semi[1]
    radius = np.sqrt(u**2 + v**2)
    inner = 1.0 - float(np.clip(feather, 1e-6, 1.0))
    mask = np.clip((1.0 - radius) / (1.0 - inner), 0.0, 1.0)
    # and to 0 at the crop's own edge, so a tight crop leaves no seam
    band = max(1.0, EDGE_FADE * min(height, width))
    edge = np.minimum(np.minimum(jj, width - 1 - jj), np.minimum(ii, height - 1 - ii))
    return np.minimum(mask, np.clip(edge / band, 0.0, 1.0))


def match_colour(
    values: np.ndarray, reference: np.ndarray, mask: np.ndarray
) -> np.ndarray:
    """``values`` with each channel's mean and spread under ``mask`` set to the
    reference's (the original crop's), so a pasted face keeps the photograph's
    colour and brightness. Channels constant under the mask keep their spread.
    """
    weights = mask[..., None] / max(float(mask.sum()), 1e-12)
    mean_v = (values * weights).sum(axis=(0, 1))
    mean_r = (reference * weights).sum(axis=(0, 1))
    std_v = np.sqrt(((values - mean_v) ** 2 * weights).sum(axis=(0, 1)))
    std_r = np.sqrt(((reference - mean_r) ** 2 * weights).sum(axis=(0, 1)))
    gain = np.divide(std_r, std_v, out=np.ones_like(std_v), where=std_v > 1e-12)
    return (values - mean_v) * gain + mean_r


@dataclass(frozen=True)
class PasteMap:
    """Where a crop lands in its photograph: the part of the photograph its
    mask reaches (``region``: row and column slices), the crop's ``matrix``
    and ``mask``."""

    region: tuple[slice, slice]
    matrix: np.ndarray
    mask: np.ndarray


def paste_map(
    shape: Sequence[int], matrix: np.ndarray, mask: np.ndarray
) -> PasteMap | None:
    """The :class:`PasteMap` of a crop's ``mask`` under ``matrix`` in a
    photograph of ``shape``; None when the mask does not reach it."""
    rows, cols = int(shape[0]), int(shape[1])
    inside = np.argwhere(mask > 0)
    if not len(inside):
        return None
    (r0, c0), (r1, c1) = inside.min(axis=0) - 1, inside.max(axis=0) + 1
    corners = np.array([[c0, r0], [c1, r0], [c0, r1], [c1, r1]], dtype=np.float64)
    spot = apply_transform(invert(matrix), corners)
    x0 = int(np.clip(np.floor(spot[:, 0].min()), 0, cols))
    x1 = int(np.clip(np.ceil(spot[:, 0].max()) + 1, 0, cols))
    y0 = int(np.clip(np.floor(spot[:, 1].min()), 0, rows))
    y1 = int(np.clip(np.ceil(spot[:, 1].max()) + 1, 0, rows))
    if x1 <= x0 or y1 <= y0:
        return None
    return PasteMap((slice(y0, y1), slice(x0, x1)), np.asarray(matrix), mask)


def _bilinear_taps(
    xs: np.ndarray, ys: np.ndarray, height: int, width: int
) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """Flat indices and weights of the four neighbours, the edge repeated."""
    xs = np.clip(xs, 0, width - 1)
    ys = np.clip(ys, 0, height - 1)
    left = np.minimum(xs.astype(np.intp), max(width - 2, 0))
    top = np.minimum(ys.astype(np.intp), max(height - 2, 0))
    fx, fy = xs - left, ys - top
    right = np.minimum(left + 1, width - 1)
    bottom = np.minimum(top + 1, height - 1)
    taps = (top * width + left, top * width + right, bottom * width + left,
            bottom * width + right)  # fmt: skip
    return taps, ((1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy)


def paste_with(
    photo: np.ndarray, faces: Sequence[np.ndarray], where: PasteMap | None
) -> list[np.ndarray]:
    """``photo`` (its dtype, rounded and clipped) with each of ``faces`` blended
    in at ``where`` (:func:`paste_map`); faces in the photograph's units.

    Works through the region in bands of :data:`PASTE_BAND` pixels, each
    band's sampling positions computed once for every face, so temporaries
    stay small whatever the photograph's size (the results are one copy of
    the photograph per face).
    """
    photo = np.asarray(photo)
    squeeze = photo.ndim == 2
    image = photo[..., None] if squeeze else photo
    outs = [image.copy() for _ in faces]
    if where is not None and outs:
        flats = [
            np.asarray(f, dtype=np.float64).reshape(-1, image.shape[2]) for f in faces
        ]
        height, width = where.mask.shape
        m = where.matrix
        rows, cols = where.region
        step = max(1, PASTE_BAND // max(1, cols.stop - cols.start))
        info = np.iinfo(image.dtype) if np.issubdtype(image.dtype, np.integer) else None
        for start in range(rows.start, rows.stop, step):
            band = slice(start, min(rows.stop, start + step))
            xs, ys = _through(
                m, range(cols.start, cols.stop), range(band.start, band.stop)
            )
            # outside the crop the mask is 0 (not its edge repeated)
            alpha = ndimage.map_coordinates(
                where.mask, [ys, xs], order=1, mode="constant", prefilter=False
            )[..., None]
            taps, weights = _bilinear_taps(xs, ys, height, width)
            region = image[band, cols].astype(np.float64)
            keep = alpha <= 0
            for out, flat in zip(outs, flats, strict=True):
                pasted = _gather(flat, taps, weights)
                blended = alpha * pasted + (1.0 - alpha) * region
                if info is not None:
                    blended = np.clip(np.rint(blended), info.min, info.max)
                # where the mask is 0 the photograph stays as it was, bit for bit
                blended[keep[..., 0]] = region[keep[..., 0]]
                out[band, cols] = blended.astype(image.dtype)
    return [out[..., 0] for out in outs] if squeeze else outs


def paste_back(
    photo: np.ndarray,
    face: np.ndarray,
    matrix: np.ndarray,
    mask: np.ndarray,
) -> np.ndarray:
    """The photograph with a crop-sized ``face`` blended in at full resolution.

    Parameters
    ----------
    photo : numpy.ndarray
        ``(H, W, C)`` original, any dtype.
    face : numpy.ndarray
        ``(h, w, C)`` synthesised crop in the photograph's units.
    matrix : numpy.ndarray
        The crop's transform (photograph to crop).
    mask : numpy.ndarray
        ``(h, w)`` feathered mask of the crop (:func:`face_mask`).

    Returns
    -------
    numpy.ndarray
        Float64 ``(H, W, C)``: ``photo`` exactly where the mask, carried back
        to the photograph, is 0, and ``mask * face + (1 - mask) * photo``
        (both bilinear, in the photograph's pixels) elsewhere. Several faces
        of one crop are pasted faster at once (:func:`paste_map`,
        :func:`paste_with`).
    """
    photo = np.asarray(photo, dtype=np.float64)
    if photo.ndim == 2:
        photo = photo[..., None]
    if face.ndim == 2:
        face = face[..., None]
    return paste_with(photo, [face], paste_map(photo.shape, matrix, mask))[0]


def landmarks_attribute(
    fractions: np.ndarray, faces: int, measured: str
) -> dict[str, Any]:
    """The ``landmarks`` attribute of dataset and model stores (JSON).

    ``{"points": LANDMARKS, "xy": [[x, y], ...], "faces": n, "measured": how}``:
    the canonical positions as fractions of the image's width and height, the
    number of faces they are the mean of, and how they were found
    (``"drawn"`` for synthetic faces, ``"detected"`` at ingest).
    """
    xy = np.asarray(fractions, dtype=np.float64)
    if xy.shape != (len(LANDMARKS), 2) or not np.isfinite(xy).all():
        raise ValueError(f"canonical landmarks must be finite (5, 2), got {xy.shape}")
    return {
        "points": list(LANDMARKS),
        "xy": [[round(float(x), 6), round(float(y), 6)] for x, y in xy],
        "faces": int(faces),
        "measured": str(measured),
    }


def read_landmarks(attrs: Mapping[str, Any]) -> np.ndarray | None:
    """The ``(5, 2)`` canonical fractions a store's attributes record, or None.

    Raises ValueError, naming what is wrong, for a malformed attribute.
    """
    entry = attrs.get("landmarks")
    if entry is None:
        return None
    if not isinstance(entry, Mapping) or list(entry.get("points", ())) != list(
        LANDMARKS
    ):
        raise ValueError(
            f"attribute landmarks must name the points {list(LANDMARKS)}, got {entry!r}"
        )
    xy = np.asarray(entry.get("xy"), dtype=np.float64)
    if xy.shape != (len(LANDMARKS), 2) or not np.isfinite(xy).all():
        raise ValueError(f"attribute landmarks has xy of shape {xy.shape}, not (5, 2)")
    eyes, mouth = xy[:2].mean(axis=0), xy[3:].mean(axis=0)
    if np.hypot(*(xy[1] - xy[0])) <= 0 or np.hypot(*(mouth - eyes)) <= 0:
        raise ValueError("attribute landmarks has coinciding eyes or eyes and mouth")
    return xy
