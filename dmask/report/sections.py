"""The report's sections of images: held-out faces, strengths, photographs, fields."""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from dmask.core import field_maps, sparse
from dmask.core.minmax import normalize_block, normalize_images
from dmask.errors import StoreError
from dmask.graph import inputs
from dmask.io import dataset_store
from dmask.model import Model
from dmask.report.html import (
    as_pixels,
    colour_bar_img,
    figure_uri,
    heat_map,
    img_tag,
    new_figure,
    show_map,
)

logger = logging.getLogger(__name__)

__all__ = ["ERROR_PERCENTILE", "MEAN_FACES", "STRIP_BYTES", "HeldOut"]


#: Bytes of model weights read at a time.
STRIP_BYTES = 32 * 2**20


#: Percentile of the shown errors where the heat maps' colour scale ends.
ERROR_PERCENTILE = 99.5


#: Source faces averaged for the face the chosen pixels are marked on.
MEAN_FACES = 64


def _display_scale(images: np.ndarray, minmax: bool, peak: float) -> np.ndarray:
    """Images in the model's scale (min-max per image, else ``/ peak``), float64."""
    if minmax:
        return normalize_images(images)
    return normalize_block(images, None, None) / peak


@dataclass(frozen=True)
class HeldOut:
    """MR's and the identity's errors on the held-out faces a report shows.

    Means over the faces of per-face MSE and PSNR (peak 1), in the scale the
    model sees (min-max normalised, else stored values over the peak).
    """

    faces: int
    targets: int
    mse: float
    psnr: float
    identity_mse: float
    identity_psnr: float


def _psnr(mse: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(1.0 / mse)


def faces_section(
    model: Model, dataset: xr.Dataset, source: str, split: str, subjects: int
) -> tuple[str, np.ndarray | None, HeldOut | None]:
    """Held-out grids per target, the mean source face (None if no pairs) and
    the errors of the faces shown (None if none)."""
    minmax = model.normalize == "minmax"
    peak = 1.0 if minmax else dataset_store.value_peak(dataset)
    names = np.asarray(dataset["subject"].values).astype(str)
    images = dataset["images"].data
    cache: dict[tuple[int, ...], tuple[np.ndarray, dict[str, np.ndarray]]] = {}
    found: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray, Any]] = []
    notes: list[str] = []
    all_sources: np.ndarray | None = None
    for target in model.targets:
        try:
            src_idx, tgt_idx = dataset_store.pair_indices(
                dataset, source, [target], split
            )
        except StoreError as exc:
            logger.warning("report: no held-out faces for %s: %s", target, exc)
            notes.append(f"{target}: {exc}")
            continue
        if all_sources is None:
            all_sources = src_idx
        src_idx, truth_idx = src_idx[:subjects], tgt_idx[target][:subjects]
        key = tuple(src_idx.tolist())
        if key not in cache:
            raw = inputs.as_numpy(images[src_idx])[0]
            predicted = model.predict(raw)
            if not isinstance(predicted, Mapping):
                predicted = {model.targets[0]: predicted}
            shown = _display_scale(raw, minmax, peak)
            scale = 1.0 if minmax else peak
            cache[key] = shown, {t: np.asarray(v) / scale for t, v in predicted.items()}
        shown, predicted = cache[key]
        truth = _display_scale(inputs.as_numpy(images[truth_idx])[0], minmax, peak)
        error = np.abs(predicted[target] - truth).mean(axis=-1)
        found.append((target, names[src_idx], shown, predicted[target], truth, error))

    parts = ["<h2 id='faces'>Held-out faces</h2>"]
    if not found:
        parts.append("<p>No held-out pairs to show.</p>")
    else:
        errors = np.concatenate([item[5].ravel() for item in found])
        vmax = float(np.percentile(errors, ERROR_PERCENTILE)) or float(errors.max())
        bar = colour_bar_img(vmax, "mean |error| over channels")
        parts.append(
            f"<p class='note'>{html.escape(source)} faces of split "
            f"{html.escape(split)!r}, as the model sees them "
            f"({'min-max normalised' if minmax else 'scaled to [0, 1]'}); the error "
            f"maps share one colour scale, 0 to {vmax:.3g} (the {ERROR_PERCENTILE:g}th "
            f"percentile; larger errors, up to {errors.max():.3g}, saturate).</p>"
        )
    for target, labels, shown, predicted, truth, error in found:
        mse = float(np.mean((predicted - truth) ** 2))
        rows = [
            "<tr><th>subject</th><th>input</th><th>synthesised</th><th>true</th>"
            "<th>|error|</th><th></th></tr>"
        ]
        for i, label in enumerate(labels):
            cells = [
                img_tag(as_pixels(shown[i]), f"{label} {source}"),
                img_tag(as_pixels(predicted[i]), f"{label} {target} synthesised"),
                img_tag(as_pixels(truth[i]), f"{label} {target} true"),
                img_tag(heat_map(error[i], vmax), f"{label} {target} absolute error"),
            ]
            colour_bar = ""
            if i == 0:
                colour_bar = (
                    f'<td rowspan="{len(labels)}"><img src="{bar}" '
                    'alt="colour bar of the absolute error"></td>'
                )
            rows.append(
                f"<tr><td>{html.escape(str(label))}</td>"
                + "".join(f"<td>{c}</td>" for c in cells)
                + colour_bar
                + "</tr>"
            )
        parts.append(
            f"<h3>{html.escape(target)}</h3><p class='note'>MSE of these "
            f"{len(labels)} subjects: {mse:.5g}</p><table>{''.join(rows)}</table>"
        )
    for note in notes:
        parts.append(f"<p class='note'>{html.escape(note)}</p>")
    mean_face = None
    if all_sources is not None:
        mean_face = _mean_face(images, all_sources[:MEAN_FACES], minmax, peak)
    scores = None
    if found:
        axes = (1, 2, 3)
        mr = np.concatenate([((p - t) ** 2).mean(axis=axes) for *_, p, t, _ in found])
        same = np.concatenate(
            [((s - t) ** 2).mean(axis=axes) for _, _, s, _, t, _ in found]
        )
        scores = HeldOut(
            faces=len(mr), targets=len(found),
            mse=float(mr.mean()), psnr=float(_psnr(mr).mean()),
            identity_mse=float(same.mean()), identity_psnr=float(_psnr(same).mean()),
        )  # fmt: skip
    return "".join(parts), mean_face, scores


def _mean_face(
    images: Any, index: np.ndarray, minmax: bool, peak: float, block: int = 16
) -> np.ndarray:
    """Mean of some source faces in the model's scale, read a block at a time."""
    total = np.zeros(images.shape[1:])
    for start in range(0, len(index), block):
        block_images = inputs.as_numpy(images[index[start : start + block]])[0]
        total += _display_scale(block_images, minmax, peak).sum(axis=0)
    return total / max(1, len(index))


#: The expression strengths of the report's strip (0: the input, 1: the model).
STRENGTHS: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0)


def strength_section(
    model: Model,
    dataset: xr.Dataset,
    source: str,
    split: str,
    strengths: Sequence[float] = STRENGTHS,
) -> str:
    """One held-out face per target at several expression strengths.

    ``x + alpha (model(x) - x)`` (:meth:`dmask.Model.predict`'s ``strength``):
    0 is the input, 1 the model, values between interpolate, above 1
    exaggerate. The face is the split's first ``source`` face.
    """
    minmax = model.normalize == "minmax"
    scale = 1.0 if minmax else dataset_store.value_peak(dataset)
    head = "".join(f"<th>{html.escape(f'{a:g}')}</th>" for a in strengths)
    parts = ["<h2 id='strength'>Expression strength</h2>"]
    chosen = np.asarray(dataset["expression"].values).astype(str) == source
    if split and "split" in dataset.coords:
        chosen &= np.asarray(dataset["split"].values).astype(str) == split
    first = np.flatnonzero(chosen)[:1]
    if not len(first):
        where = f"{source} face of split {split!r}" if split else f"{source} face"
        return "".join([*parts, f"<p>No {html.escape(where)} to show.</p>"])
    raw = inputs.as_numpy(dataset["images"].data[first])[0]
    label = str(np.asarray(dataset["subject"].values)[first[0]])
    by_strength = []
    for alpha in strengths:
        predicted = model.predict(raw, strength=alpha)
        if not isinstance(predicted, Mapping):
            predicted = {model.targets[0]: predicted}
        by_strength.append({t: np.asarray(v)[0] / scale for t, v in predicted.items()})
    rows = [f"<tr><th>target</th>{head}</tr>"]
    for target in model.targets:
        cells = [
            img_tag(
                as_pixels(np.clip(faces[target], 0, 1)),
                f"{label} {target} strength {a:g}",
            )
            for a, faces in zip(strengths, by_strength, strict=True)
        ]
        rows.append(
            f"<tr><td>{html.escape(target)}</td>"
            + "".join(f"<td>{c}</td>" for c in cells)
            + "</tr>"
        )
    parts.append(
        f"<p class='note'>Subject {html.escape(label)}'s {html.escape(source)} face "
        "at expression strength alpha: x + alpha (model(x) - x); 0 is the input, "
        "1 the model, above 1 exaggerates (<code>dmask apply --strength</code>).</p>"
    )
    parts.append(f"<table>{''.join(rows)}</table>")
    return "".join(parts)


def photographs_section(entries: list[tuple], targets: list[str]) -> str:
    """Per file and target: photograph | aligned crop | synthesised | pasted back.

    ``entries`` are ``(label, photo or None, crop, {target: crop},
    {target: photo})``; the photograph and its aligned crop span the file's
    rows.
    """
    columns = list(
        dict.fromkeys(t for *_, crops, photos in entries for t in (*crops, *photos))
    )
    order = [t for t in targets if t in columns] + [
        t for t in columns if t not in targets
    ]
    titles = ["", "photograph", "aligned crop", "target", "synthesised", "pasted back"]
    head = "".join(f"<th>{html.escape(t)}</th>" for t in titles)
    rows = [f"<tr>{head}</tr>"]
    for label, photo, crop, crops, photos in entries:
        shown = [t for t in order if t in crops or t in photos]
        span = max(1, len(shown))
        lead = (
            f"<td rowspan='{span}'>{html.escape(label)}</td>"
            + f"<td rowspan='{span}'>"
            + (
                ""
                if photo is None
                else img_tag(as_pixels(photo), f"{label} photo", photo=True)
            )
            + f"</td><td rowspan='{span}'>"
            + img_tag(as_pixels(crop), f"{label} aligned crop")
            + "</td>"
        )
        for i, target in enumerate(shown or [""]):
            cells = [html.escape(target)]
            for images, what in ((crops, "synthesised"), (photos, "pasted back")):
                cells.append(
                    img_tag(
                        as_pixels(images[target]),
                        f"{label} {target} {what}",
                        photo=images is photos,
                    )
                    if target in images
                    else ""
                )
            rows.append(
                "<tr>"
                + (lead if i == 0 else "")
                + "".join(f"<td>{c}</td>" for c in cells)
                + "</tr>"
            )
    return (
        "<h2 id='photographs'>Out-of-dataset images</h2>"
        "<p>Each face is aligned by its landmarks to where the training faces "
        "have theirs (else its face box, else the centre), synthesised, and "
        "pasted back into the photograph under a feathered mask.</p>"
        f"<table>{''.join(rows)}</table>"
    )


def _own_channel(model: Model) -> slice:
    """Channel 0's weights on its own input channel, along ``k``.

    All of ``k`` for a per-channel model; every ``C``-th entry for a joint
    colour model (``k`` offset-major, input channel last).
    """
    joint = model.dataset.attrs.get("channel_mode") == "joint"
    return slice(0, None, model.channels if joint else 1)


def _weight_maps(model: Model, target: str) -> tuple[np.ndarray, ...]:
    """Centre weight, off-centre mass and bias of channel 0, a strip at a time."""
    position = model.targets.index(target)
    weight = model.dataset["weight"].data
    own = _own_channel(model)
    bias = model.dataset["bias"].data
    height, width = model.image_shape
    k = model.field * model.field
    rows = max(1, STRIP_BYTES // (8 * width * k))
    centre = np.empty((height, width))
    mass = np.empty((height, width))
    for y0 in range(0, height, rows):
        strip = inputs.as_numpy(weight[position, y0 : y0 + rows, :, 0, own])[0]
        centre[y0 : y0 + rows] = field_maps.centre_weight(strip, model.field)
        mass[y0 : y0 + rows] = field_maps.off_centre_mass(strip, model.field)
    return (
        centre,
        mass,
        np.asarray(inputs.as_numpy(bias[position, :, :, 0])[0], dtype=np.float64),
    )


def _marked_face(face: np.ndarray | None, pixels: dict[str, tuple[int, int]]) -> str:
    """Data URI of the mean face with the chosen pixels marked and named."""
    figure, (axes,) = new_figure(1, 1.0, row_height=3.6)
    if face is not None:
        pixels01 = as_pixels(face)
        axes.imshow(pixels01, cmap="gray" if pixels01.ndim == 2 else None)
        axes.set_title("mean input face", fontsize=9)
    axes.set_xticks([])
    axes.set_yticks([])
    for name, (y, x) in pixels.items():
        axes.plot(x, y, marker="o", markersize=7, markerfacecolor="none",
                  markeredgecolor="#00e5ff", markeredgewidth=2)  # fmt: skip
        axes.annotate(
            name, (x, y), xytext=(6, -6), textcoords="offset points", fontsize=8,
            color="#00e5ff", fontweight="bold",
        )  # fmt: skip
    return figure_uri(figure)


def fields_section(
    model: Model, mean_face: np.ndarray | None, pixels: dict[str, tuple[int, int]]
) -> str:
    height, width = model.image_shape
    r = model.field
    channel = str(model.dataset["channel"].values[0])
    parts = [
        "<h2 id='fields'>What MR learned</h2>",
        f"<p class='note'>Channel {html.escape(channel)}. Centre weight: the weight "
        "of each output pixel on its own input pixel; off-centre mass: sum of |w| "
        f"over the other {r * r - 1} window offsets; bias: the constant term. "
        "The r x r fields below are the weights of the pixels marked on the mean "
        "input face (rows: dy, columns: dx; offsets outside the image weigh 0)."
        + (
            " A joint colour model: the weights on the channel's own input."
            if model.dataset.attrs.get("channel_mode") == "joint"
            else ""
        )
        + "</p>",
        f'<img src="{_marked_face(mean_face, pixels)}" alt="chosen pixels marked '
        'on the mean input face">',
    ]
    weight = model.dataset["weight"].data
    for target in model.targets:
        position = model.targets.index(target)
        centre, mass, bias = _weight_maps(model, target)
        figure, axes = new_figure(3, width / height)
        show_map(figure, axes[0], centre, "centre weight", signed=True)
        show_map(figure, axes[1], mass, "off-centre mass sum |w|", signed=False)
        show_map(figure, axes[2], bias, "bias", signed=True)
        maps = figure_uri(figure)
        slabs = inputs.as_numpy(
            *(
                weight[position, y : y + 1, x : x + 1, 0, _own_channel(model)]
                for y, x in pixels.values()
            )
        )
        windows = {
            name: field_maps.field_at(slab, r, 0, 0)
            for name, slab in zip(pixels, slabs, strict=True)
        }
        parts.append(f"<h3>{html.escape(target)}</h3>")
        parts.append(f'<img src="{maps}" alt="{html.escape(target)} weight maps">')
        if windows:
            parts.append(
                f'<img src="{_windows_figure(windows, pixels, r)}" '
                f'alt="{html.escape(target)} fields at chosen pixels">'
            )
    return "".join(parts)


def sparse_section(model: Model) -> str:
    """What a sparse model learned: where each output value reads, per target."""
    height, width = model.image_shape
    channel = str(model.dataset["channel"].values[0])
    parts = [
        "<h2 id='fields'>What the sparse model learned</h2>",
        f"<p class='note'>A sparse model: {model.slots} weight(s) per output value "
        f"(at most), anywhere in the image, spanning up to {model.field} x "
        f"{model.field} pixels. Channel {html.escape(channel)}. Own weight: the "
        "weight of each output pixel on its own input value; elsewhere: sum of |w| "
        "over the other values it reads; distance: the |w|-weighted mean distance "
        "(pixels, the larger of |dy| and |dx|) of what it reads; bias: the "
        "constant term.</p>",
    ]
    for position, target in enumerate(model.targets):
        index, weight, bias = inputs.as_numpy(
            model.dataset["source"].data[position],
            model.dataset["weight"].data[position],
            model.dataset["bias"].data[position, :, :, 0],
        )
        own, elsewhere, distance = sparse.slot_maps(
            index, weight, width, model.channels, 0
        )
        figure, axes = new_figure(4, width / height)
        show_map(figure, axes[0], own, "own weight", signed=True)
        show_map(figure, axes[1], elsewhere, "elsewhere sum |w|", signed=False)
        show_map(figure, axes[2], distance, "distance read (px)", signed=False)
        show_map(figure, axes[3], np.asarray(bias, np.float64), "bias", signed=True)
        median = float(np.median(distance))
        parts.append(f"<h3>{html.escape(target)}</h3>")
        parts.append(
            f"<p class='note'>Median distance read: {median:.1f} pixels.</p>"
            f'<img src="{figure_uri(figure)}" alt="{html.escape(target)} slot maps">'
        )
    return "".join(parts)


def _windows_figure(
    windows: dict[str, np.ndarray], pixels: dict[str, tuple[int, int]], field: int
) -> str:
    """Data URI of the ``r x r`` fields side by side on one colour scale."""
    from matplotlib.patches import Rectangle

    limit = max(float(np.max(np.abs(w))) for w in windows.values()) or 1.0
    figure, axes = new_figure(len(windows), 1.0, row_height=2.4)
    image = None
    b = field // 2
    for ax, (name, values) in zip(axes, windows.items(), strict=True):
        image = ax.imshow(
            values, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest",
            extent=(-b - 0.5, b + 0.5, b + 0.5, -b - 0.5),
        )  # fmt: skip
        ax.add_patch(Rectangle((-0.5, -0.5), 1, 1, fill=False, lw=1.5, ec="black"))
        y, x = pixels[name]
        ax.set_title(f"{name} ({y}, {x})", fontsize=9)
        ticks = list(range(-b, b + 1)) if field <= 9 else [-b, 0, b]
        ax.set_xticks(ticks)
        ax.set_yticks(ticks)
        ax.tick_params(labelsize=7)
        if field <= 7:
            for i in range(field):
                for j in range(field):
                    value = values[i, j]
                    ax.text(
                        j - b, i - b, f"{value:.2f}", ha="center", va="center",
                        fontsize=6 if field > 5 else 7,
                        color="white" if abs(value) > 0.6 * limit else "black",
                    )  # fmt: skip
    figure.colorbar(image, ax=list(axes), shrink=0.85)
    return figure_uri(figure)
