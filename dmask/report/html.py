"""HTML pieces of the report: images as data URIs, heat maps, colour bars, tables."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from dmask.io.photographs import to_uint8

__all__ = ["MAX_SIDE", "MIN_SIDE", "STYLE", "colour_bar_figure"]


#: Faces larger than this (pixels per side) are downscaled for the page.
MAX_SIDE = 256


#: Faces smaller than this are shown enlarged, pixel for pixel.
MIN_SIDE = 96


STYLE = """
body { font-family: sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; }
h1, h2 { border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { padding: 2px 8px; text-align: left; vertical-align: middle; }
table.data td, table.data th { border: 1px solid #ccc; }
table.data td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.mr, tr.best { background: #fff3c4; font-weight: bold; }
img.px { image-rendering: pixelated; }
section.headline { background: #f4f8ff; border: 1px solid #b8cdf0; padding: 0 1em; }
section.headline h2 { border: none; margin: 0.5em 0 0.2em; }
details > summary { cursor: pointer; margin: 0.5em 0; }
footer { margin-top: 2em; border-top: 1px solid #ccc; }
.note { color: #555; font-size: 90%; }
figure { display: inline-block; margin: 0.3em; }
"""


#: JPEG quality of the report's photographs (faces stay PNG, pixel for pixel).
PHOTO_QUALITY = 90


def _data_uri(pixels: np.ndarray, photo: bool = False) -> str:
    """PNG (``photo``: JPEG) data URI of ``(H, W)`` or ``(H, W, 3|4)`` uint8 pixels."""
    from PIL import Image

    buffer = io.BytesIO()
    if photo:
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=PHOTO_QUALITY)
        kind = "jpeg"
    else:
        Image.fromarray(pixels).save(buffer, format="PNG")
        kind = "png"
    return f"data:image/{kind};base64," + base64.b64encode(buffer.getvalue()).decode()


def figure_uri(figure: Any, tight: bool = False) -> str:
    """PNG data URI of a matplotlib figure (``tight``: cropped to its content)."""
    buffer = io.BytesIO()
    figure.savefig(
        buffer, format="png", dpi=100, bbox_inches="tight" if tight else None
    )
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def as_pixels(image: np.ndarray) -> np.ndarray:
    """``(H, W[, C])`` values in [0, 1] as uint8 grey ``(H, W)`` or RGB."""
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return to_uint8(array)


def _fit_page(pixels: np.ndarray) -> np.ndarray:
    """Downscale pixels whose longer side exceeds :data:`MAX_SIDE`."""
    from PIL import Image

    height, width = pixels.shape[:2]
    if max(height, width) <= MAX_SIDE:
        return pixels
    ratio = MAX_SIDE / max(height, width)
    size = (max(1, round(width * ratio)), max(1, round(height * ratio)))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS))


def img_tag(pixels: np.ndarray, alt: str, photo: bool = False) -> str:
    """An ``<img>`` of uint8 pixels, small ones enlarged without smoothing.

    ``photo``: a photograph, sent as JPEG (a tenth of the PNG's bytes).
    """
    pixels = _fit_page(pixels)
    height, width = pixels.shape[:2]
    zoom = max(1, math.ceil(MIN_SIDE / max(height, width)))
    css = ' class="px"' if zoom > 1 else ""
    return (
        f'<img src="{_data_uri(pixels, photo)}" alt="{html.escape(alt)}" '
        f'width="{width * zoom}" height="{height * zoom}"{css}>'
    )


def heat_map(error: np.ndarray, vmax: float, cmap: str = "inferno") -> np.ndarray:
    """RGB uint8 heat map of a 2-D array on the scale ``[0, vmax]``."""
    import matplotlib

    scaled = np.clip(error / vmax, 0.0, 1.0) if vmax > 0 else np.zeros_like(error)
    rgba = matplotlib.colormaps[cmap](scaled, bytes=True)
    return np.ascontiguousarray(rgba[..., :3])


def colour_bar_figure(vmax: float, label: str, cmap: str = "inferno") -> Any:
    """A figure of one vertical colour bar from 0 to ``vmax``, labelled.

    Laid out by matplotlib's constrained layout, so the tick labels and the
    label stay inside the figure whatever their length.
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    figure = Figure(figsize=(1.25, 3.0), layout="constrained")
    axes = figure.add_subplot()
    mappable = ScalarMappable(Normalize(0.0, vmax if vmax > 0 else 1.0), cmap)
    bar = figure.colorbar(mappable, cax=axes, extend="max")
    bar.set_label(label, fontsize=9)
    bar.ax.tick_params(labelsize=8)
    return figure


def colour_bar_img(vmax: float, label: str, cmap: str = "inferno") -> str:
    """Data URI of a vertical colour bar from 0 to ``vmax``."""
    return figure_uri(colour_bar_figure(vmax, label, cmap))


def new_figure(panels: int, aspect: float, row_height: float = 2.6) -> tuple[Any, Any]:
    """A figure of ``panels`` axes side by side, each of ``width / height = aspect``."""
    from matplotlib.figure import Figure

    width = min(16.0, panels * (row_height * aspect + 1.2))
    figure = Figure(figsize=(width, row_height + 0.6), layout="constrained")
    axes = figure.subplots(1, panels, squeeze=False)[0]
    return figure, axes


def show_map(figure: Any, axes: Any, values: np.ndarray, title: str, signed: bool):
    """Draw a 2-D map with its colour bar; signed maps centre 0 on white."""
    finite = values[np.isfinite(values)]
    if signed:
        limit = float(np.max(np.abs(finite))) if finite.size else 1.0
        limit = limit or 1.0
        image = axes.imshow(
            values, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest"
        )
    else:
        image = axes.imshow(values, cmap="magma", interpolation="nearest")
    axes.set_title(title, fontsize=9)
    axes.set_xticks([])
    axes.set_yticks([])
    figure.colorbar(image, ax=axes, shrink=0.85)


def table_html(rows: Sequence[tuple[str, Any]]) -> str:
    body = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in rows
    )
    return f'<table class="data">{body}</table>'
