"""Pictures for people: comparison grids of source, synthesised and true faces."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from dmask.io.photographs import to_uint8

__all__ = ["comparison_grid", "synthesis_grid"]


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


def synthesis_grid(
    inputs: Mapping[str, np.ndarray],
    outputs: Mapping[str, Mapping[str, np.ndarray]],
    path: str | os.PathLike,
    gap: int = 4,
) -> None:
    """Write a PNG: one row per input image, ``input | each synthesised target``.

    Parameters
    ----------
    inputs : mapping of str to numpy.ndarray
        Per label, the ``(H, W, C)`` input face in [0, 1].
    outputs : mapping of str to mapping of str to numpy.ndarray
        Per label, per target, the ``(H, W, C)`` synthesised face in [0, 1].
    path : str or path
        Output PNG.
    gap : int
        Pixels between cells.
    """
    from PIL import Image, ImageDraw

    labels = list(inputs)
    targets = list(next(iter(outputs.values()))) if outputs else []
    height, width = next(iter(inputs.values())).shape[:2]
    label_w, label_h = 110, 16
    canvas = Image.new(
        "RGB",
        (
            label_w + (1 + len(targets)) * (width + gap),
            label_h + len(labels) * (height + gap),
        ),
        "white",
    )
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(["input", *targets]):
        draw.text((label_w + c * (width + gap), 2), title, fill="black")
    for row, label in enumerate(labels):
        y0 = label_h + row * (height + gap)
        draw.text((4, y0 + height // 2 - 6), label, fill="black")
        cells = [inputs[label], *(outputs[label][t] for t in targets)]
        for c, image in enumerate(cells):
            canvas.paste(
                Image.fromarray(_to_uint8(image)), (label_w + c * (width + gap), y0)
            )
    canvas.save(path)
