"""Pictures for people: grids of faces (held out) and photographs (pasted back)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dmask.io.photographs import to_uint8

__all__ = ["comparison_grid", "photograph_grid"]


def _to_uint8(image: np.ndarray) -> np.ndarray:
    pixels = to_uint8(image)
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    return pixels


def comparison_grid(
    sources: np.ndarray,
    predicted: Mapping[str, np.ndarray],
    truths: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    subjects: Sequence[str] | None = None,
    gap: int = 4,
) -> None:
    """Write a PNG: one row per expression, ``source | synthesised | true`` per subject.

    Parameters
    ----------
    sources : numpy.ndarray
        ``(S, H, W, C)`` normalised source faces in [0, 1].
    predicted, truths : mapping of str to numpy.ndarray
        Per expression, ``(S, H, W, C)`` synthesised and true faces in [0, 1].
    path : str or path
        Output PNG.
    subjects : sequence of str, optional
        Labels of the ``S`` subjects.
    gap : int
        Pixels between cells.
    """
    from PIL import Image, ImageDraw

    names = list(predicted)
    n_subjects, height, width, _ = sources.shape
    label_w, label_h = 90, 16
    cols = 3 * n_subjects
    canvas = Image.new(
        "RGB",
        (
            label_w + cols * (width + gap) + gap * n_subjects,
            label_h + len(names) * (height + gap),
        ),
        "white",
    )
    draw = ImageDraw.Draw(canvas)
    for s in range(n_subjects):
        x0 = label_w + s * (3 * (width + gap) + gap)
        title = subjects[s] if subjects is not None else f"subject {s}"
        draw.text((x0, 2), f"{title}: source | MR | true", fill="black")
    for row, name in enumerate(names):
        y0 = label_h + row * (height + gap)
        draw.text((4, y0 + height // 2 - 6), name, fill="black")
        for s in range(n_subjects):
            x0 = label_w + s * (3 * (width + gap) + gap)
            for c, image in enumerate(
                (sources[s], predicted[name][s], truths[name][s])
            ):
                cell = Image.fromarray(_to_uint8(image))
                canvas.paste(cell, (x0 + c * (width + gap), y0))
    canvas.save(path)


def photograph_grid(
    entries: Mapping[str, Any],
    path: str | os.PathLike,
    side: int = 160,
    gap: int = 4,
) -> None:
    """Write a PNG: per file, ``photograph | aligned crop | per target, synthesised
    crop and pasted-back photograph``.

    Parameters
    ----------
    entries : mapping of str to Synthesised
        Per label, a :class:`dmask.apply.folder.Synthesised` record (images in
        [0, 1]).
    path : str or path
        Output PNG.
    side : int
        Every image is fitted, aspect kept, into a square of this side.
    gap : int
        Pixels between cells.
    """
    from PIL import Image, ImageDraw

    labels = list(entries)
    targets = list(dict.fromkeys(t for e in entries.values() for t in e.crops))
    targets += [t for e in entries.values() for t in e.photos if t not in targets]
    titles = ["photograph", "aligned crop"]
    for t in targets:
        titles += [f"{t}: synthesised", f"{t}: pasted back"]
    label_w, label_h = 130, 16
    canvas = Image.new(
        "RGB",
        (label_w + len(titles) * (side + gap), label_h + len(labels) * (side + gap)),
        "white",
    )
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(titles):
        draw.text((label_w + c * (side + gap), 2), title, fill="black")
    for row, label in enumerate(labels):
        entry = entries[label]
        y0 = label_h + row * (side + gap)
        draw.text((4, y0 + side // 2 - 6), label, fill="black")
        cells = [entry.photo, entry.crop]
        for t in targets:
            cells += [entry.crops.get(t), entry.photos.get(t)]
        for c, image in enumerate(cells):
            if image is None:
                continue
            cell = Image.fromarray(_to_uint8(image))
            scale = side / max(cell.size)
            size = (
                max(1, round(cell.width * scale)),
                max(1, round(cell.height * scale)),
            )
            cell = cell.resize(size, Image.Resampling.LANCZOS)
            x = label_w + c * (side + gap) + (side - size[0]) // 2
            canvas.paste(cell, (x, y0 + (side - size[1]) // 2))
    canvas.save(path)
