"""Deterministic synthetic paired faces with local, sparse expression changes.

Coordinates are normalized: ``u`` runs from -1 (left) to 1 (right) and ``v``
from -1 (top) to 1 (bottom), so faces scale with the image size and aspect.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EXPRESSIONS: tuple[str, ...] = (
    "neutral",
    "happy",
    "sad",
    "surprised",
    "angry",
    "afraid",
    "disgusted",
)

Color = tuple[float, float, float]

# Expression deltas relative to neutral, scaled by the subject's intensity.
_DELTAS: dict[str, dict[str, float]] = {
    "neutral": {},
    "happy": {
        "smile": 0.05,
        "mouth_width": 0.12,
        "cheek_raise": 0.05,
        "cheek_blush": 0.3,
        "eye_open": -0.3,
    },
    "sad": {
        "smile": -0.05,
        "mouth_width": -0.05,
        "brow_tilt": -0.045,
        "lid_droop": 0.35,
    },
    "surprised": {
        "brow_raise": 0.07,
        "brow_arch": 0.015,
        "eye_open": 0.5,
        "open_upper": 0.04,
        "open_lower": 0.06,
        "mouth_width": -0.4,
    },
    "angry": {
        "brow_raise": -0.03,
        "brow_tilt": 0.045,
        "brow_inward": 0.02,
        "eye_open": -0.1,
        "lip_thin": 0.55,
        "mouth_width": -0.1,
        "nose_wrinkle": 0.4,
        "glabella": 0.7,
    },
    "afraid": {
        "brow_raise": 0.05,
        "brow_tilt": -0.03,
        "brow_inward": 0.025,
        "eye_open": 0.45,
        "mouth_width": 0.2,
        "smile": -0.01,
        "open_upper": 0.01,
        "open_lower": 0.025,
    },
    "disgusted": {
        "brow_raise": -0.02,
        "brow_tilt": 0.015,
        "eye_open": -0.2,
        "smile": -0.01,
        "upper_raise": 0.035,
        "upper_asym": 0.5,
        "nose_wrinkle": 1.0,
    },
}

_HAIR = ((0.08, 0.06, 0.05), (0.30, 0.18, 0.10), (0.80, 0.66, 0.38))
_HAIR += ((0.55, 0.22, 0.10), (0.62, 0.60, 0.58))
_IRIS = ((0.30, 0.18, 0.08), (0.20, 0.38, 0.62), (0.25, 0.45, 0.25), (0.12, 0.08, 0.05))


@dataclass(frozen=True)
class SubjectParams:
    """Per-subject random parameters in normalized image units (``v`` points down)."""

    face_center: tuple[float, float]
    face_radii: tuple[float, float]
    skin: Color
    hair_color: Color
    background: Color
    clothes: Color
    iris_color: Color
    lip_color: Color
    hair_radii: tuple[float, float]
    hair_length: float
    fringe: tuple[float, float, float]  # height (in face radii), curve, tilt
    fringe_wave: tuple[float, float, float]  # amplitude, frequency, phase
    eye_y: float
    eye_spacing: float  # half distance between eye centres
    eye_size: tuple[float, float]  # half width, height/width ratio
    gaze: float
    brow_gap: float
    brow_thickness: float
    brow_arch: float
    nose_length: float
    nose_width: float
    mouth_y: float
    mouth_width: float  # half width
    lips: tuple[float, float]  # upper, lower thickness
    light: tuple[float, float]  # direction angle, strength
    intensity: float


def _color(x: np.ndarray) -> Color:
    r, g, b = np.clip(x, 0.0, 1.0).tolist()
    return (r, g, b)


def subject_params(seed: int, subject: int) -> SubjectParams:
    """Draw the parameters of one subject.

    Parameters
    ----------
    seed, subject : int
        Seed of ``numpy.random.default_rng([seed, subject])``.

    Returns
    -------
    SubjectParams
        Deterministic parameters of the subject.
    """
    rng = np.random.default_rng([seed, subject])
    u = rng.uniform
    cu, cv = u(-0.04, 0.04), u(0.0, 0.08)
    a, b = u(0.48, 0.6), u(0.64, 0.76)
    tone = u()
    skin = (1 - tone) * np.array([0.96, 0.80, 0.68]) + tone * np.array(
        [0.42, 0.28, 0.2]
    )
    skin = skin + rng.normal(0.0, 0.02, 3)
    hair = np.array(_HAIR[rng.integers(len(_HAIR))]) + rng.normal(0.0, 0.03, 3)
    iris = np.array(_IRIS[rng.integers(len(_IRIS))]) + rng.normal(0.0, 0.03, 3)
    lip = skin * np.array([0.85, 0.5, 0.52]) + np.array([0.08, 0.0, 0.0])
    lip = lip + rng.normal(0.0, 0.02, 3)
    eye_y = cv - b * u(0.05, 0.15)
    nose_length = b * u(0.25, 0.36)
    return SubjectParams(
        face_center=(cu, cv),
        face_radii=(a, b),
        skin=_color(skin),
        hair_color=_color(hair),
        background=_color(u(0.15, 0.95, 3)),
        clothes=_color(u(0.1, 0.9, 3)),
        iris_color=_color(iris),
        lip_color=_color(lip),
        hair_radii=(a * u(1.06, 1.22), b * u(0.98, 1.1)),
        hair_length=u(-0.2, 1.0),
        fringe=(u(0.5, 0.68), u(0.05, 0.25), u(-0.08, 0.08)),
        fringe_wave=(u(0.0, 0.02), u(8.0, 20.0), u(0.0, 2 * np.pi)),
        eye_y=eye_y,
        eye_spacing=a * u(0.36, 0.44),
        eye_size=(a * u(0.16, 0.2), u(0.5, 0.62)),
        gaze=u(-0.25, 0.25),
        brow_gap=u(0.05, 0.075),
        brow_thickness=u(0.012, 0.02),
        brow_arch=u(0.01, 0.03),
        nose_length=nose_length,
        nose_width=a * u(0.13, 0.18),
        mouth_y=eye_y + nose_length + b * u(0.17, 0.24),
        mouth_width=a * u(0.3, 0.4),
        lips=(u(0.018, 0.028), u(0.022, 0.034)),
        light=(u(0.0, 2 * np.pi), u(0.1, 0.3)),
        intensity=u(0.8, 1.2),
    )


class _Canvas:
    """Float32 image with normalized pixel-centre grids and alpha painting."""

    def __init__(self, height: int, width: int, background: Color) -> None:
        self.h, self.w = height, width
        self.px, self.py = width / 2.0, height / 2.0  # pixels per unit
        self.xs = (np.arange(width, dtype=np.float32) + 0.5) / width * 2 - 1
        self.ys = (np.arange(height, dtype=np.float32) + 0.5) / height * 2 - 1
        self.img = np.empty((height, width, 3), dtype=np.float32)
        self.img[:] = np.asarray(background, dtype=np.float32)

    def window(self, u0: float, u1: float, v0: float, v1: float):
        """Slices and (1, n) / (m, 1) grids covering a normalized box."""
        x0 = max(int(np.floor((u0 + 1) * self.px)) - 2, 0)
        x1 = min(int(np.ceil((u1 + 1) * self.px)) + 2, self.w)
        y0 = max(int(np.floor((v0 + 1) * self.py)) - 2, 0)
        y1 = min(int(np.ceil((v1 + 1) * self.py)) + 2, self.h)
        if x1 <= x0 or y1 <= y0:
            return None
        win = (slice(y0, y1), slice(x0, x1))
        return win, self.xs[None, x0:x1], self.ys[y0:y1, None]

    def paint(self, win, alpha: np.ndarray, color) -> None:
        region = self.img[win]
        alpha = np.broadcast_to(alpha, region.shape[:2])[..., None]
        region += alpha * (np.asarray(color, dtype=np.float32) - region)

    def ellipse(self, U, V, cu, cv, a, b) -> np.ndarray:
        """Anti-aliased coverage of an ellipse (approximate pixel distance)."""
        x = (U - cu) * self.px
        y = (V - cv) * self.py
        ax, by = a * self.px, b * self.py
        f = (x / ax) ** 2 + (y / by) ** 2 - 1
        g = 2 * np.sqrt((x / ax**2) ** 2 + (y / by**2) ** 2)
        return np.clip(0.5 - f / np.maximum(g, 1e-4), 0, 1)

    def band(self, U, V, s, yc, half, hw) -> np.ndarray:
        """Coverage of a stroke ``|v - yc(s)| < half(s)`` for ``|s| < 1``."""
        ycp = yc * self.py
        slope = np.gradient(ycp, axis=1) if ycp.shape[1] > 1 else 0 * ycp
        dist = np.abs(V * self.py - ycp) / np.sqrt(1 + slope**2)
        d = np.maximum(dist - half * self.py, (np.abs(s) - 1) * hw * self.px)
        return np.clip(0.5 - d, 0, 1)

    def below(self, V, edge) -> np.ndarray:
        """Coverage of ``v > edge`` with a one pixel ramp."""
        return np.clip(0.5 + (V - edge) * self.py, 0, 1)


def _bump(U, V, cu, cv, ru, rv) -> np.ndarray:
    """Smooth compactly supported blob, 1 at the centre and 0 outside."""
    r2 = ((U - cu) / ru) ** 2 + ((V - cv) / rv) ** 2
    return np.clip(1 - r2, 0, 1) ** 2


def _draw_head(c: _Canvas, p: SubjectParams) -> None:
    (cu, cv), (a, b) = p.face_center, p.face_radii
    skin, hair = np.array(p.skin), np.array(p.hair_color)
    ha, hb = p.hair_radii
    hcv = cv - 0.12 * b
    hair_bottom = cv + b * p.hair_length
    if (w := c.window(cu - ha, cu + ha, hcv - hb, hair_bottom)) is not None:
        win, U, V = w
        cov = c.ellipse(U, V, cu, hcv, ha, hb) * (1 - c.below(V, hair_bottom))
        c.paint(win, cov, hair * 0.8)
    if (w := c.window(-1, 1, cv + 0.8 * b, 1)) is not None:
        win, U, V = w
        c.paint(win, c.ellipse(U, V, cu, cv + b + 0.45, 1.9 * a, 0.5), p.clothes)
    if (w := c.window(cu - a, cu + a, cv, 1)) is not None:
        win, U, V = w
        c.paint(win, c.ellipse(U, V, cu, cv + 0.8 * b, 0.42 * a, 0.5 * b), skin * 0.82)
    for sgn in (-1, 1):
        eu, ev = cu + sgn * 0.97 * a, p.eye_y + 0.06
        if (w := c.window(eu - 0.2, eu + 0.2, ev - 0.2, ev + 0.2)) is not None:
            win, U, V = w
            c.paint(win, c.ellipse(U, V, eu, ev, 0.13 * a, 0.17 * b), skin * 0.9)
    if (w := c.window(cu - ha, cu + ha, hcv - hb, cv + b)) is not None:
        win, U, V = w
        face = c.ellipse(U, V, cu, cv, a, b)
        c.paint(win, face, skin)
        k2 = np.clip(((U - cu) / a) ** 2 + ((V - cv) / b) ** 2, 0, 1)
        c.paint(win, 0.3 * k2**3 * face, skin * 0.7)
        fh, fc, ft = p.fringe
        amp, freq, phase = p.fringe_wave
        du = U - cu
        edge = cv - fh * b + fc * b * (du / a) ** 2 + ft * du
        edge = edge + amp * np.sin(freq * U + phase)
        c.paint(win, c.ellipse(U, V, cu, hcv, ha, hb) * (1 - c.below(V, edge)), hair)


def _draw_cheeks_nose(c: _Canvas, p: SubjectParams, e: dict[str, float]) -> None:
    cu, (a, b) = p.face_center[0], p.face_radii
    skin = np.array(p.skin)
    blush = skin * np.array([1.0, 0.68, 0.68])
    for sgn in (-1, 1):
        ku, kv = cu + sgn * 0.5 * a, p.mouth_y - 0.17 * b - e["cheek_raise"]
        ru, rv = 0.2 * a, 0.12 * b
        if (w := c.window(ku - ru, ku + ru, kv - rv, kv + rv)) is not None:
            win, U, V = w
            blob = _bump(U, V, ku, kv, ru, rv)
            c.paint(win, (0.15 + e["cheek_blush"]) * blob, blush)
            c.paint(win, 0.5 * e["cheek_blush"] * blob**2, np.minimum(skin * 1.2, 1))
    nb, nw, nl = p.eye_y + p.nose_length, p.nose_width, p.nose_length
    if (
        w := c.window(cu - 2.2 * nw, cu + 2.2 * nw, p.eye_y - 0.1, nb + nw)
    ) is not None:
        win, U, V = w
        c.paint(
            win, 0.14 * _bump(U, V, cu, nb - 0.35 * nl, 1.1 * nw, 0.55 * nl), skin * 0.7
        )
        c.paint(
            win, 0.2 * _bump(U, V, cu, nb - 0.45 * nw, 0.5 * nw, 0.4 * nw), skin * 1.2
        )
        dark = skin * 0.4
        for sgn in (-1, 1):
            nostril = c.ellipse(U, V, cu + sgn * 0.5 * nw, nb, 0.26 * nw, 0.13 * nw)
            c.paint(win, 0.8 * nostril, dark)
            wr = e["nose_wrinkle"]
            if wr > 0:
                for k in range(2):
                    wu = cu + sgn * 0.9 * nw
                    wv = nb - 0.5 * nl + 0.05 * k
                    s = (U - wu) / (0.45 * nw)
                    yc = wv + sgn * 0.4 * nw * s
                    line = c.band(
                        U, V, s, yc, 0.006 * np.sqrt(np.clip(1 - s**2, 0, 1)), 0.45 * nw
                    )
                    c.paint(win, 0.6 * wr * line, skin * 0.5)
        if e["nose_wrinkle"] > 0.5:
            for k in range(2):
                s = (U - cu) / (0.5 * nw)
                yc = p.eye_y + 0.02 + 0.03 * k + 0.01 * s**2
                prof = np.sqrt(np.clip(1 - s**2, 0, 1))
                line = c.band(U, V, s, yc, 0.005 * prof, 0.5 * nw)
                c.paint(win, 0.5 * e["nose_wrinkle"] * line, skin * 0.55)


def _draw_eyes(c: _Canvas, p: SubjectParams, e: dict[str, float]) -> None:
    cu = p.face_center[0]
    skin = np.array(p.skin)
    rx, ratio = p.eye_size
    ry = rx * ratio * (1 + e["eye_open"])
    droop = e["lid_droop"]
    ri = 0.48 * rx
    for sgn in (-1, 1):
        eu, ev = cu + sgn * p.eye_spacing, p.eye_y
        h = max(ry, ri) * 1.4 + 0.01
        if (w := c.window(eu - 1.3 * rx, eu + 1.3 * rx, ev - h, ev + h)) is not None:
            win, U, V = w
            c.paint(
                win,
                0.9 * c.ellipse(U, V, eu, ev, 1.12 * rx, 1.18 * ry + 0.006),
                skin * 0.35,
            )
            sclera = c.ellipse(U, V, eu, ev, rx, ry)
            lid = c.below(V, ev - ry + 2 * ry * droop)
            sc = sclera * lid
            c.paint(win, sc, (0.96, 0.95, 0.92))
            if droop > 0:
                c.paint(win, sclera * (1 - lid), skin * 0.8)
            iu = eu + p.gaze * rx
            c.paint(win, c.ellipse(U, V, iu, ev, ri, ri) * sc, p.iris_color)
            c.paint(
                win, c.ellipse(U, V, iu, ev, 0.45 * ri, 0.45 * ri) * sc, (0.03,) * 3
            )
            hl = c.ellipse(U, V, iu - 0.35 * ri, ev - 0.35 * ri, 0.22 * ri, 0.22 * ri)
            c.paint(win, 0.9 * hl * sc, (1.0, 1.0, 1.0))


def _draw_brows(c: _Canvas, p: SubjectParams, e: dict[str, float]) -> None:
    cu = p.face_center[0]
    rx, ratio = p.eye_size
    by = p.eye_y - rx * ratio - p.brow_gap - e["brow_raise"]
    arch = p.brow_arch + e["brow_arch"]
    tilt = e["brow_tilt"]
    hw = 1.25 * rx
    color = np.array(p.hair_color) * 0.6 + 0.04
    for sgn in (-1, 1):
        bu = cu + sgn * (p.eye_spacing - e["brow_inward"])
        v0 = by - arch - abs(tilt) - 0.04
        if (w := c.window(bu - hw, bu + hw, v0, by + abs(tilt) + 0.04)) is not None:
            win, U, V = w
            s = -sgn * (U - bu) / hw  # +1 at the inner end
            yc = by - arch * (1 - s**2) + tilt * s
            half = p.brow_thickness * np.clip(1 - s**2, 0, 1) ** 0.3 * (1 + 0.2 * s)
            c.paint(win, c.band(U, V, s, yc, half, hw), color)
        glab = e["glabella"]
        if glab > 0:
            gu, gv = cu + sgn * 0.025, by + 0.02
            if (w := c.window(gu - 0.02, gu + 0.02, gv - 0.05, gv + 0.05)) is not None:
                win, U, V = w
                line = c.ellipse(U, V, gu, gv, 0.008, 0.035)
                c.paint(win, 0.5 * glab * line, np.array(p.skin) * 0.6)


def _draw_mouth(c: _Canvas, p: SubjectParams, e: dict[str, float]) -> None:
    mu, my = p.face_center[0], p.mouth_y
    hw = p.mouth_width * (1 + e["mouth_width"])
    thin = 1 - e["lip_thin"]
    tu, tl = p.lips[0] * thin, p.lips[1] * thin
    ext = 0.12
    if (w := c.window(mu - hw, mu + hw, my - ext, my + ext)) is None:
        return
    win, U, V = w
    s = (U - mu) / hw
    q = np.clip(1 - s**2, 0, 1)
    prof, lp = np.sqrt(q), q**0.4
    yc = my - e["smile"] * s**2
    raise_u = e["upper_raise"] * np.clip(1 + e["upper_asym"] * s, 0, None)
    ou = (e["open_upper"] + raise_u) * prof
    ol = e["open_lower"] * prof
    yu, yl = yc - ou, yc + ol
    lip = np.array(p.lip_color)
    c.paint(win, c.band(U, V, s, yu - 0.5 * tu * lp, 0.5 * tu * lp, hw), lip)
    c.paint(win, c.band(U, V, s, yl + 0.5 * tl * lp, 0.5 * tl * lp, hw), lip * 1.08)
    line = 0.005 * prof
    d = np.maximum((yu - line - V) * c.py, (V - yl - line) * c.py)
    d = np.maximum(d, (np.abs(s) - 1) * hw * c.px)
    inside = np.clip(0.5 - d, 0, 1)
    c.paint(win, inside, (0.22, 0.05, 0.07))
    teeth_h = np.minimum(0.3 * (ou + ol), 0.03)
    teeth = (
        inside * (1 - c.below(V, yu + teeth_h)) * np.clip(teeth_h * c.py - 0.5, 0, 1)
    )
    c.paint(win, teeth, (0.93, 0.92, 0.86))


def render_face(
    params: SubjectParams, expression: str, height: int, width: int
) -> np.ndarray:
    """Render one face.

    Parameters
    ----------
    params : SubjectParams
        Subject parameters from :func:`subject_params`.
    expression : str
        One of :data:`EXPRESSIONS`.
    height, width : int
        Image size in pixels.

    Returns
    -------
    numpy.ndarray
        Float32 array of shape ``(height, width, 3)`` with values in [0, 1].
    """
    if expression not in _DELTAS:
        raise ValueError(
            f"unknown expression {expression!r}; expected one of {EXPRESSIONS}"
        )
    if int(height) < 1 or int(width) < 1:
        raise ValueError(f"image size must be positive, got {height} x {width}")
    keys = {k for d in _DELTAS.values() for k in d}
    e = {k: params.intensity * _DELTAS[expression].get(k, 0.0) for k in keys}
    c = _Canvas(int(height), int(width), params.background)
    _draw_head(c, params)
    _draw_cheeks_nose(c, params, e)
    _draw_eyes(c, params, e)
    _draw_brows(c, params, e)
    _draw_mouth(c, params, e)
    angle, strength = params.light
    shade = 1 + strength * (
        np.cos(angle) * c.xs[None, :] + np.sin(angle) * c.ys[:, None]
    )
    c.img *= shade.astype(np.float32)[..., None]
    return np.clip(c.img, 0, 1, out=c.img)


def landmark_fractions(params: SubjectParams) -> np.ndarray:
    """Where a subject's neutral face has the alignment landmarks.

    ``(5, 2)`` ``(x, y)`` as fractions of the image's width and height, in
    :data:`dmask.core.alignment.LANDMARKS` order (eye centres, base of the
    nose, mouth corners, left and right as seen): the drawing's own
    positions, so they hold at any image size.
    """
    cu = params.face_center[0]
    points = [
        (cu - params.eye_spacing, params.eye_y),
        (cu + params.eye_spacing, params.eye_y),
        (cu, params.eye_y + params.nose_length),
        (cu - params.mouth_width, params.mouth_y),
        (cu + params.mouth_width, params.mouth_y),
    ]
    return (np.asarray(points, dtype=np.float64) + 1.0) / 2.0
