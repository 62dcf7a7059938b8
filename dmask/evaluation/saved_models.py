"""The models ``compare`` trains, saved as model stores for ``dmask apply``.

MR is saved as it was trained (an ``r x r`` field per pixel, one store per
field, the targets side by side). The lasso and OMP baselines, one sparse
regression per output value over the whole image, are saved as sparse models
(:mod:`dmask.core.sparse`): their few non-zero weights per output value, read
anywhere in the image and in any channel, and their intercepts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse

from dmask.core import sparse
from dmask.errors import InputError
from dmask.graph import runtime
from dmask.io import model_store
from dmask.io.reference import UNKNOWN_LAM
from dmask.model import Model

__all__ = ["SAVED_METHODS", "check_folder", "save", "sparse_from_rows"]

logger = logging.getLogger(__name__)

#: Baselines saved besides MR: those whose weights are a sparse model.
SAVED_METHODS = ("lasso", "omp")


def _store_names(methods: Sequence[str], fields: Sequence[int]) -> list[str]:
    names = [
        f"{m}_r{r}.zarr" for m in ("mr", "mr_joint") if m in methods for r in fields
    ]
    return names + [f"{m}.zarr" for m in SAVED_METHODS if m in methods]


def check_folder(
    folder: str | os.PathLike, methods: Sequence[str], fields: Sequence[int]
) -> None:
    """Refuse, before any training, a folder where a store to save already exists."""
    for name in _store_names(methods, fields):
        if os.path.lexists(Path(folder) / name):
            raise InputError(f"save_models: {Path(folder) / name} already exists")
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise InputError(f"save_models: {folder} is not a folder")


def sparse_from_rows(
    rows: Mapping[str, tuple[Any, np.ndarray]],
    shape: tuple[int, int, int],
    origin: str,
) -> Model:
    """A sparse model from per-target ``(coef, intercept)``.

    ``coef`` is a sparse ``d x d`` matrix, ``d = H * W * C``, a row per output
    value and a column per input value, both flat in ``(y, x, channel)`` order.
    """
    height, width, channels = shape
    d = height * width * channels
    names = list(rows)
    parts = []
    for name in names:
        coef, intercept = rows[name]
        if coef.shape != (d, d) or intercept.shape != (d,):
            raise InputError(
                f"weights of {name!r} have shape {coef.shape}, expected {(d, d)}"
            )
        augmented = scipy.sparse.hstack(
            [coef, scipy.sparse.csr_matrix(intercept.reshape(d, 1))], format="csr"
        )
        augmented.sort_indices()
        parts.append(sparse.slots_from_csr(augmented))
    slots = max(index.shape[1] for index, _, _ in parts)
    runtime.check_process_memory(
        2 * sparse.sparse_bytes(len(names) * d, slots),
        f"saving {origin} ({slots} weights for its widest output value)",
        "save fewer targets, or leave --save-models out",
    )
    index = np.full((len(names), d, slots), sparse.UNUSED, dtype=sparse.INDEX_DTYPE)
    weight = np.zeros((len(names), d, slots))
    bias = np.empty((len(names), d))
    for t, (part_index, part_weight, part_bias) in enumerate(parts):
        index[t, :, : part_index.shape[1]] = part_index
        weight[t, :, : part_weight.shape[1]] = part_weight
        bias[t] = part_bias
    span = 2 * sparse.slot_reach(index, height, width, channels) + 1
    attrs = model_store.ModelAttrs(
        field=span,
        lam=UNKNOWN_LAM,
        normalize="minmax",
        height=height,
        width=width,
        channels=channels,
        n_samples=0,
        single_target=False,
        training_fingerprint=origin,
        tile_shape=(0, 0),
        origin=origin,
    )
    grid = (len(names), height, width, channels, slots)
    return Model(
        model_store.sparse_model_dataset(
            index.reshape(grid),
            weight.reshape(grid),
            bias.reshape(grid[:-1]),
            names,
            attrs,
        )
    )


def _joined_mr(models: Mapping[str, Model]) -> Model:
    """One MR model with the targets of several single-target ones."""
    names = list(models)
    first = models[names[0]]
    weight = np.stack([np.asarray(m.weights().values) for m in models.values()])
    bias = np.stack([np.asarray(m.bias().values) for m in models.values()])
    attrs = {
        **first.dataset.attrs,
        "single_target": False,
        "training_fingerprint": "dmask compare",
        "origin": "dmask compare",
    }
    attrs.pop("format", None)
    attrs.pop("format_version", None)
    return Model(model_store.model_dataset(weight, bias, names, first.field, attrs))


def save(
    trained: Mapping[str, Mapping[str, Any]],
    folder: str | os.PathLike,
    shape: tuple[int, int, int],
) -> list[str]:
    """Write every method's trained targets as a store in ``folder``; their paths."""
    os.makedirs(folder, exist_ok=True)
    written = []
    for label, per_target in trained.items():
        if not per_target:
            continue
        if label.startswith(("mr r=", "mr_joint r=")):
            model = _joined_mr(per_target)
            method, field = label.split(" r=")
            name = f"{method}_r{field}.zarr"
        elif label in SAVED_METHODS:
            model = sparse_from_rows(per_target, shape, f"dmask compare: {label}")
            name = f"{label}.zarr"
        else:
            continue
        path = os.path.join(folder, name)
        model.save(path)
        logger.info("saved %s (%s) to %s", label, ", ".join(per_target), path)
        written.append(path)
    return written
