"""The report page: one self-contained HTML file of what a model learned."""

from __future__ import annotations

import html
import json
import logging
import os
import shlex
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from dmask.errors import InputError, StoreError
from dmask.io import atomic, stores
from dmask.model import Model
from dmask.report.html import STYLE, table_html
from dmask.report.results import (
    comparison_section,
    headline,
    size_section,
    tuning_section,
)
from dmask.report.sections import (
    faces_section,
    fields_section,
    photographs_section,
    sparse_section,
    strength_section,
)

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_PIXELS", "write_report"]


#: Pixels whose ``r x r`` field is drawn, as fractions ``(y / H, x / W)``.
#: Placed on the average face of :mod:`dmask.datasets.drawing` (synthetic datasets).
DEFAULT_PIXELS = {
    "mouth corner": (0.66, 0.40),
    "eye": (0.485, 0.39),
    "cheek": (0.60, 0.35),
}


def _check_rows(
    rows: Any, name: str, required: Sequence[str | tuple[str, ...]] = ()
) -> list[Mapping[str, Any]]:
    """Rows as a list of mappings holding ``required`` keys."""
    if isinstance(rows, (str, bytes, Mapping)) or not isinstance(rows, Sequence):
        raise InputError(f"{name} must be a list of rows (dicts), got {type(rows)}")
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise InputError(f"{name} row {i} must be a dict, got {type(row)}")
        for key in required:  # a tuple: any one of those keys
            keys = key if isinstance(key, tuple) else (key,)
            if not any(k in row for k in keys):
                shown = " or ".join(repr(k) for k in keys)
                raise InputError(f"{name} row {i} has no {shown}")
    return list(rows)


def _check_pixels(
    pixels: Mapping[str, Any] | None, shape: tuple[int, int]
) -> dict[str, tuple[int, int]]:
    """Named pixels ``(y, x)`` inside an image of ``shape``."""
    height, width = shape
    if pixels is None:
        return {
            name: (
                min(height - 1, round(fy * height)),
                min(width - 1, round(fx * width)),
            )
            for name, (fy, fx) in DEFAULT_PIXELS.items()
        }
    if not isinstance(pixels, Mapping):
        raise InputError(f"pixels must map names to (y, x), got {type(pixels)}")
    out = {}
    for name, where in pixels.items():
        try:
            y, x = (int(v) for v in where)
        except (TypeError, ValueError):
            raise InputError(
                f"pixels[{name!r}] must be (y, x), got {where!r}"
            ) from None
        if not (0 <= y < height and 0 <= x < width):
            raise InputError(
                f"pixels[{name!r}] = ({y}, {x}) is outside the {height}x{width} image"
            )
        out[str(name)] = (y, x)
    return out


def _check_image(label: str, key: str, value: Any) -> np.ndarray:
    array = np.asarray(value)
    good = array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (1, 3))
    if not good or not np.issubdtype(array.dtype, np.number):
        raise InputError(
            f"photographs[{label!r}] {key} must be an (H, W[, 1|3]) image "
            f"in [0, 1], got shape {array.shape}"
        )
    return array


def _check_photographs(photographs: Any) -> list[tuple]:
    """``(label, photo or None, crop, {target: crop}, {target: photo})`` entries.

    An entry is a :class:`dmask.apply.folder.Synthesised` (what
    :func:`dmask.apply.folder.read_synthesised` returns) or a pair
    ``(input, {target: output})`` of faces.
    """
    if not isinstance(photographs, Mapping):
        raise InputError(
            "photographs must map labels to Synthesised records or "
            f"(input, {{target: image}}) pairs, got {type(photographs)}"
        )
    out = []
    for label, entry in photographs.items():
        label = str(label)
        if all(hasattr(entry, a) for a in ("photo", "crop", "crops", "photos")):
            photo, crop = entry.photo, entry.crop
            crops, pasted = dict(entry.crops), dict(entry.photos)
        else:
            try:
                crop, crops = entry
            except (TypeError, ValueError):
                raise InputError(
                    f"photographs[{label!r}] must be a Synthesised record or "
                    "(input, {target: image})"
                ) from None
            photo, pasted = None, {}
        if not isinstance(crops, Mapping):
            raise InputError(f"photographs[{label!r}] outputs must map targets")
        photo = None if photo is None else _check_image(label, "photo", photo)
        crop = _check_image(label, "input", crop)
        crops = {str(t): _check_image(label, str(t), v) for t, v in crops.items()}
        pasted = {str(t): _check_image(label, str(t), v) for t, v in pasted.items()}
        out.append((label, photo, crop, crops, pasted))
    return out


def _header(model: Model, dataset: xr.Dataset, source: str, split: str) -> str:
    attrs = model.dataset.attrs
    height, width = model.image_shape
    if model.kind == "sparse":
        shape = [
            ("kind", f"sparse: up to {model.slots} weight(s) per output value"),
            ("window spanned", f"{model.field} x {model.field}"),
        ]
    else:
        shape = [("receptive field r", model.field)]
    lam = _lam_text(model)
    settings = [
        ("targets", ", ".join(model.targets)),
        *shape,
        ("lambda", lam),
        ("normalize", model.normalize),
        ("image", f"{height} x {width} x {model.channels}"),
        ("training pairs", attrs.get("n_samples", "?")),
        ("training fingerprint", attrs.get("training_fingerprint", "?")),
    ]
    for key in ("origin", "statistics_method", "kernels", "tile_shape"):
        if key in attrs:
            settings.append((key.replace("_", " "), attrs[key]))
    if "dmask_path" in model.dataset.encoding:
        settings.append(("store", model.dataset.encoding["dmask_path"]))
    settings += _provenance(attrs.get("provenance"))

    images = dataset["images"]
    subjects = np.asarray(dataset["subject"].values).astype(str)
    expressions = np.asarray(dataset["expression"].values).astype(str)
    names, counts = np.unique(expressions, return_counts=True)
    summary = [
        ("samples", images.shape[0]),
        ("image", " x ".join(str(s) for s in images.shape[1:]) + f" {images.dtype}"),
        ("subjects", len(set(subjects.tolist()))),
        (
            "expressions",
            ", ".join(f"{n} ({c})" for n, c in zip(names, counts, strict=True)),
        ),
    ]
    if "split" in dataset.coords:
        splits = np.asarray(dataset["split"].values).astype(str)
        parts = [
            f"{s}: {len(set(subjects[splits == s].tolist()))} subjects"
            for s in sorted(set(splits.tolist()))
        ]
        summary.append(("splits", ", ".join(parts)))
    for key in ("origin", "layout", "seed"):
        if key in dataset.attrs:
            summary.append((key, dataset.attrs[key]))
    if "dmask_path" in dataset.encoding:
        summary.append(("store", dataset.encoding["dmask_path"]))
    summary.append(("shown", f"{source} -> each target, split {split!r}"))
    return (
        "<h2 id='model'>Model</h2>"
        + table_html(settings)
        + "<h2 id='dataset'>Dataset</h2>"
        + table_html(summary)
    )


def _lam_text(model: Model) -> str:
    """The model's penalty: a number, ``gcv``/``loo`` (per pixel) or unknown."""
    value = model.dataset.attrs.get("lam")
    if isinstance(value, str):
        return f"{value} (chosen per pixel)"
    if value is None or model.lam == -1.0:
        return "unknown"
    return f"{model.lam:g}"


def _provenance(recorded: Any) -> list[tuple[str, Any]]:
    """Rows of a store's ``provenance`` attribute (JSON), where it has one."""
    if isinstance(recorded, str):
        try:
            recorded = json.loads(recorded)
        except ValueError:
            return [("provenance", recorded)]
    if not isinstance(recorded, Mapping):
        return []
    rows: list[tuple[str, Any]] = []
    if recorded.get("created"):
        rows.append(("model written", recorded["created"]))
    versions = recorded.get("versions")
    if isinstance(versions, Mapping) and versions.get("dmask"):
        rows.append(("written by dmask", versions["dmask"]))
    command = recorded.get("command")
    if command:
        text = command if isinstance(command, str) else shlex.join(map(str, command))
        rows.append(("written by the command", text))
    return rows


def _command_text(command: str | Sequence[str] | None) -> str:
    """The command line that writes the report (by default the one running)."""
    if command is None:
        command = stores.command_line()
        if command is None:
            return "(Python API)"
        command = [os.path.basename(command[0]), *command[1:]]
    if isinstance(command, str):
        return command
    return shlex.join(str(part) for part in command)


def _check_output(path: str | os.PathLike, overwrite: bool) -> Path:
    target = Path(path)
    if target.is_dir():
        raise InputError(f"report {target} is a folder; name an .html file")
    if not target.parent.is_dir():
        raise InputError(f"cannot write report {target}: no folder {target.parent}")
    if target.exists() and not overwrite:
        raise StoreError(f"output {target} already exists (pass --overwrite)")
    return target


def write_report(
    path: str | os.PathLike,
    model: Model,
    dataset: xr.Dataset,
    *,
    source: str = "neutral",
    split: str = "test",
    subjects: int = 4,
    comparison: Sequence[Mapping[str, Any]] | None = None,
    tuning: Sequence[Mapping[str, Any]] | None = None,
    size_curve: Sequence[Mapping[str, Any]] | None = None,
    photographs: Mapping[str, Any] | None = None,
    pixels: Mapping[str, tuple[int, int]] | None = None,
    overwrite: bool = False,
    command: str | Sequence[str] | None = None,
) -> Path:
    """Write one self-contained HTML report of a model.

    Parameters
    ----------
    path : str or path
        Output ``.html`` file, written under a temporary name and then renamed.
    model : Model
        Trained model.
    dataset : xarray.Dataset
        Dataset store from :func:`dmask.io.dataset_store.open_dataset` of the model's
        image shape.
    source, split : str
        Source expression and split of the held-out faces shown.
    subjects : int
        Held-out subjects shown per target.
    comparison : sequence of dict, optional
        Rows of :func:`dmask.evaluation.compare.compare` (any of the keys
        :data:`dmask.report.results.COMPARISON_KEYS`, and others): the
        headline (MR's best against the best baseline and the identity), a
        table of the means per method and one of every row, MSE against r
        when MR ran with several, and each refusal said once.
    tuning : sequence of dict, optional
        Rows with ``field``, ``lam`` (a number, or ``"gcv"``/``"loo"`` with
        the optional ``lam_median`` :func:`dmask.evaluation.tune.tune`
        records), ``expression``, ``mse``: a table of the settings and plots
        of test MSE against ``r`` and ``lambda`` (where there are several).
    size_curve : sequence of dict, optional
        Rows with ``method``, ``n``, ``mse``: test MSE against training size.
    photographs : mapping, optional
        ``label -> Synthesised`` (:func:`dmask.apply.folder.read_synthesised`:
        photograph, aligned crop, synthesised crops, pasted-back photographs),
        or ``label -> (input image, {target: synthesised image})``; arrays
        ``(H, W[, 1|3])`` in [0, 1].
    pixels : mapping of str to (int, int), optional
        Named pixels ``(y, x)`` whose ``r x r`` field is drawn; by default a mouth
        corner, an eye and a cheek (:data:`DEFAULT_PIXELS`).
    overwrite : bool
        Replace an existing file.
    command : str or sequence of str, optional
        The command line shown in the page's header and footer; by default
        the dmask command running (see
        :func:`dmask.io.stores.command_line`), else "(Python API)".

    Returns
    -------
    pathlib.Path
        The report written.
    """
    if not isinstance(model, Model):
        raise InputError(f"model must be a dmask.Model, got {type(model)}")
    if not isinstance(dataset, xr.Dataset) or "images" not in dataset:
        raise InputError("dataset must be a dataset store opened by open_dataset")
    for name in ("subject", "expression"):
        if name not in dataset.coords:
            raise InputError(f"dataset has no {name} coordinate")
    if isinstance(subjects, bool) or not isinstance(subjects, (int, np.integer)):
        raise InputError(f"subjects must be a positive integer, got {subjects!r}")
    if subjects < 1:
        raise InputError(f"subjects must be a positive integer, got {subjects}")
    shape = tuple(dataset["images"].shape[1:])
    if shape != (*model.image_shape, model.channels):
        raise InputError(
            f"dataset has images of {'x'.join(map(str, shape))} but the model "
            f"applies to {'x'.join(map(str, (*model.image_shape, model.channels)))}"
        )
    target = _check_output(path, overwrite)
    chosen = _check_pixels(pixels, model.image_shape)
    comparison_rows = (
        None if comparison is None else _check_rows(comparison, "comparison")
    )
    tuning_rows = (
        None
        if tuning is None
        else _check_rows(tuning, "tuning", ("field", "lam", "expression", "mse"))
    )
    size_rows = (
        None
        if size_curve is None
        else _check_rows(size_curve, "size_curve", ("method", ("n_train", "n"), "mse"))
    )
    entries = None if photographs is None else _check_photographs(photographs)

    started = time.perf_counter()
    sections = [_header(model, dataset, source, split)]
    faces, mean_face, held_out = faces_section(model, dataset, source, split, subjects)
    sections.append(faces)
    sections.append(strength_section(model, dataset, source, split))
    if entries:
        sections.append(photographs_section(entries, model.targets))
    if model.kind == "sparse":
        sections.append(sparse_section(model))
    else:
        sections.append(fields_section(model, mean_face, chosen))
    if comparison_rows is not None:
        sections.append(comparison_section(comparison_rows))
    if tuning_rows is not None:
        sections.append(tuning_section(tuning_rows, model))
    if size_rows is not None:
        sections.append(size_section(size_rows))

    links = [("model", "Model"), ("dataset", "Dataset"), ("faces", "Held-out faces")]
    links.append(("strength", "Expression strength"))
    if entries:
        links.append(("photographs", "Out-of-dataset images"))
    learned = "What the sparse model learned" if model.kind == "sparse" else None
    links.append(("fields", learned or "What MR learned"))
    for rows, anchor, title in (
        (comparison_rows, "comparison", "Comparison"),
        (tuning_rows, "tuning", "Tuning"),
        (size_rows, "size", "Training set size"),
    ):
        if rows is not None:
            links.append((anchor, title))
    nav = " | ".join(f"<a href='#{a}'>{t}</a>" for a, t in links)
    described = (
        f"sparse, {model.slots} slots"
        if model.kind == "sparse"
        else f"r={model.field}, lambda={_lam_text(model).split(' ')[0]}"
    )
    title = f"dmask report: {', '.join(model.targets)} ({described})"
    written = stores.utc_now()
    stamp = (
        f"dmask {html.escape(stores.package_version('dmask'))}, "
        f"<time datetime='{written}'>"
        f"{written}</time> (UTC), command <code>"
        f"{html.escape(_command_text(command))}</code>"
    )
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p class='note' id='written'>Written by "
        f"{stamp}.</p>"
        + headline(comparison_rows, held_out)
        + f"<nav>{nav}</nav>"
        + "".join(sections)
        + f"<footer class='note'>Written by {stamp}.</footer></body></html>\n"
    )
    atomic.write_text(target, page, sync=True)
    logger.info(
        "report %s written (%.1f MB) in %.1f s",
        target, len(page) / 2**20, time.perf_counter() - started,
    )  # fmt: skip
    return target
