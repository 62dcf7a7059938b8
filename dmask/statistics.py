"""Train once, solve many: keeping the sufficient statistics, solving from them.

:func:`keep_statistics` sums a dataset's training pairs once, for a largest
field, per fold of subjects, into a statistics store
(:mod:`dmask.io.statistics_store`). :func:`solve` builds a model of any odd
field up to it and any penalty (fixed or chosen per pixel by GCV) from the
store alone, equal to training from the images; leaving folds out gives the
models of k-fold cross-validation. :func:`update` adds new subjects' sums.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from dmask.core.planning import plan_tiles
from dmask.errors import InputError
from dmask.graph import taskgraph
from dmask.graph.statistics import keep_tiles
from dmask.io import dataset_store, locations, locks, stores
from dmask.io.statistics_store import (
    StatisticsInfo,
    create_statistics_template,
    statistics_info,
)
from dmask.model import (
    accumulate,
    bounds_and_fingerprints,
    fold_inputs,
    subject_fingerprints,
)
from dmask.model import solve_statistics as solve

logger = logging.getLogger(__name__)

__all__ = [
    "StatisticsInfo",
    "accumulate",
    "keep_statistics",
    "open_statistics",
    "solve",
    "subject_fingerprints",
    "update",
]


def open_statistics(path: str | os.PathLike) -> StatisticsInfo:
    """What a statistics store holds: field, targets, folds, subjects."""
    return statistics_info(locations.store_path(path))


def _pairs(
    ds: xr.Dataset, source: str, names: Sequence[str], split: str | None
) -> tuple[Any, dict[str, Any], np.ndarray]:
    src_index, tgt_index = dataset_store.pair_indices(ds, source, names, split)
    subjects = np.asarray(ds["subject"].values).astype(str)[src_index]
    src = dataset_store.stored_images(ds, src_index)
    tgts = {name: dataset_store.stored_images(ds, i) for name, i in tgt_index.items()}
    return src, tgts, subjects


def _landmarks_attrs(ds: xr.Dataset) -> dict[str, Any]:
    landmarks = ds.attrs.get("landmarks")
    return {"landmarks": landmarks} if landmarks else {}


def keep_statistics(
    dataset: xr.Dataset | str | os.PathLike,
    out: str | os.PathLike,
    *,
    source: str = "neutral",
    targets: Sequence[str] | None = None,
    field: int = 3,
    folds: int = 1,
    split: str | None = "train",
    normalize: str = "minmax",
    overwrite: bool = False,
    tile_shape: tuple[int, int] | None = None,
    sample_block: int | None = None,
    memory_limit: int | None = None,
    channels: str = "independent",
) -> StatisticsInfo:
    """Sum a dataset store's training pairs once into a statistics store.

    Parameters
    ----------
    dataset : xarray.Dataset or path
        A dataset store.
    out : str or path
        The statistics store to write.
    source : str
        Source expression.
    targets : sequence of str, optional
        Target expressions; all but ``source`` by default.
    field : int
        Largest field ``r_max``: models of every odd ``r <= r_max`` can be
        solved from the store.
    folds : int
        Subject folds kept apart (1: none), for k-fold cross-validation;
        subjects are dealt to them in name order, one each in turn.
    split : str or None
        The split to sum (None: every sample).
    normalize : {"minmax", "none"}
        As in :func:`dmask.fit`.
    overwrite : bool
        Replace an existing store (only once the new one is complete).
    tile_shape, sample_block, memory_limit, channels
        As in :func:`dmask.fit` (``channels="joint"``: the joint colour mode's
        sums, for joint models).

    Returns
    -------
    StatisticsInfo
    """
    ds = dataset_store.opened(dataset)
    names = list(targets) if targets else dataset_store.other_expressions(ds, source)
    if not names:
        raise InputError(f"the dataset has no expression besides {source!r}")
    src, tgts, subjects = _pairs(ds, source, names, split)
    n_folds = int(folds)
    if not 1 <= n_folds <= len(subjects):
        raise InputError(
            f"folds must be between 1 and the {len(subjects)} subjects, got {folds}"
        )
    return accumulate(
        src, tgts, out, field=field, subjects=subjects,
        subject_folds=np.arange(len(subjects)) % n_folds, n_folds=n_folds,
        normalize=normalize, source_name=source,
        attrs=_landmarks_attrs(ds),
        dataset={"path": ds.encoding["dmask_path"], "split": split or ""},
        overwrite=overwrite, tile_shape=tile_shape, sample_block=sample_block,
        memory_limit=memory_limit, inputs_of_run=[ds.encoding["dmask_path"]],
        channels=channels,
    )  # fmt: skip


def update(
    statistics: str | os.PathLike,
    dataset: xr.Dataset | str | os.PathLike,
    *,
    split: str | None = "train",
) -> StatisticsInfo:
    """Add a dataset's subjects to a statistics store.

    Its pairs (the store's source and targets, in ``split``) are summed and
    added to the store's folds (new subjects dealt to the folds with fewest
    first). A subject whose images were already counted (by fingerprint) is
    refused, naming it. The store is rewritten beside the old one and replaces
    it only when complete. A model solved afterwards equals training on the
    union of the subjects.
    """
    info = open_statistics(statistics)
    ds = dataset_store.opened(dataset)
    src, tgts, subjects = _pairs(ds, info.source, info.targets, split)
    if src.shape[1:3] != info.image_shape or src.shape[3] != info.channels:
        raise InputError(
            f"{ds.encoding['dmask_path']} has images of {src.shape[1:]}, but "
            f"{info.path} keeps {(*info.image_shape, info.channels)}"
        )
    labels = ["sources", *(f"targets[{n!r}]" for n in info.targets)]
    arrays = [src, *tgts.values()]
    bounds, fingerprints = bounds_and_fingerprints(arrays, labels)
    seen = dict(zip(info.fingerprints.tolist(), info.subjects.tolist(), strict=True))
    repeated = [
        (name, seen[f])
        for name, f in zip(subjects, fingerprints, strict=True)
        if f in seen
    ]
    if repeated:
        name, old = repeated[0]
        raise InputError(
            f"{len(repeated)} subject(s) of {ds.encoding['dmask_path']} are already "
            f"counted in {info.path} (first: {name}, the same images as {old})"
        )
    counts = info.counts.copy()
    per_fold = np.bincount(info.subject_folds, minlength=info.folds)
    new_folds = np.empty(len(subjects), dtype=np.int64)
    for i in range(len(subjects)):  # each to the fold with fewest subjects
        fold = int(np.argmin(per_fold))
        new_folds[i] = fold
        per_fold[fold] += 1
        counts[fold] += 1
    settings = {k: v for k, v in info.attrs.items() if k not in _STORE_KEYS}
    added = {"path": ds.encoding["dmask_path"], "split": split or ""}
    settings["datasets"] = [*info.datasets, added]
    new_dataset = np.full(len(subjects), len(info.datasets), dtype=np.int64)
    logger.info(
        "adding %d subject(s) of %s to %s", len(subjects), ds.encoding["dmask_path"],
        info.path,
    )  # fmt: skip
    with locks.output_lock(info.path):
        written = create_statistics_template(
            info.path, info.targets, info.image_shape, info.channels, info.field,
            info.tile_shape, counts,
            {"subject": [*info.subjects.tolist(), *subjects],
             "subject_fold": np.concatenate([info.subject_folds, new_folds]),
             "fingerprint": [*info.fingerprints.tolist(), *fingerprints],
             "subject_dataset": np.concatenate([info.subject_datasets, new_dataset])},
            settings, overwrite=True, joint=info.joint,
        )  # fmt: skip
        use = bounds if info.normalize == "minmax" else None
        tasks = keep_tiles(
            fold_inputs(src, list(tgts.values()), use, new_folds, range(info.folds)),
            info.folds, plan_tiles(info.image_shape, info.tile_shape),
            info.image_shape, info.field, int(info.attrs["sample_block"]), written,
            base=info.path, joint=info.joint,
        )  # fmt: skip
        with stores.finished_or_discarded(written):  # the old store stays whole
            taskgraph.run(tasks, phase="updating statistics")
    logger.info("statistics updated in %s", info.path)
    return statistics_info(info.path)


#: Attributes a statistics store template sets itself.
_STORE_KEYS = (
    "format", "format_version", "field", "height", "width", "channels", "channel_mode",
    "tile_shape", "complete", "chunk_manifest",
)  # fmt: skip
