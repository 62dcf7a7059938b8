"""Train once, solve many: keeping the sufficient statistics, solving from them.

:func:`keep_statistics` sums a dataset's training pairs once, for a largest
field, per fold of subjects, into a statistics store
(:mod:`dmask.io.statistics_store`). :func:`solve` builds a model of any odd
field up to it and any penalty (fixed or chosen per pixel by GCV) from the
store alone, equal to training from the images; leaving folds out gives the
models of k-fold cross-validation. :func:`update` adds new subjects' sums.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from dmask.checks import (
    LAM_SELECTIONS,
    _check_bounds,
    _checked_plan,
    check_lam_grid,
    check_settings,
)
from dmask.core import _engine, sufficient
from dmask.core.planning import check_field, plan_tiles
from dmask.errors import InputError
from dmask.graph import inputs, runtime, taskgraph
from dmask.graph.statistics import FoldInputs, keep_tiles, solve_tiles
from dmask.io import dataset_store, locations, locks, model_store, stores
from dmask.io.statistics_store import (
    StatisticsInfo,
    create_statistics_template,
    statistics_info,
)
from dmask.model import Model, open_model

logger = logging.getLogger(__name__)

__all__ = [
    "StatisticsInfo",
    "keep_statistics",
    "open_statistics",
    "solve",
    "subject_fingerprints",
    "update",
]


def open_statistics(path: str | os.PathLike) -> StatisticsInfo:
    """What a statistics store holds: field, targets, folds, subjects."""
    return statistics_info(locations.store_path(path))


def _open(dataset: xr.Dataset | str | os.PathLike) -> xr.Dataset:
    if isinstance(dataset, xr.Dataset):
        if "dmask_path" not in dataset.encoding:
            raise InputError(
                "dataset must be opened with dmask.io.dataset_store.open_dataset"
            )
        return dataset
    return dataset_store.open_dataset(dataset)


def subject_fingerprints(digests: Sequence[Sequence[str]]) -> list[str]:
    """One fingerprint per subject from its images' digests (source, targets)."""
    out = []
    for per_image in zip(*digests, strict=True):
        out.append(hashlib.sha256("/".join(per_image).encode()).hexdigest()[:16])
    return out


def _bounds_and_fingerprints(
    images: Sequence[Any], labels: Sequence[str]
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[str]]:
    """Per-sample min-max bounds of every image set, and per-pair fingerprints."""
    lazy = [inputs.lazy_sample_bounds(a) for a in images]
    lazy += [inputs.lazy_sample_digests(a) for a in images]
    computed = runtime.compute(*lazy)
    bounds = [tuple(np.asarray(v) for v in b) for b in computed[: len(images)]]
    for label, (low, high) in zip(labels, bounds, strict=True):
        _check_bounds(label, low, high)
    return bounds, subject_fingerprints(computed[len(images) :])  # type: ignore[arg-type]


def _narrow(images: Any, index: np.ndarray) -> Any:
    """The samples ``index`` of an image source."""
    if isinstance(images, dataset_store.StoredImages):
        chosen = images.index[index]
        return dataset_store.StoredImages(
            images.path, chosen, (len(chosen), *images.shape[1:]), images.dtype,
            images.variable,
        )  # fmt: skip
    return images[index]


def _fold_inputs(
    src: Any,
    tgts: Sequence[Any],
    bounds: Sequence[tuple[np.ndarray, np.ndarray]] | None,
    sample_folds: np.ndarray,
    fold_ids: Sequence[int],
) -> list[FoldInputs]:
    folds = []
    for fold in fold_ids:
        index = np.flatnonzero(sample_folds == fold)
        if not index.size:
            continue
        picked = (
            None if bounds is None else [(lo[index], hi[index]) for lo, hi in bounds]
        )
        folds.append(
            FoldInputs(
                fold,
                _narrow(src, index),
                [_narrow(t, index) for t in tgts],
                None if picked is None else picked[0],
                None if picked is None else picked[1:],
            )
        )
    return folds


def accumulate(
    sources: Any,
    targets: Mapping[str, Any],
    out: str | os.PathLike,
    *,
    field: int,
    subjects: Sequence[str],
    subject_folds: Sequence[int],
    n_folds: int = 1,
    normalize: str = "minmax",
    source_name: str = "",
    attrs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    tile_shape: tuple[int, int] | None = None,
    sample_block: int | None = None,
    memory_limit: int | None = None,
    inputs_of_run: Sequence[str | None] = (),
) -> StatisticsInfo:
    """Sum training pairs (arrays or stored images) into a statistics store.

    One sample per subject: ``subjects[i]`` is the pair ``sources[i]``,
    ``targets[name][i]``, in fold ``subject_folds[i]``.
    """
    check_settings(field, 0.4, normalize)
    if int(n_folds) < 1:
        raise InputError(f"folds must be at least 1, got {n_folds}")
    src = inputs.as_image_source(sources, "sources", keep_numpy=True)
    names = list(targets)
    tgts = [inputs.as_image_source(targets[n], f"targets[{n!r}]", True) for n in names]
    n, height, width, channels = src.shape
    for name, array in zip(names, tgts, strict=True):
        if array.shape != src.shape:
            raise InputError(
                f"targets[{name!r}] has shape {array.shape} but sources has {src.shape}"
            )
    check_field(field, (height, width), "sources")
    folds = np.asarray(subject_folds, dtype=np.int64)
    if len(subjects) != n or folds.shape != (n,):
        raise InputError(f"{n} pairs need {n} subjects and folds")
    if folds.size and (folds.min() < 0 or folds.max() >= n_folds):
        raise InputError(f"subject folds must be in 0..{n_folds - 1}")
    plan = _checked_plan(
        n, (height, width), channels, field, len(names), tile_shape, sample_block,
        memory_limit, "displacement", None,
    )  # fmt: skip
    labels = ["sources", *(f"targets[{name!r}]" for name in names)]
    bounds, fingerprints = _bounds_and_fingerprints([src, *tgts], labels)
    counts = np.bincount(folds, minlength=n_folds)
    store = locations.store_path(out)
    settings = {
        **dict(attrs or {}),
        "normalize": normalize,
        "source": source_name,
        "sample_block": plan.sample_block,
        "kernels": "numba" if _engine.enabled() else "numpy",
    }
    logger.info(
        "keeping the statistics of %d pairs of %dx%dx%d for r <= %d in %d fold(s): "
        "%d tiles of %s, %s",
        n, height, width, channels, field, n_folds, len(plan.tiles), plan.tile_shape,
        _size_text((height, width), channels, field, len(names), n_folds),
    )  # fmt: skip
    with locks.output_lock(store):
        written = create_statistics_template(
            store, names, (height, width), channels, field, plan.tile_shape, counts,
            {"subject": list(subjects), "subject_fold": folds,
             "fingerprint": fingerprints},
            settings, overwrite=overwrite, inputs=list(inputs_of_run),
        )  # fmt: skip
        use = bounds if normalize == "minmax" else None
        tasks = keep_tiles(
            _fold_inputs(src, tgts, use, folds, range(n_folds)), plan.tiles,
            (height, width), field, plan.sample_block, written,
        )  # fmt: skip
        try:
            taskgraph.run(tasks)
        except BaseException:
            if stores.replaced_path(written) is None:
                stores.discard_store(written)  # never a half-kept store left
            raise
        stores.finalize_store(written)
    logger.info("statistics written to %s", store)
    return statistics_info(store)


def _size_text(
    image_shape: tuple[int, int], channels: int, field: int, n_targets: int, folds: int
) -> str:
    from dmask.core.planning import format_bytes

    size = folds * sufficient.statistics_bytes(image_shape, channels, field, n_targets)
    return f"{format_bytes(size)} of sums"


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
    tile_shape, sample_block, memory_limit
        As in :func:`dmask.fit`.

    Returns
    -------
    StatisticsInfo
    """
    ds = _open(dataset)
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
        attrs={"dataset": ds.encoding["dmask_path"], "split": split or "",
               **_landmarks_attrs(ds)},
        overwrite=overwrite, tile_shape=tile_shape, sample_block=sample_block,
        memory_limit=memory_limit, inputs_of_run=[ds.encoding["dmask_path"]],
    )  # fmt: skip


def _fold_choice(info: StatisticsInfo, exclude: Sequence[int]) -> list[int]:
    leave = {int(f) for f in exclude}
    unknown = sorted(f for f in leave if not 0 <= f < info.folds)
    if unknown:
        raise InputError(f"{info.path} has folds 0..{info.folds - 1}, not {unknown[0]}")
    kept = [f for f in range(info.folds) if f not in leave and info.counts[f] > 0]
    if not kept:
        raise InputError(
            f"leaving out folds {sorted(leave)} of {info.path} leaves no pairs"
        )
    return kept


def solve(
    statistics: str | os.PathLike | StatisticsInfo,
    field: int | None = None,
    lam: float | str = 0.4,
    *,
    lam_grid: Sequence[float] | None = None,
    exclude_folds: Sequence[int] = (),
    store: str | os.PathLike | None = None,
    overwrite: bool = False,
    single_target: bool = False,
) -> Model:
    """A model solved from a statistics store alone, as training would give it.

    Parameters
    ----------
    statistics : str, path or StatisticsInfo
        A statistics store (:func:`keep_statistics`).
    field : int, optional
        Odd receptive field size up to the store's; the store's by default.
    lam : float or "gcv"
        Ridge penalty, or the choice per pixel by generalised cross-validation
        from ``lam_grid``. Leave-one-out needs every training image's residual,
        which sums do not hold: train from the images for it.
    lam_grid : sequence of float, optional
        Penalties to choose from with ``lam="gcv"``.
    exclude_folds : sequence of int
        Folds whose pairs are left out (the training set of a cross-validation
        fold).
    store : str or path, optional
        Write the model to this store; otherwise it is held in memory.
    overwrite : bool
        Replace an existing ``store``.
    single_target : bool
        Record the store's one target as the model's only, unnamed one (as
        :func:`dmask.fit` does for a single target array).

    Returns
    -------
    Model
    """
    info = (
        statistics
        if isinstance(statistics, StatisticsInfo)
        else open_statistics(statistics)
    )
    field = info.field if field is None else field
    if isinstance(field, bool) or not isinstance(field, (int, np.integer)):
        raise InputError(f"field must be an odd integer, got {field!r}")
    field = int(field)
    if field % 2 == 0 or not 1 <= field <= info.field:
        raise InputError(
            f"field {field} cannot be solved from {info.path}: it keeps odd fields "
            f"up to {info.field}"
        )
    if lam == "loo":
        raise InputError(
            "lam='loo' needs every training image's leave-one-out residual, which "
            f"the statistics in {info.path} do not hold: use 'gcv', or train from "
            "the images with lam='loo'"
        )
    check_settings(field, lam, info.normalize)
    grid = None
    if isinstance(lam, str) and lam in LAM_SELECTIONS:
        grid = check_lam_grid(lam_grid)
    elif lam_grid is not None:
        raise InputError("lam_grid is only used with lam='gcv'")
    else:
        lam = float(lam)
    folds = _fold_choice(info, exclude_folds)
    count = int(info.counts[folds].sum())
    height, width = info.image_shape
    tiles = plan_tiles(info.image_shape, info.tile_shape)
    counted = sorted(info.fingerprints[np.isin(info.subject_folds, folds)].tolist())
    fingerprint = hashlib.sha256(repr((info.normalize, counted)).encode()).hexdigest()
    attrs = model_store.ModelAttrs(
        field=field, lam=lam, normalize=info.normalize, height=height, width=width,
        channels=info.channels, n_samples=count,
        single_target=bool(single_target) and len(info.targets) == 1,
        training_fingerprint=fingerprint[:16], tile_shape=info.tile_shape,
        sample_block=int(info.attrs.get("sample_block", 0)) or None,
        statistics_method="displacement",
        kernels="numba" if _engine.enabled() else "numpy",
        lam_grid=tuple(grid) if grid else None, landmarks=info.attrs.get("landmarks"),
    ).to_dict()  # fmt: skip
    attrs["statistics"] = info.path
    logger.info(
        "solving r = %d, lam = %s from %s (%d pairs in %d fold(s)): %d tiles",
        field, lam, info.path, count, len(folds), len(tiles),
    )  # fmt: skip
    args = (
        info.path,
        folds,
        tiles,
        info.image_shape,
        info.field,
        field,
        count,
        lam,
        grid,
    )
    if store is not None:
        path = locations.store_path(store)
        with locks.output_lock(path):
            written = model_store.create_model_template(
                path, info.targets, info.image_shape, info.channels, field,
                info.tile_shape, attrs, overwrite=overwrite, lam_map=grid is not None,
            )  # fmt: skip
            try:
                taskgraph.run(solve_tiles(*args, store=written))
            except BaseException:
                if stores.replaced_path(written) is None:
                    stores.discard_store(written)
                raise
            stores.finalize_store(written)
        logger.info("model written to %s", path)
        return open_model(path)
    n_targets, k = len(info.targets), field * field
    weight = np.empty((n_targets, height, width, info.channels, k))
    bias = np.empty((n_targets, height, width, info.channels))
    lam_map = None if grid is None else np.empty_like(bias)
    arrays = (weight, bias) if lam_map is None else (weight, bias, lam_map)
    local = runtime.runs_locally()
    results = taskgraph.run(solve_tiles(*args, arrays=arrays if local else None))
    if not local:
        from dmask.graph.fit_tasks import place_tile

        for tile, solution in zip(tiles, results, strict=True):
            place_tile(arrays, tile, solution)
    grid_shape = (tiles[-1].index[0] + 1, tiles[-1].index[1] + 1)
    dataset = model_store.model_dataset(
        weight, bias, info.targets, field, np.ones(grid_shape, dtype="u1"),
        {**attrs, "complete": True}, lam_map=lam_map,
    )  # fmt: skip
    return Model(dataset)


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
    ds = _open(dataset)
    src, tgts, subjects = _pairs(ds, info.source, info.targets, split)
    if src.shape[1:3] != info.image_shape or src.shape[3] != info.channels:
        raise InputError(
            f"{ds.encoding['dmask_path']} has images of {src.shape[1:]}, but "
            f"{info.path} keeps {(*info.image_shape, info.channels)}"
        )
    labels = ["sources", *(f"targets[{n!r}]" for n in info.targets)]
    arrays = [src, *tgts.values()]
    bounds, fingerprints = _bounds_and_fingerprints(arrays, labels)
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
    settings["updates"] = [*info.attrs.get("updates", []), ds.encoding["dmask_path"]]
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
             "fingerprint": [*info.fingerprints.tolist(), *fingerprints]},
            settings, overwrite=True,
        )  # fmt: skip
        use = bounds if info.normalize == "minmax" else None
        tasks = keep_tiles(
            _fold_inputs(src, list(tgts.values()), use, new_folds, range(info.folds)),
            plan_tiles(info.image_shape, info.tile_shape), info.image_shape,
            info.field, int(info.attrs["sample_block"]), written, base=info.path,
            base_folds=range(info.folds),
        )  # fmt: skip
        try:
            taskgraph.run(tasks)
        except BaseException:
            stores.discard_store(written)  # the old store stays as it was
            raise
        stores.finalize_store(written)
    logger.info("statistics updated in %s", info.path)
    return statistics_info(info.path)


#: Attributes a statistics store template sets itself.
_STORE_KEYS = (
    "format", "format_version", "field", "height", "width", "channels",
    "tile_shape", "complete", "chunk_manifest",
)  # fmt: skip
