"""The public model API: :func:`fit`, :class:`Model`, :func:`open_model`.

And the two halves of training through a statistics store, which :func:`fit`
uses with ``statistics=``: :func:`accumulate` (keep the sums) and
:func:`solve_statistics` (a model from them); :mod:`dmask.statistics` is the
workflow on them (datasets, folds, updates).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from dmask.checks import (
    LAM_SELECTIONS,
    SINGLE_TARGET,
    _check_bounds,
    _check_positive,
    _check_resumable,
    _checked_plan,
    _fingerprint,
    check_lam_grid,
    check_settings,
    check_strength,
)
from dmask.core import _engine, alignment, minmax, sufficient
from dmask.core.planning import (
    FitPlan,
    check_field,
    format_bytes,
    plan_tiles,
    prediction_tile_shape,
    tile_grid,
)
from dmask.errors import InputError
from dmask.graph import fit_tasks, inputs, prediction, runtime, taskgraph, training
from dmask.graph.statistics import FoldInputs, keep_tiles, solve_tiles
from dmask.io import dataset_store, locations, locks, model_store, stores
from dmask.io.statistics_store import (
    StatisticsInfo,
    create_statistics_template,
    statistics_info,
)

logger = logging.getLogger(__name__)

__all__ = ["Model", "accumulate", "fit", "open_model", "solve_statistics"]


def fit(
    sources: Any,
    targets: Any,
    field: int = 3,
    lam: float | str = 0.4,
    normalize: str = "minmax",
    *,
    lam_grid: Sequence[float] | None = None,
    store: str | os.PathLike | None = None,
    overwrite: bool = False,
    tile_shape: tuple[int, int] | None = None,
    sample_block: int | None = None,
    memory_limit: int | None = None,
    method: str = "auto",
    resume: bool = False,
    landmarks: Mapping[str, Any] | None = None,
    statistics: str | os.PathLike | None = None,
    statistics_field: int | None = None,
    channels: str = "independent",
    weights_dtype: str = "float64",
) -> Model:
    """Train masked ridge regression.

    Parameters
    ----------
    sources : array-like
        ``(sample, y, x, channel)`` source faces (numpy, dask or xarray).
    targets : array-like or mapping of str to array-like
        Target faces of the same shape, or one such array per target name.
    field : int
        Odd receptive field size ``r``.
    lam : float or {"loo", "gcv"}
        Ridge penalty on the weights and the bias; or choose it for every pixel,
        channel and target from ``lam_grid``, by least leave-one-out error
        (PRESS, exact: a second pass over the samples) or generalised
        cross-validation score (from the statistics alone), both from one
        eigendecomposition of each pixel's Gram matrix. The choice is stored as
        ``lam_map`` (:meth:`Model.lam_map`); needs the displacement statistics.
    normalize : {"minmax", "none"}
        Per-image min-max scaling to [0, 1] of sources and targets, or none.
    lam_grid : sequence of float, optional
        Penalties to choose from with ``lam="loo"`` or ``"gcv"``; by default
        :data:`DEFAULT_LAM_GRID` (13 log-spaced from 1e-3 to 1e3, and 0.4).
    store : str or path, optional
        Write the model tile by tile to this Zarr store and return it opened
        lazily; otherwise the model is held in memory.
    overwrite : bool
        Replace an existing ``store``.
    tile_shape : tuple of int, optional
        Spatial tile shape; chosen from ``memory_limit`` when omitted.
    sample_block : int, optional
        Samples per statistics task; chosen from ``memory_limit`` when omitted.
    memory_limit : int, optional
        Bytes one task may use; by default a share of the workers' memory limit
        (:func:`dmask.graph.runtime.task_memory_budget`).
    method : {"auto", "covariance", "displacement"}
        How the statistics are accumulated: sums per displacement (fewest
        FLOPs, memory bound) or one GEMM per 16 x 16 block of pixels (more
        FLOPs at BLAS speed). ``auto`` takes the faster as measured on 2
        cores (:func:`dmask.core.planning.resolve_method`). All give the same model.
    resume : bool
        With ``store``: if the store holds an unfinished run of the same
        training (same data fingerprint and settings), solve only the tiles it
        does not record as complete, with that run's tiles, sample blocks and
        method, so the result equals an uninterrupted run bit for bit.
    landmarks : mapping, optional
        Where the training faces have their landmarks: a dataset store's
        ``landmarks`` attribute (:func:`dmask.core.alignment.landmarks_attribute`),
        recorded in the model so photographs are aligned to it. By default
        the ``landmarks`` attribute of ``sources`` when it has one (an xarray
        object's ``attrs``).
    statistics : str or path, optional
        Also keep the training pairs' sums in this statistics store (one pass
        over the images), for fields up to ``statistics_field`` (``field`` by
        default); the model is then solved from it
        (:func:`dmask.statistics.solve`), equal to training without it.
        Subjects are the ``subject`` coordinate of ``sources`` when it has one.
    channels : {"independent", "joint"}
        Each output channel regresses on the window in its own channel (the
        paper's model), or in all channels (``k = r * r * C`` weights per output
        value, one Gram matrix per pixel shared by every channel and target;
        :mod:`dmask.core.joint`). Joint models store ``k`` offset-major with an
        ``input_channel`` coordinate and are predicted, tuned and solved like
        the others; the per-channel reference format cannot hold them.
    weights_dtype : {"float64", "float32"}
        What ``store`` holds the weights and bias as: float64 (exact, the
        default) or float32 (half the size, for batch synthesis; predictions
        within float32 rounding). Solved in float64 either way; a model in
        memory is float64 (:meth:`Model.save` takes ``dtype`` too).

    Returns
    -------
    Model
    """
    check_settings(field, lam, normalize)
    weights_dtype = model_store.check_weights_dtype(weights_dtype)
    if weights_dtype != "float64" and store is None:
        raise InputError(
            "weights_dtype is for a model written to a store; "
            "Model.save(path, dtype=...) writes one held in memory"
        )
    if channels not in model_store.CHANNEL_MODES:
        raise InputError(
            f"channels must be one of {model_store.CHANNEL_MODES}, got {channels!r}"
        )
    if statistics is not None:
        return _fit_keeping(
            sources, targets, field, lam, normalize, lam_grid=lam_grid, store=store,
            overwrite=overwrite, tile_shape=tile_shape, sample_block=sample_block,
            memory_limit=memory_limit, method=method, resume=resume,
            landmarks=landmarks, statistics=statistics,
            statistics_field=statistics_field, channels=channels,
        )  # fmt: skip
    if statistics_field is not None:
        raise InputError("statistics_field is only used with statistics")
    if method not in ("auto", "covariance", "displacement"):
        raise InputError(
            f"method must be 'auto', 'covariance' or 'displacement', got {method!r}"
        )
    channel_mode = channels  # the name is the images' channel count below
    if channel_mode == "joint":
        if method == "covariance":
            raise InputError("the joint colour mode sums displacements: method 'auto'")
        method = "joint"
    _check_positive("tile_shape", tile_shape)
    _check_positive("sample_block", sample_block)
    selecting = isinstance(lam, str) and lam in LAM_SELECTIONS
    if selecting:
        lam_grid = check_lam_grid(lam_grid)
        if method == "covariance":
            raise InputError(
                f"lam={lam!r} needs method 'auto' or 'displacement', not 'covariance'"
            )
        method = "joint" if method == "joint" else "displacement"
    elif lam_grid is not None:
        raise InputError("lam_grid is only used with lam='loo' or lam='gcv'")
    else:
        lam = float(lam)
    field = int(field)
    landmarks = _landmarks_of(sources, landmarks)
    single = not isinstance(targets, Mapping)
    named = {_target_name(targets): targets} if single else dict(targets)
    if not named:
        raise InputError("targets is an empty mapping")
    src = inputs.as_image_source(sources, "sources", keep_numpy=True)
    tgts = {}
    labels = ["sources"]
    for name, value in named.items():
        label = "targets" if single else f"targets[{name!r}]"
        labels.append(label)
        array = inputs.as_image_source(value, label, keep_numpy=True)
        if array.shape != src.shape:
            raise InputError(
                f"{label} has shape {array.shape} but sources has shape {src.shape}"
            )
        tgts[name] = array
    n, height, width, channels = src.shape
    check_field(field, (height, width), "sources")
    names = list(tgts)
    plan = None
    if not resume:  # before any work (a resumed run's recorded plan: later)
        plan = _checked_plan(
            n, (height, width), channels, field, len(names), tile_shape,
            sample_block, memory_limit, method, lam_grid,
        )  # fmt: skip

    originals = [sources, *named.values()]
    arrays = [src, *tgts.values()]
    lazy = [
        inputs.lazy_sample_bounds(a)
        for a, o in zip(arrays, originals, strict=True)
        if not isinstance(o, np.ndarray)
    ]
    computed = iter(runtime.compute(*lazy, phase="reading bounds") if lazy else ())
    bounds = [
        minmax.sample_bounds(o) if isinstance(o, np.ndarray) else next(computed)
        for o in originals
    ]
    for label, (low, high) in zip(labels, bounds, strict=True):
        _check_bounds(label, low, high)
    fingerprint = _fingerprint(src.shape, names, [v for pair in bounds for v in pair])
    use_minmax = normalize == "minmax"
    source_bounds = bounds[0] if use_minmax else None
    target_bounds = list(bounds[1:]) if use_minmax else None

    settings = {
        "src": src, "tgts": tgts, "names": names, "n": n, "height": height,
        "width": width, "channels": channels, "field": field, "lam": lam,
        "normalize": normalize, "single": single, "fingerprint": fingerprint,
        "source_bounds": source_bounds, "target_bounds": target_bounds,
        "memory_limit": memory_limit, "overwrite": overwrite, "lam_grid": lam_grid,
        "plan": plan, "landmarks": landmarks, "weights_dtype": weights_dtype,
    }  # fmt: skip
    if store is None:
        return _fit_planned(
            **settings, store=None, tile_shape=tile_shape, sample_block=sample_block,
            method=method, previous=None, previous_path=None,
        )  # fmt: skip
    store = locations.store_path(store)
    with locks.output_lock(store):
        previous, previous_path = None, None
        if resume:  # an --overwrite run that did not finish wrote its staging store
            staged = stores.staging_path(store)
            unfinished = model_store.read_model_progress(staged)
            if unfinished is not None and not unfinished.complete:
                previous, previous_path = unfinished, staged
            else:
                previous, previous_path = model_store.read_model_progress(store), store
        if previous is not None:  # the unfinished run's plan, for the same sums
            recorded = previous.attrs.get("channel_mode", "independent")
            if recorded != channel_mode:
                raise InputError(
                    f"cannot resume {store}: it was trained with channels="
                    f"{recorded!r}, not {channel_mode!r}"
                )
            for key in ("tile_shape", "sample_block", "statistics_method"):
                if key not in previous.attrs:
                    raise InputError(f"cannot resume {store}: it does not record {key}")
            tile_shape = tuple(previous.attrs["tile_shape"])  # type: ignore[assignment]
            sample_block = int(previous.attrs["sample_block"])
            method = str(previous.attrs["statistics_method"])
        return _fit_planned(
            **settings, store=store, tile_shape=tile_shape, sample_block=sample_block,
            method=method, previous=previous, previous_path=previous_path,
        )  # fmt: skip


def _fit_keeping(
    sources: Any,
    targets: Any,
    field: int,
    lam: float | str,
    normalize: str,
    *,
    statistics: str | os.PathLike,
    statistics_field: int | None,
    method: str,
    resume: bool,
    landmarks: Mapping[str, Any] | None,
    lam_grid: Sequence[float] | None,
    store: str | os.PathLike | None,
    overwrite: bool,
    tile_shape: tuple[int, int] | None,
    sample_block: int | None,
    memory_limit: int | None,
    channels: str,
) -> Model:
    """:func:`fit` with ``statistics``: keep the sums, then solve from them."""
    if resume:
        raise InputError("resume is not available while keeping statistics")
    if lam == "loo":
        raise InputError(
            "lam='loo' needs the images' residuals, which the statistics do not "
            "hold: keep statistics with a fixed lam or 'gcv'"
        )
    if method == "covariance":
        raise InputError("statistics are kept with method 'auto' or 'displacement'")
    largest = field if statistics_field is None else statistics_field
    check_settings(largest, 0.4, normalize)
    if int(largest) < int(field):
        raise InputError(
            f"statistics_field {largest} is smaller than the field {field} to train"
        )
    single = not isinstance(targets, Mapping)
    named = {_target_name(targets): targets} if single else dict(targets)
    if not named:
        raise InputError("targets is an empty mapping")
    n = inputs.as_image_source(sources, "sources", keep_numpy=True).shape[0]
    coord = getattr(sources, "coords", {}).get("subject")
    subjects = (
        [str(s) for s in np.asarray(coord.values)]
        if coord is not None and coord.shape == (n,)
        else [f"sample-{i:06d}" for i in range(n)]
    )
    landmarks = _landmarks_of(sources, landmarks)
    info = accumulate(
        sources, named, statistics, field=int(largest), subjects=subjects,
        subject_folds=np.zeros(n, dtype=np.int64), normalize=normalize,
        attrs={"landmarks": landmarks} if landmarks else None, overwrite=overwrite,
        tile_shape=tile_shape, sample_block=sample_block, memory_limit=memory_limit,
        inputs_of_run=[store], channels=channels,
    )  # fmt: skip
    return solve_statistics(
        info, int(field), lam, lam_grid=lam_grid, store=store, overwrite=overwrite,
        single_target=single,
    )  # fmt: skip


def _landmarks_of(
    sources: Any, landmarks: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """The checked ``landmarks`` attribute to record (see :func:`fit`)."""
    if landmarks is None:
        landmarks = getattr(sources, "attrs", {}).get("landmarks")
    if landmarks is None:
        return None
    try:
        fractions = alignment.read_landmarks({"landmarks": landmarks})
    except ValueError as exc:
        raise InputError(f"landmarks: {exc}") from None
    assert fractions is not None
    return alignment.landmarks_attribute(
        fractions, int(landmarks.get("faces", 0)), str(landmarks.get("measured", ""))
    )


def _fit_planned(
    *,
    src: Any,
    tgts: dict[str, Any],
    names: list[str],
    n: int,
    height: int,
    width: int,
    channels: int,
    field: int,
    lam: float | str,
    lam_grid: tuple[float, ...] | None,
    normalize: str,
    single: bool,
    fingerprint: str,
    source_bounds: Any,
    target_bounds: Any,
    store: str | None,
    overwrite: bool,
    tile_shape: tuple[int, int] | None,
    sample_block: int | None,
    memory_limit: int | None,
    method: str,
    previous: model_store.ModelProgress | None,
    previous_path: str | None = None,
    plan: FitPlan | None = None,
    landmarks: dict[str, Any] | None = None,
    weights_dtype: str = "float64",
) -> Model:
    """The part of :func:`fit` after inputs and bounds are known.

    ``plan`` is the one checked before the bounds pass; a resumed run plans
    anew with the settings its store records.
    """
    if plan is None or previous is not None:
        plan = _checked_plan(
            n, (height, width), channels, field, len(names), tile_shape,
            sample_block, memory_limit, method, lam_grid,
        )  # fmt: skip
    logger.info(
        "training %d target(s) on %d pairs of %dx%dx%d: %d tiles of %s, "
        "sample blocks of %d, about %.0f MB per task",
        len(names), n, height, width, channels, len(plan.tiles),
        plan.tile_shape, plan.sample_block, plan.task_bytes / 2**20,
    )  # fmt: skip
    attrs = model_store.ModelAttrs(
        field=field,
        lam=lam,
        normalize=normalize,
        height=height,
        width=width,
        channels=channels,
        n_samples=n,
        single_target=single,
        training_fingerprint=fingerprint,
        tile_shape=tuple(plan.tile_shape),
        sample_block=plan.sample_block,
        statistics_method=plan.method,
        kernels="numba" if _engine.enabled() else "numpy",
        lam_grid=tuple(lam_grid) if lam_grid else None,
        landmarks=landmarks,
        provenance=_trained_from(src, fingerprint),
        **model_store.channel_attrs(plan.method == "joint"),
    ).to_dict()
    if store is not None:
        if previous is not None:
            _check_resumable(store, previous, attrs, names)
            held = model_store.stored_weights_dtype(previous_path or store)
            if held != weights_dtype:
                raise InputError(
                    f"cannot resume {store}: it holds {held} weights, this run "
                    f"asks for {weights_dtype} (give weights_dtype={held!r}, "
                    f"--weights-dtype {held})"
                )
            if previous.complete:
                logger.info("model store %s is already complete", store)
                return open_model(store)
            done = previous.tile_complete
            plan = dataclasses.replace(
                plan, tiles=tuple(t for t in plan.tiles if not done[t.index])
            )
            logger.info(
                "resuming %s: %d of %d tiles left", store, len(plan.tiles), done.size
            )
            written = previous_path or store
        else:
            written = model_store.create_model_template(
                store, names, (height, width), channels, field, plan.tile_shape,
                attrs, overwrite=overwrite, lam_map=bool(lam_grid),
                weights_dtype=weights_dtype,
            )  # fmt: skip
        tasks = training.fit_tiles(
            src, list(tgts.values()), source_bounds, target_bounds, plan, field, lam,
            store=written, lam_grid=lam_grid,
        )  # fmt: skip
        taskgraph.run(tasks, phase="fitting tiles")
        stores.finalize_store(written)
        logger.info("model written to %s", store)
        return open_model(store)

    # In this process the tasks place their tiles in the arrays, in parallel.
    return _held_model(
        names, (height, width), channels, field, plan.tiles, attrs,
        bool(lam_grid), runtime.runs_locally(src, *tgts.values()),
        lambda arrays: training.fit_tiles(
            src, list(tgts.values()), source_bounds, target_bounds, plan, field,
            lam, lam_grid=lam_grid, arrays=arrays,
        ),
    )  # fmt: skip


def _held_model(
    names: Sequence[str],
    image_shape: tuple[int, int],
    channels: int,
    field: int,
    tiles: Sequence[Any],
    attrs: dict[str, Any],
    with_lam_map: bool,
    local: bool,
    make_tasks: Any,
) -> Model:
    """A model held in memory, its tiles solved by ``make_tasks(arrays)``' tasks.

    Run in this process (``local``), the tasks place their tiles in the arrays
    themselves; otherwise ``make_tasks(None)``'s results are placed here.
    """
    height, width = image_shape
    shape = (len(names), height, width, channels)
    k = model_store.features(field, channels, attrs.get("channel_mode", ""))
    weight, bias = np.empty((*shape, k)), np.empty(shape)
    lam_map = np.empty(shape) if with_lam_map else None
    arrays = (weight, bias) if lam_map is None else (weight, bias, lam_map)
    results = taskgraph.run(
        make_tasks(arrays if local else None), phase="fitting tiles"
    )
    if not local:
        for tile, solution in zip(tiles, results, strict=True):
            fit_tasks.place_tile(arrays, tile, solution)
    dataset = model_store.model_dataset(
        weight, bias, list(names), field, {**attrs, "complete": True},
        lam_map=lam_map,
    )  # fmt: skip
    return Model(dataset)


def _trained_from(src: Any, fingerprint: str) -> dict[str, Any] | None:
    """The model's ``provenance`` of its inputs: the dataset store read, if any."""
    if not isinstance(src, dataset_store.StoredImages):
        return None
    return {"dataset": {"path": src.path, "fingerprint": fingerprint}}


def _target_name(targets: Any) -> str:
    """The name of a single target array: a DataArray's one ``expression``."""
    if isinstance(targets, xr.DataArray) and "expression" in targets.coords:
        values = np.unique(np.asarray(targets.coords["expression"].values).astype(str))
        if values.size == 1:
            return str(values[0])
    return SINGLE_TARGET


def subject_fingerprints(digests: Sequence[Sequence[str]]) -> list[str]:
    """One fingerprint per subject from its images' digests (source, targets)."""
    out = []
    for per_image in zip(*digests, strict=True):
        out.append(hashlib.sha256("/".join(per_image).encode()).hexdigest()[:16])
    return out


def bounds_and_fingerprints(
    images: Sequence[Any], labels: Sequence[str]
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[str]]:
    """Per-sample min-max bounds of every image set, and per-pair fingerprints."""
    lazy = [inputs.lazy_sample_bounds(a) for a in images]
    lazy += [inputs.lazy_sample_digests(a) for a in images]
    computed = runtime.compute(*lazy, phase="reading bounds")
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


def fold_inputs(
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
    channels: str = "independent",
    dataset: Mapping[str, str] | None = None,
) -> StatisticsInfo:
    """Sum training pairs (arrays or stored images) into a statistics store.

    One sample per subject: ``subjects[i]`` is the pair ``sources[i]``,
    ``targets[name][i]``, in fold ``subject_folds[i]``. ``channels="joint"``
    keeps the joint colour mode's sums (see :func:`fit`). ``dataset``
    (``path`` and ``split``) is the dataset store the pairs are the
    ``subjects`` of, recorded so that leave-one-out can read them again.
    """
    if channels not in model_store.CHANNEL_MODES:
        raise InputError(
            f"channels must be one of {model_store.CHANNEL_MODES}, got {channels!r}"
        )
    joint = channels == "joint"
    check_settings(field, 0.4, normalize)
    if int(n_folds) < 1:
        raise InputError(f"folds must be at least 1, got {n_folds}")
    src = inputs.as_image_source(sources, "sources", keep_numpy=True)
    names = list(targets)
    tgts = [inputs.as_image_source(targets[n], f"targets[{n!r}]", True) for n in names]
    n, height, width, nc = src.shape
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
        n, (height, width), nc, field, len(names), tile_shape, sample_block,
        memory_limit, "joint" if joint else "displacement", None,
    )  # fmt: skip
    labels = ["sources", *(f"targets[{name!r}]" for name in names)]
    bounds, fingerprints = bounds_and_fingerprints([src, *tgts], labels)
    counts = np.bincount(folds, minlength=n_folds)
    store = locations.store_path(out)
    settings = {
        **dict(attrs or {}),
        "datasets": [dict(dataset)] if dataset else [],
        "normalize": normalize,
        "source": source_name,
        "sample_block": plan.sample_block,
        "kernels": "numba" if _engine.enabled() else "numpy",
    }
    logger.info(
        "keeping the statistics of %d pairs of %dx%dx%d for r <= %d in %d fold(s): "
        "%d tiles of %s, %s",
        n, height, width, nc, field, n_folds, len(plan.tiles), plan.tile_shape,
        _size_text((height, width), nc, field, len(names), n_folds, joint),
    )  # fmt: skip
    with locks.output_lock(store):
        written = create_statistics_template(
            store, names, (height, width), nc, field, plan.tile_shape, counts,
            {"subject": list(subjects), "subject_fold": folds,
             "fingerprint": fingerprints,
             "subject_dataset": np.full(n, 0 if dataset else -1, dtype=np.int64)},
            settings, overwrite=overwrite, inputs=list(inputs_of_run), joint=joint,
        )  # fmt: skip
        use = bounds if normalize == "minmax" else None
        tasks = keep_tiles(
            fold_inputs(src, tgts, use, folds, range(n_folds)), n_folds, plan.tiles,
            (height, width), field, plan.sample_block, written, joint=joint,
        )  # fmt: skip
        with stores.finished_or_discarded(written):  # never a half-kept store
            taskgraph.run(tasks, phase="keeping statistics")
    logger.info("statistics written to %s", store)
    return statistics_info(store)


def _size_text(
    image_shape: tuple[int, int],
    channels: int,
    field: int,
    n_targets: int,
    folds: int,
    joint: bool,
) -> str:
    size = folds * sufficient.statistics_bytes(
        image_shape, channels, field, n_targets, joint
    )
    return f"{format_bytes(size)} of sums"


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


def _counted_pairs(info: StatisticsInfo, folds: Sequence[int]) -> list[FoldInputs]:
    """The training pairs of ``folds``, read again from their dataset stores.

    For leave-one-out, which needs every pair's residual. Each subject is found
    by name in the dataset its sums came from, in the order they were summed,
    and its images must still have the fingerprint they had then.
    """
    used = np.isin(info.subject_folds, folds)
    if (info.subject_datasets[used] < 0).any():
        raise InputError(
            f"lam='loo' reads the training images again, and {info.path} holds pairs "
            "given as arrays (fit(statistics=...)), not from a dataset store: "
            "use 'gcv', or train from the images with lam='loo'"
        )
    groups = []
    for d in sorted(set(info.subject_datasets[used].tolist())):
        entry = info.datasets[d]
        ds = dataset_store.open_dataset(entry["path"])
        mine = used & (info.subject_datasets == d)
        src, tgt = dataset_store.pair_indices(
            ds, info.source, info.targets, entry["split"] or None
        )
        names = np.asarray(ds["subject"].values).astype(str)[src]
        position = {name: i for i, name in enumerate(names.tolist())}
        missing = [n for n in info.subjects[mine].tolist() if n not in position]
        if missing:
            raise InputError(
                f"{entry['path']} no longer has subject {missing[0]} whose sums "
                f"{info.path} holds: leave-one-out cannot read its images"
            )
        index = np.array([position[n] for n in info.subjects[mine].tolist()])
        sources = dataset_store.stored_images(ds, src[index])
        targets = [dataset_store.stored_images(ds, tgt[n][index]) for n in info.targets]
        labels = [
            f"{entry['path']} sources",
            *(f"{entry['path']} {n}" for n in info.targets),
        ]
        bounds, fingerprints = bounds_and_fingerprints([sources, *targets], labels)
        changed = np.flatnonzero(np.asarray(fingerprints) != info.fingerprints[mine])
        if changed.size:
            raise InputError(
                f"{entry['path']} changed since {info.path} kept its sums (subject "
                f"{info.subjects[mine][changed[0]]}): leave-one-out would not match"
            )
        minmax_on = info.normalize == "minmax"
        groups.append(
            FoldInputs(
                d, sources, targets, bounds[0] if minmax_on else None,
                bounds[1:] if minmax_on else None,
            )
        )  # fmt: skip
    return groups


def solve_statistics(
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
    lam : float or {"gcv", "loo"}
        Ridge penalty, or the choice per pixel from ``lam_grid`` by generalised
        cross-validation (from the sums alone) or leave-one-out (PRESS, exact:
        it needs every training pair's residual, so it reads the pairs again
        from the dataset stores the sums came from, refusing any whose images
        changed since).
    lam_grid : sequence of float, optional
        Penalties to choose from with ``lam="gcv"`` or ``"loo"``.
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
        else statistics_info(locations.store_path(statistics))
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
    check_settings(field, lam, info.normalize)
    grid = None
    if isinstance(lam, str) and lam in LAM_SELECTIONS:
        grid = check_lam_grid(lam_grid)
    elif lam_grid is not None:
        raise InputError("lam_grid is only used with lam='gcv' or 'loo'")
    else:
        lam = float(lam)
    folds = _fold_choice(info, exclude_folds)
    images = _counted_pairs(info, folds) if lam == "loo" else []
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
        statistics_method="joint" if info.joint else "displacement",
        kernels="numba" if _engine.enabled() else "numpy",
        lam_grid=tuple(grid) if grid else None, landmarks=info.attrs.get("landmarks"),
        provenance={"statistics": info.path, "datasets": info.datasets},
        **model_store.channel_attrs(info.joint),
    ).to_dict()  # fmt: skip
    attrs["statistics"] = info.path
    logger.info(
        "solving r = %d, lam = %s from %s (%d pairs in %d fold(s)): %d tiles",
        field, lam, info.path, count, len(folds), len(tiles),
    )  # fmt: skip
    args = (info.path, folds, tiles, info.image_shape, info.field, field, count)
    again = {
        "joint": info.joint,
        "images": images,
        "sample_block": int(info.attrs.get("sample_block", 1)),
    }
    if store is not None:
        path = locations.store_path(store)
        with locks.output_lock(path):
            written = model_store.create_model_template(
                path, info.targets, info.image_shape, info.channels, field,
                info.tile_shape, attrs, overwrite=overwrite, lam_map=grid is not None,
            )  # fmt: skip
            with stores.finished_or_discarded(written):
                taskgraph.run(
                    solve_tiles(*args, lam, grid, store=written, **again),
                    phase="solving tiles",
                )
        logger.info("model written to %s", path)
        return open_model(path)
    return _held_model(
        info.targets, info.image_shape, info.channels, field, tiles, attrs,
        grid is not None, runtime.runs_locally(),
        lambda arrays: solve_tiles(*args, lam, grid, arrays=arrays, **again),
    )  # fmt: skip


def _parallel_block(n: int, tiles: int, most: int) -> int:
    """Samples per prediction task: at most ``most`` (memory), and few enough
    that the tasks (blocks times ``tiles``) give every thread two."""
    wanted = -(-2 * runtime.task_threads() // max(1, tiles))
    return int(max(1, min(n, most, -(-n // wanted))))


def _block_budget() -> int:
    """Bytes of images one prediction task may hold: half a task's budget.

    The other half is left to the copies made around it (the output's cast
    and rechunk before a store write).
    """
    return runtime.task_memory_budget() // 2


class Model:
    """A trained masked ridge regression model.

    Parameters
    ----------
    dataset : xarray.Dataset
        Model in the layout of :mod:`dmask.io.model_store` (numpy or dask backed).
    """

    def __init__(self, dataset: xr.Dataset) -> None:
        self.dataset = dataset

    def __repr__(self) -> str:
        if self.kind == "sparse":
            return (
                f"<dmask.Model kind='sparse' targets={self.targets} "
                f"slots={self.slots} normalize={self.normalize!r} "
                f"image={self.image_shape} channels={self.channels}>"
            )
        return (
            f"<dmask.Model targets={self.targets} field={self.field} "
            f"lam={self.dataset.attrs['lam']!r} "
            f"normalize={self.normalize!r} image={self.image_shape} "
            f"channels={self.channels}>"
        )

    def _repr_html_(self) -> str:
        """A table of the model for notebooks, with its store's xarray view."""
        import html

        rows = [("kind", self.kind), ("targets", ", ".join(self.targets))]
        if self.kind == "sparse":
            rows.append(("slots", str(self.slots)))
        else:
            rows += [
                ("field r", str(self.field)),
                ("lambda", str(self.dataset.attrs["lam"])),
            ]
        height, width = self.image_shape
        rows += [
            ("normalize", self.normalize),
            ("image", f"{height} x {width}, {self.channels} channel(s)"),
            ("tiles", " x ".join(str(v) for v in self.tile_shape)),
        ]
        path = self.dataset.encoding.get("dmask_path")
        if path:
            rows.append(("store", str(path)))
        cells = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
            f"<td style='text-align:left'>{html.escape(v)}</td></tr>"
            for k, v in rows
        )
        return (
            f"<div><strong>dmask.Model</strong><table>{cells}</table>"
            f"<details><summary>store</summary>{self.dataset._repr_html_()}"
            "</details></div>"
        )

    @property
    def targets(self) -> list[str]:
        """Target names, in store order."""
        return [str(t) for t in self.dataset["target"].values]

    @property
    def kind(self) -> str:
        """``"field"`` (an ``r x r`` window per pixel) or ``"sparse"`` (slots)."""
        return str(self.dataset.attrs.get("kind", "field"))

    @property
    def field(self) -> int:
        """Receptive field size ``r`` (sparse models: the window their weights span)."""
        return int(self.dataset.attrs["field"])

    @property
    def slots(self) -> int:
        """Weights per output value: ``r * r`` for a field (``r * r * C`` in the
        joint colour mode), ``S`` for a sparse model."""
        return int(self.dataset["weight"].shape[-1])

    @property
    def lam(self) -> float:
        """Ridge penalty; NaN when chosen per pixel (see :meth:`lam_map`)."""
        value = self.dataset.attrs["lam"]
        return float("nan") if isinstance(value, str) else float(value)

    def lam_map(self, target: str | None = None) -> xr.DataArray:
        """Penalties ``(y, x, channel)`` of one target (lazy if stored).

        For a fixed-penalty model, that penalty everywhere.
        """
        name = self._target(target)
        if "lam_map" in self.dataset:
            return self.dataset["lam_map"].sel(target=name)
        return xr.full_like(self.dataset["bias"].sel(target=name), self.lam)

    @property
    def landmarks(self) -> np.ndarray | None:
        """Where the training faces have their landmarks, or None if unrecorded.

        ``(5, 2)`` ``(x, y)`` fractions of the image's width and height in
        :data:`dmask.core.alignment.LANDMARKS` order; photographs are aligned
        to them (:func:`dmask.io.face_crops.align_face`).
        """
        try:
            return alignment.read_landmarks(self.dataset.attrs)
        except ValueError as exc:
            raise InputError(f"model {self}: {exc}") from None

    @property
    def normalize(self) -> str:
        """Input normalisation."""
        return str(self.dataset.attrs["normalize"])

    @property
    def image_shape(self) -> tuple[int, int]:
        """``(H, W)`` the model applies to."""
        return int(self.dataset.sizes["y"]), int(self.dataset.sizes["x"])

    @property
    def channels(self) -> int:
        """Channels the model applies to."""
        return int(self.dataset.sizes["channel"])

    @property
    def tile_shape(self) -> tuple[int, int]:
        """Spatial tile (and chunk) shape of the weights."""
        th, tw = self.dataset.attrs["tile_shape"]
        return int(th), int(tw)

    def weights(self, target: str | None = None) -> xr.DataArray:
        """Weights ``(y, x, channel, k)`` of one target (lazy if stored).

        For a sparse model ``(y, x, channel, slot)``, read at :meth:`slot_sources`.
        """
        return self.dataset["weight"].sel(target=self._target(target))

    def slot_sources(self, target: str | None = None) -> xr.DataArray:
        """A sparse model's input positions ``(y, x, channel, slot)``, -1 unused.

        Positions are flat in ``(y, x, channel)`` row-major order.
        """
        if self.kind != "sparse":
            raise InputError("slot_sources: this model is an r x r field, not sparse")
        return self.dataset["source"].sel(target=self._target(target))

    def bias(self, target: str | None = None) -> xr.DataArray:
        """Bias ``(y, x, channel)`` of one target (lazy if stored)."""
        return self.dataset["bias"].sel(target=self._target(target))

    def _target(self, target: str | None) -> str:
        names = self.targets
        if target is None:
            if len(names) != 1:
                raise InputError(f"model has several targets {names}: name one")
            return names[0]
        if target not in names:
            raise InputError(f"target {target!r} is not in the model (has {names})")
        return target

    def predict_lazy(
        self,
        sources: Any,
        sample_block: int | None = None,
        name: str = "new_sources",
        strength: float = 1.0,
        dtype: Any = np.float64,
    ) -> dict[str, da.Array]:
        """Lazy predictions, one dask array ``(N, H, W, C)`` per target.

        ``strength`` as in :meth:`predict`; ``dtype`` of the values (summed in
        float64, rounded once).
        """
        _check_positive("sample_block", sample_block)
        strength = check_strength(strength)
        src = inputs.as_image_source(sources, name)
        n, height, width, channels = src.shape
        if (height, width, channels) != (*self.image_shape, self.channels):
            h, w = self.image_shape
            raise InputError(
                f"{name} has images of {height}x{width}x{channels} but the model "
                f"applies to {h}x{w}x{self.channels}"
            )
        if self.kind == "sparse":
            lazy = self._predict_sparse(src, sample_block, strength)
            return {name_: a.astype(dtype) for name_, a in lazy.items()}
        th, tw = prediction_tile_shape(self.image_shape, self.tile_shape)
        tiles = plan_tiles(self.image_shape, (th, tw))
        rows, _ = tile_grid(self.image_shape, (th, tw))
        grid = [[t for t in tiles if t.index[0] == row] for row in range(rows)]
        if sample_block is None:
            per_sample = (
                8
                * (len(self.targets) + 2)
                * (th + self.field)
                * (tw + self.field)
                * channels
            )
            sample_block = _parallel_block(n, len(tiles), _block_budget() // per_sample)
        k = self.slots
        runtime.check_task_memory(
            8 * len(self.targets) * th * tw * channels * (k + 1)
            + 8 * sample_block * (th + self.field) * (tw + self.field) * channels,
            f"predicting with a {self.field}x{self.field} field",
        )
        weight = self.dataset["weight"].data
        bias = self.dataset["bias"].data
        if not isinstance(weight, da.Array):
            weight = inputs.held_array(
                weight, chunks=(1, th, tw, channels, weight.shape[-1])
            )
            bias = inputs.held_array(bias, chunks=(1, th, tw, channels))
        full = prediction.predict_tiles(
            src,
            weight,
            bias,
            grid,
            sample_block,
            self.field,
            self.normalize == "minmax",
            strength,
            dtype,
        )
        return {name_: full[i] for i, name_ in enumerate(self.targets)}

    def _predict_sparse(
        self, src: Any, sample_block: int | None, strength: float
    ) -> dict[str, da.Array]:
        n, height, width, channels = src.shape
        th, tw = self.tile_shape
        tiles = plan_tiles(self.image_shape, (th, tw))
        rows, _ = tile_grid(self.image_shape, (th, tw))
        grid = [[t for t in tiles if t.index[0] == row] for row in range(rows)]
        if sample_block is None:
            per_sample = 8 * (2 * height * width + len(self.targets) * th * tw)
            sample_block = int(
                max(1, min(n, _block_budget() // (per_sample * channels)))
            )
        runtime.check_task_memory(
            len(self.targets) * th * tw * channels * (16 * self.slots + 8)
            + 8 * sample_block * height * width * channels * (2 + len(self.targets)),
            f"predicting with a sparse model of {self.slots} slots",
        )
        arrays = []
        for name in ("source", "weight", "bias"):
            data = self.dataset[name].data
            if not isinstance(data, da.Array):
                chunks = (1, th, tw, *data.shape[3:])
                data = inputs.held_array(data, chunks=chunks)
            arrays.append(data)
        full = prediction.predict_sparse_tiles(
            src, *arrays, grid, sample_block, self.normalize == "minmax", strength
        )
        return {name_: full[i] for i, name_ in enumerate(self.targets)}

    def predict(
        self, new_sources: Any, sample_block: int | None = None, strength: float = 1.0
    ) -> Any:
        """Synthesise target faces from new source faces.

        Parameters
        ----------
        new_sources : array-like
            ``(sample, y, x, channel)`` numpy, dask or xarray.
        sample_block : int, optional
            Samples per task.
        strength : float
            Expression strength: the output is ``x + strength * (model(x) - x)``
            with ``x`` the input as the model sees it (min-max scaled for a
            ``minmax`` model). 0 gives the input, 1 the model's output (the
            default), values between interpolate, above 1 exaggerate.

        Returns
        -------
        array, dict of str to array, xarray.DataArray or xarray.Dataset
            Float64 predictions of the input's shape (numpy computed; dask,
            xarray and stored images lazy). For numpy and dask input: one
            array for a model fitted on one target array, else a mapping from
            target name to array. For xarray input (a DataArray matched by
            dimension name, or a dataset's ``images``): a DataArray
            ``(sample, y, x, channel)`` for a model of one target, else a
            Dataset whose ``images`` have a leading ``target`` dimension;
            labelled with the target (``expression`` names it where the input
            had one, ``source_expression`` keeps the input's) and, in the
            attributes, the ``value_range`` and ``normalize`` of the values.
        """
        if isinstance(new_sources, xr.Dataset):
            if "images" not in new_sources.data_vars:
                raise InputError(
                    "predict takes a dataset with an 'images' variable (a dmask "
                    f"dataset store); this one has {sorted(new_sources.data_vars)}"
                )
            new_sources = new_sources["images"]
        if isinstance(new_sources, xr.DataArray):
            new_sources = inputs.ordered_images(new_sources, "new_sources")
        lazy = self.predict_lazy(new_sources, sample_block, strength=strength)
        if isinstance(new_sources, xr.DataArray):
            return self._labelled(new_sources, lazy, strength)
        out: dict[str, Any]
        if isinstance(new_sources, (da.Array, dataset_store.StoredImages)):
            out = lazy
        else:
            names = list(lazy)
            values = runtime.compute(*lazy.values(), phase="predicting")
            out = dict(zip(names, values, strict=True))
        if self.dataset.attrs.get("single_target", False) and len(out) == 1:
            return next(iter(out.values()))
        return out

    def _labelled(
        self, sources: xr.DataArray, lazy: dict[str, Any], strength: float
    ) -> xr.DataArray | xr.Dataset:
        """Predictions of a DataArray, labelled (see :meth:`predict`)."""
        coords: dict[str, Any] = {  # variables: a coordinate brings no others
            str(name): coord.variable
            for name, coord in sources.coords.items()
            if name not in ("expression", "target")
        }
        if "expression" in sources.coords:
            coords["source_expression"] = sources.coords["expression"].variable
        if self.normalize == "minmax":
            value_range: list[float] | None = [0.0, 1.0]
        elif "value_range" in sources.attrs:
            value_range = [float(v) for v in sources.attrs["value_range"]]
        elif np.dtype(sources.dtype) == np.uint8:
            value_range = [0.0, 255.0]
        else:
            value_range = None
        attrs: dict[str, Any] = {
            "long_name": "faces synthesised by masked ridge regression",
            "normalize": self.normalize,
            "strength": float(strength),
        }
        if value_range is not None:
            attrs["value_range"] = value_range
        names = list(lazy)
        if len(self.targets) == 1:
            (name,) = names
            labels = dict(coords, target=name)
            if "expression" in sources.coords:
                labels["expression"] = ("sample", np.full(sources.shape[0], name))
            return xr.DataArray(
                lazy[name], dims=inputs.IMAGE_DIMS, coords=labels, attrs=attrs
            )
        stacked = da.stack([lazy[name] for name in names])
        return xr.Dataset(
            {"images": (("target", *inputs.IMAGE_DIMS), stacked, attrs)},
            coords=dict(coords, target=("target", np.asarray(names))),
        )

    def save(
        self,
        path: str | os.PathLike,
        overwrite: bool = False,
        dtype: str = "float64",
    ) -> None:
        """Write the model to a new Zarr store.

        Parameters
        ----------
        path : str or path
            Store location.
        overwrite : bool
            Replace an existing store.
        dtype : {"float64", "float32"}
            What the weights and bias are stored as. float64 (the default)
            keeps them exactly; float32 halves the store for batch use, its
            predictions within float32 rounding of the float64 model's.
        """
        model_store.write_model_store(self.dataset, path, overwrite, dtype)


def open_model(path: str | os.PathLike) -> Model:
    """Open a model store lazily.

    Parameters
    ----------
    path : str or path
        A store written by :func:`fit` or :meth:`Model.save`.

    Returns
    -------
    Model
    """
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"open_model needs the path of a model store, got {path!r}")
    return Model(model_store.open_model_store(path))
