"""The report's sections: held-out faces, photographs, fields, comparison, tuning."""

from __future__ import annotations

import html
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from dmask.checks import LAM_SELECTIONS
from dmask.core import field_maps, sparse
from dmask.core.minmax import normalize_block, normalize_images
from dmask.errors import InputError, StoreError
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

__all__ = ["COMPARISON_KEYS", "ERROR_PERCENTILE", "MEAN_FACES", "STRIP_BYTES"]


#: Columns of the comparison table, in order (others follow).
COMPARISON_KEYS = (
    "method", "expression", "mse", "psnr", "ssim", "n_parameters",
    "train_seconds", "peak_memory_mib", "status",
)  # fmt: skip


#: Bytes of model weights read at a time.
STRIP_BYTES = 32 * 2**20


#: Percentile of the shown errors where the heat maps' colour scale ends.
ERROR_PERCENTILE = 99.5


#: Source faces averaged for the face the chosen pixels are marked on.
MEAN_FACES = 64


def _number(row: Mapping[str, Any], key: str, name: str, i: int) -> float:
    value = row[key]
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InputError(
            f"{name} row {i}: {key} must be a number, got {value!r}"
        ) from None


def _display_scale(images: np.ndarray, minmax: bool, peak: float) -> np.ndarray:
    """Images in the model's scale (min-max per image, else ``/ peak``), float64."""
    if minmax:
        return normalize_images(images)
    return normalize_block(images, None, None) / peak


def faces_section(
    model: Model, dataset: xr.Dataset, source: str, split: str, subjects: int
) -> tuple[str, np.ndarray | None]:
    """Held-out grids per target and the mean source face (None if no pairs)."""
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
    return "".join(parts), mean_face


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


def _format_cell(key: str, value: Any) -> tuple[str, bool]:
    """Text of one table cell and whether it is a number."""
    if value is None:
        return "", False
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)), False
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}", True
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return "", True
        if math.isinf(value):
            return "inf" if value > 0 else "-inf", True
        formats = {"mse": ".5g", "psnr": ".2f", "ssim": ".4f", "peak_memory_mib": ".0f"}
        return format(value, formats.get(key, ".4g")), True
    return str(value), False


def _is_mr(method: Any) -> bool:
    text = str(method).strip().lower()
    return text == "mr" or text.startswith(("mr ", "mr-", "mr_", "mr(", "dmask"))


def comparison_section(rows: list[Mapping[str, Any]]) -> str:
    present = {key for row in rows for key in row}
    columns = [k for k in COMPARISON_KEYS if k in present]
    columns += [
        k for k in dict.fromkeys(k for row in rows for k in row) if k not in columns
    ]
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in columns)
    lines = [f"<tr>{head}</tr>"]
    for row in rows:
        cells = []
        for key in columns:
            text, numeric = _format_cell(key, row.get(key))
            css = ' class="num"' if numeric else ""
            cells.append(f"<td{css}>{html.escape(text)}</td>")
        css = ' class="mr"' if _is_mr(row.get("method", "")) else ""
        lines.append(f"<tr{css}>{''.join(cells)}</tr>")
    return (
        "<h2 id='comparison'>Comparison</h2><p class='note'>MR rows highlighted.</p>"
        f"<table class='data' id='comparison-table'>{''.join(lines)}</table>"
    )


def _mean_by(points: list[tuple[Any, float]]) -> dict[Any, float]:
    sums: dict[Any, list[float]] = {}
    for key, value in points:
        sums.setdefault(key, []).append(value)
    return {key: float(np.mean(values)) for key, values in sums.items()}


def tuning_section(rows: list[Mapping[str, Any]], model: Model) -> str:
    points = []
    for i, row in enumerate(rows):
        if row["lam"] in LAM_SELECTIONS:  # a penalty per pixel: no point on the axis
            continue
        field = _number(row, "field", "tuning", i)
        lam = _number(row, "lam", "tuning", i)
        mse = _number(row, "mse", "tuning", i)
        if all(math.isfinite(v) for v in (field, lam, mse)):
            points.append((int(field), lam, str(row["expression"]), mse))
    left = len(rows) - len(points)
    if any(p[2] == "mean" for p in points):
        points = [p for p in points if p[2] == "mean"]
        what = "the 'mean' rows"
    else:
        what = "mean over expressions"
    table = _mean_by([((f, lam), mse) for f, lam, _, mse in points])
    parts = ["<h2 id='tuning'>Tuning</h2>"]
    if not table:
        return parts[0] + "<p>No tuning rows with a finite MSE.</p>"
    fields_ = sorted({f for f, _ in table})
    lams = sorted({lam for _, lam in table})
    (best_f, best_lam), best = min(table.items(), key=lambda item: item[1])
    figure, axes = new_figure(2, 1.35, row_height=3.2)
    for lam in lams:
        xs = [f for f in fields_ if (f, lam) in table]
        axes[0].plot(xs, [table[f, lam] for f in xs], marker="o", label=f"λ={lam:g}")
    for f in fields_:
        xs = [lam for lam in lams if (f, lam) in table]
        axes[1].plot(xs, [table[f, lam] for lam in xs], marker="o", label=f"r={f}")
    if (model.field, model.lam) in table:
        value = table[model.field, model.lam]
        axes[0].plot(model.field, value, marker="*", ms=14, color="black", ls="none",
                     label="this model")  # fmt: skip
        axes[1].plot(model.lam, value, marker="*", ms=14, color="black", ls="none",
                     label="this model")  # fmt: skip
    axes[0].set_xlabel("receptive field r")
    axes[0].set_xticks(fields_)
    axes[1].set_xlabel("lambda")
    if len(lams) > 1 and lams[0] > 0 and lams[-1] / lams[0] >= 10:
        axes[1].set_xscale("log")
    for ax, title in zip(
        axes, ("test MSE against r", "test MSE against lambda"), strict=True
    ):
        ax.set_ylabel(f"test MSE ({what})")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    parts.append(
        f'<img src="{figure_uri(figure)}" alt="test MSE against r and lambda">'
    )
    parts.append(
        f"<p class='note'>Lowest test MSE: r = {best_f}, lambda = {best_lam:g} "
        f"(MSE {best:.5g}); {len(points)} rows used"
        + (f", {left} left out (no finite MSE, or a penalty per pixel)" if left else "")
        + ".</p>"
    )
    return "".join(parts)


def size_section(rows: list[Mapping[str, Any]]) -> str:
    points = []
    for i, row in enumerate(rows):
        n = _number(row, "n_train" if "n_train" in row else "n", "size_curve", i)
        mse = _number(row, "mse", "size_curve", i)
        if math.isfinite(n) and math.isfinite(mse):
            points.append(((str(row["method"]), n), mse))
    table = _mean_by(points)
    head = "<h2 id='size'>Training set size</h2>"
    if not table:
        return head + "<p>No size-curve rows with a finite MSE.</p>"
    figure, (axes,) = new_figure(1, 1.6, row_height=3.4)
    methods = list(dict.fromkeys(m for m, _ in table))
    for method in methods:
        ns = sorted(n for m, n in table if m == method)
        mr = _is_mr(method)
        axes.plot(
            ns, [table[method, n] for n in ns], marker="o", label=method,
            lw=2.8 if mr else 1.3, zorder=3 if mr else 2,
        )  # fmt: skip
    ns = [n for _, n in table]
    if min(ns) > 0 and max(ns) / min(ns) >= 10:
        axes.set_xscale("log")
    axes.set_xlabel("training pairs N")
    axes.set_ylabel("test MSE")
    axes.set_title("test MSE against N", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return head + f'<img src="{figure_uri(figure)}" alt="test MSE against N">'
