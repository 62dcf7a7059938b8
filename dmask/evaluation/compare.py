"""MR against the paper's baselines: test error, parameters, time and memory."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import dask
import numpy as np
import scipy.sparse
import xarray as xr

from dmask.checks import check_settings
from dmask.core import minmax
from dmask.errors import InputError
from dmask.evaluation import baselines, pixelwise, saved_models
from dmask.evaluation.memory import (
    EXCLUSIVE,
    measured_memory,
    sampling_start,
    sampling_stop,
)
from dmask.evaluation.metrics import psnr as image_psnr
from dmask.evaluation.metrics import text_table
from dmask.graph import inputs, runtime
from dmask.io import dataset_store
from dmask.model import fit as fit_mr

logger = logging.getLogger(__name__)

__all__ = [
    "COLUMNS",
    "COMPARED_METHODS",
    "PIXEL_BLOCK",
    "compare",
    "format_comparison",
    "score",
]


#: Methods compared by default, in table order.
COMPARED_METHODS = (
    "mr",
    "full_ridge",
    "reduced_rank",
    "kernel_ridge",
    "lasso",
    "omp",
    "identity",
    "mean_difference",
)


#: Every method compare knows: the defaults, and MR in the joint colour mode
#: (``mr_joint``: each output channel reads the window in every channel).
KNOWN_METHODS = (*COMPARED_METHODS, "mr_joint")

#: The MR variants, with their ``channels`` setting of :func:`dmask.fit`.
MR_MODES = {"mr": "independent", "mr_joint": "joint"}


#: Keys of every row, in order.
COLUMNS = (
    "method",
    "expression",
    "n_train",
    "n_test",
    "mse",
    "psnr",
    "ssim",
    "n_parameters",
    "train_seconds",
    "peak_mib",
    "status",
)


#: Output pixels per task of the per-pixel (lasso, OMP) baselines.
PIXEL_BLOCK = 512


_BASELINES: dict[str, type[baselines.Baseline]] = {
    "full_ridge": baselines.FullRidge,
    "reduced_rank": baselines.ReducedRankRidge,
    "kernel_ridge": baselines.KernelRidge,
    "lasso": pixelwise.PixelLasso,
    "omp": pixelwise.PixelOMP,
    "identity": baselines.Identity,
    "mean_difference": baselines.MeanDifference,
}


def _flat_normalized(images: np.ndarray) -> np.ndarray:
    return minmax.normalize_images(images).reshape(images.shape[0], -1)


def _normalized_pairs(
    train_src: Any, train_tgt: Any, test_src: Any, test_tgt: Any
) -> dict[str, Any]:
    """Task: the normalised, flattened training and test images of one target."""
    with EXCLUSIVE:
        test_truth = inputs.as_numpy(test_tgt)[0]
        return {
            "x_train": _flat_normalized(inputs.as_numpy(train_src)[0]),
            "y_train": _flat_normalized(inputs.as_numpy(train_tgt)[0]),
            "x_test": _flat_normalized(inputs.as_numpy(test_src)[0]),
            "y_test": _flat_normalized(test_truth),
            "shape": test_truth.shape[1:],
        }


def _ssim(truth: np.ndarray, predicted: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    height, width, channels = truth.shape
    win = min(7, height, width)
    win -= 1 - win % 2  # odd
    if win < 3:
        return math.nan
    if channels == 1:
        return float(
            structural_similarity(
                truth[..., 0], predicted[..., 0], data_range=1.0, win_size=win
            )
        )
    return float(
        structural_similarity(
            truth, predicted, data_range=1.0, channel_axis=-1, win_size=win
        )
    )


def score(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """MSE, PSNR and SSIM of predictions in [0, 1] scale, averaged over images.

    Parameters
    ----------
    predicted, truth : numpy.ndarray
        ``(N, H, W, C)``.

    Returns
    -------
    dict
        ``mse``, ``psnr`` (dB, peak 1) and ``ssim`` (data range 1).
    """
    predicted = np.asarray(predicted, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if predicted.shape != truth.shape or predicted.ndim != 4:
        raise InputError(
            f"predicted has shape {predicted.shape} but truth has {truth.shape}"
        )
    n = truth.shape[0]
    mse = ((predicted - truth) ** 2).reshape(n, -1).mean(axis=1)
    psnr = image_psnr(mse)
    ssim = [_ssim(truth[i], predicted[i]) for i in range(n)]
    return {
        "mse": float(mse.mean()),
        "psnr": float(psnr.mean()),
        "ssim": float(np.mean(ssim)),
    }


def _score_flat(predicted: np.ndarray, data: dict[str, Any]) -> dict[str, float]:
    shape = (-1, *data["shape"])
    return score(predicted.reshape(shape), data["y_test"].reshape(shape))


def _failure(error: BaseException) -> dict[str, Any]:
    logger.warning("training failed: %s: %s", type(error).__name__, error)
    return {"status": f"failed: {type(error).__name__}: {error}"}


def _fit_and_score(model: baselines.Baseline, data: dict[str, Any]) -> dict[str, Any]:
    """Task: train one baseline, predict the test sources and score them."""
    with EXCLUSIVE:
        try:
            with measured_memory() as usage:
                model.fit(data["x_train"], data["y_train"])
            predicted = model.predict(data["x_test"])
        except (MemoryError, np.linalg.LinAlgError) as error:
            return _failure(error)
        return {
            **_score_flat(predicted, data),
            "n_parameters": int(model.n_parameters),
            "train_seconds": usage["seconds"],
            "peak_bytes": usage["peak"],
            "status": "ok",
        }


def _fit_block(
    model: Any, data: dict[str, Any], start: int, stop: int, keep: bool
) -> Any:
    """Task: train a per-pixel baseline on output pixels ``start:stop``.

    With ``keep``, its weights are returned too (for ``save_models``).
    """
    with EXCLUSIVE:
        try:
            with measured_memory() as usage:
                pixels = np.arange(start, stop)
                model.fit(data["x_train"], data["y_train"], pixels=pixels)
            predicted = model.predict(data["x_test"])
        except (MemoryError, np.linalg.LinAlgError) as error:
            return _failure(error)
        kept = {"coef": model.coef_, "intercept": model.intercept_} if keep else {}
        return {
            "predicted": predicted,
            **kept,
            "n_parameters": int(model.n_parameters),
            "train_seconds": usage["seconds"],
            "peak_bytes": usage["peak"],
            "status": "ok",
        }


def _join_blocks(blocks: list[dict[str, Any]], data: dict[str, Any]) -> dict[str, Any]:
    """Task: score the joined predictions of the pixel blocks."""
    with EXCLUSIVE:
        for block in blocks:
            if block["status"] != "ok":
                return block
        predicted = np.hstack([block["predicted"] for block in blocks])
        kept = {}
        if "coef" in blocks[0]:
            coef = scipy.sparse.vstack([b["coef"] for b in blocks], format="csr")
            intercept = np.concatenate([b["intercept"] for b in blocks])
            kept["weights"] = (coef, intercept)
        return {
            **_score_flat(predicted, data),
            **kept,
            "n_parameters": sum(block["n_parameters"] for block in blocks),
            "train_seconds": sum(block["train_seconds"] for block in blocks),
            "peak_bytes": max(block["peak_bytes"] for block in blocks),
            "status": "ok",
        }


def _score_predicted(predicted: np.ndarray, data: dict[str, Any]) -> dict[str, float]:
    """Task: score MR's predictions ``(N, H, W, C)``."""
    with EXCLUSIVE:
        return _score_flat(np.asarray(predicted), data)


def _check_arguments(
    methods: Sequence[str],
    fields: Sequence[int],
    lam: float,
    rank: int | None,
    memory_budget: int | None,
    options: Mapping[str, Mapping[str, Any]],
) -> None:
    if isinstance(methods, str) or not methods:
        raise InputError("methods must be a non-empty sequence of method names")
    known = set(KNOWN_METHODS)
    for method in methods:
        if method not in known:
            raise InputError(
                f"methods has unknown method {method!r} (known: {KNOWN_METHODS})"
            )
    if len(set(methods)) != len(methods):
        raise InputError(f"methods names a method twice: {list(methods)}")
    check_settings(3, lam, "minmax")
    if set(MR_MODES) & set(methods):
        if isinstance(fields, (str, int)) or not fields:
            raise InputError("fields must be a non-empty sequence of odd integers")
        for field in fields:
            check_settings(field, lam, "minmax")
        if len(set(fields)) != len(fields):
            raise InputError(f"fields names a field twice: {list(fields)}")
    for name, value in (("rank", rank), ("memory_budget", memory_budget)):
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, (int, np.integer))
            or value < 1
        ):
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    for method in options:
        if method not in _BASELINES:
            raise InputError(
                f"options has settings for {method!r}, not a baseline "
                f"(baselines: {sorted(_BASELINES)})"
            )


def _baseline(
    method: str,
    lam: float,
    rank: int | None,
    n_train: int,
    options: Mapping[str, Any],
) -> baselines.Baseline:
    settings = dict(options)
    if method in ("full_ridge", "reduced_rank", "kernel_ridge"):
        settings.setdefault("lam", lam)
    if method == "reduced_rank":
        settings.setdefault("rank", rank if rank is not None else max(1, n_train // 2))
    try:
        return _BASELINES[method](**settings)
    except TypeError as error:
        raise InputError(f"options[{method!r}] has a bad setting: {error}") from None


def _row(
    method: str, expression: str, n_train: int | None, n_test: int | None
) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(method=method, expression=expression, n_train=n_train, n_test=n_test)
    return row


def _fill(row: dict[str, Any], result: dict[str, Any]) -> None:
    for key in ("mse", "psnr", "ssim", "n_parameters", "train_seconds", "status"):
        if key in result:
            row[key] = result[key]
    if "peak_bytes" in result:
        row["peak_mib"] = result["peak_bytes"] / 2**20


def _mean_row(method: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    done = [row for row in rows if row["status"] == "ok"]
    mean = _row(method, "mean", None, None)
    if not done:
        mean["status"] = rows[0]["status"]
        return mean
    for key in ("n_train", "n_test", "n_parameters"):
        mean[key] = round(float(np.mean([row[key] for row in done])))
    for key in ("mse", "psnr", "ssim", "train_seconds", "peak_mib"):
        mean[key] = float(np.mean([row[key] for row in done]))
    mean["status"] = (
        "ok" if len(done) == len(rows) else f"ok ({len(done)} of {len(rows)})"
    )
    return mean


def _images(dataset: xr.Dataset, source: str, name: str, split: str) -> Any:
    if "dmask_path" in dataset.encoding:
        return dataset_store.stored_pairs(dataset, source, [name], split)
    src, tgt = dataset_store.select_pairs(dataset, source, [name], split)
    return src.data, {name: tgt[name].data}


def _train_mr(sources: Any, targets: Any, field: int, lam: float, channels: str) -> Any:
    """Fit MR and measure it on the client and every worker process."""
    client = runtime.current_client()
    if client is not None:
        client.run(sampling_start)
    try:
        with measured_memory() as usage:
            model = fit_mr(sources, targets, field=field, lam=lam, channels=channels)
    finally:
        peaks = client.run(sampling_stop) if client is not None else {}
    peak = usage["peak"] + sum(
        value["peak"] for value in peaks.values() if value["pid"] != os.getpid()
    )
    return model, usage["seconds"], peak


def compare(
    dataset: xr.Dataset,
    *,
    source: str = "neutral",
    targets: Sequence[str] | None = None,
    fields: Sequence[int] = (1, 3, 5),
    lam: float = 0.4,
    methods: Sequence[str] = COMPARED_METHODS,
    rank: int | None = None,
    memory_budget: int | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    save_models: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Train MR and the baselines per target expression and score them.

    Training uses the dataset's ``train`` subjects, scoring its ``test``
    subjects (see the module docstring for how each figure is measured).

    Parameters
    ----------
    dataset : xarray.Dataset
        A dataset store opened by :func:`dmask.io.dataset_store.open_dataset` (or any
        dataset of that layout with a ``split`` coordinate).
    source : str
        Source expression.
    targets : sequence of str, optional
        Target expressions; default every expression but ``source``.
    fields : sequence of int
        Receptive field sizes of MR, one row set each (``"mr r=3"``, ...).
    lam : float
        Ridge penalty of MR, full ridge, reduced-rank and kernel ridge.
    methods : sequence of str
        Among :data:`KNOWN_METHODS` (by default :data:`COMPARED_METHODS`;
        ``mr_joint`` is MR in the joint colour mode, rows ``mr_joint r=<r>``).
    rank : int, optional
        Rank of reduced-rank ridge; default half the training pairs.
    memory_budget : int, optional
        Bytes one baseline's training may need (by its estimate) before it is
        refused; default :func:`dmask.graph.runtime.task_memory_budget`.
    options : mapping, optional
        Extra constructor settings per baseline, e.g.
        ``{"lasso": {"alpha": 0.01}, "omp": {"n_nonzero": 5}}``.
    save_models : str or path, optional
        A new folder: MR (``mr_r<r>.zarr``, one per field) and the lasso and
        OMP baselines (``lasso.zarr``, ``omp.zarr``, sparse models) are saved
        there as model stores, every target that trained in each, for
        :func:`dmask.open_model` and ``dmask apply``.

    Returns
    -------
    list of dict
        One row per method and expression, then a ``"mean"`` row per method
        (the mean over its expressions that trained), with the keys of
        :data:`COLUMNS`. ``status`` is ``"ok"``, ``"refused: ..."`` (too large
        for the method; the figures are None) or ``"failed: ..."``.
    """
    options = dict(options or {})
    _check_arguments(methods, fields, lam, rank, memory_budget, options)
    if save_models is not None:
        saved_models.check_folder(save_models, methods, fields)
    lam = float(lam)
    if isinstance(targets, str):
        raise InputError(f"targets must be a sequence of names, got {targets!r}")
    names = (
        list(targets)
        if targets is not None
        else dataset_store.other_expressions(dataset, source)
    )
    if not names:
        raise InputError("targets is empty: name at least one target expression")
    budget = runtime.task_memory_budget() if memory_budget is None else memory_budget
    _, height, width, channels = dataset["images"].shape
    d = height * width * channels

    pairs = {}
    data = {}
    for name in names:
        train_src, train_tgt = _images(dataset, source, name, "train")
        test_src, test_tgt = _images(dataset, source, name, "test")
        pairs[name] = (train_src, train_tgt[name], test_src, test_tgt[name])
        data[name] = dask.delayed(_normalized_pairs, pure=True)(*pairs[name])

    models = {
        (method, name): _baseline(
            method, lam, rank, int(pair[0].shape[0]), options.get(method, {})
        )
        for method in methods
        if method not in MR_MODES
        for name, pair in pairs.items()
    }
    logger.info(
        "comparing %s on %d targets of %d x %d x %d images",
        ", ".join(methods),
        len(names),
        height,
        width,
        channels,
    )
    rows: dict[str, list[dict[str, Any]]] = {}
    trained: dict[str, dict[str, Any]] | None = {} if save_models is not None else None
    for method, mode in MR_MODES.items():
        if method in methods:
            rows.update(_compare_mr(pairs, fields, lam, data, d, trained, method, mode))
    rows.update(_compare_baselines(models, pairs, budget, data, d, trained))
    if trained is not None:
        saved_models.save(trained, save_models, (height, width, channels))
    out: list[dict[str, Any]] = []
    for method in methods:
        labels = [f"{method} r={r}" for r in fields] if method in MR_MODES else [method]
        for label in labels:
            out += rows[label]
            out.append(_mean_row(label, rows[label]))
    return out


def _compare_mr(
    pairs: dict[str, tuple[Any, Any, Any, Any]],
    fields: Sequence[int],
    lam: float,
    data: dict[str, Any],
    d: int,
    trained: dict[str, dict[str, Any]] | None,
    method: str = "mr",
    channels: str = "independent",
) -> dict[str, list[dict[str, Any]]]:
    """Train MR per field and target (each its own graph), then score it.

    The models are kept in ``trained[label][target]`` (unless None).
    """
    rows: dict[str, list[dict[str, Any]]] = {}
    pending = []
    for field in fields:
        label = f"{method} r={field}"
        rows[label] = []
        warm_src, warm_tgt, _, _ = next(iter(pairs.values()))
        fit_mr(warm_src, warm_tgt, field=field, lam=lam, channels=channels)  # untimed
        per_output = field * field * (warm_src.shape[3] if channels == "joint" else 1)
        for name, (train_src, train_tgt, test_src, _) in pairs.items():
            logger.info("training %s for %s", label, name)
            model, seconds, peak = _train_mr(train_src, train_tgt, field, lam, channels)
            if trained is not None:
                trained.setdefault(label, {})[name] = model
            row = _row(label, name, train_src.shape[0], test_src.shape[0])
            _fill(
                row,
                {
                    "n_parameters": d * (per_output + 1),
                    "train_seconds": seconds,
                    "peak_bytes": peak,
                    "status": "ok",
                },
            )
            rows[label].append(row)
            lazy = model.predict_lazy(test_src, name="test sources")
            predicted = lazy[model.targets[0]]
            pending.append(dask.delayed(_score_predicted)(predicted, data[name]))
    scores = iter(runtime.compute(*pending, phase="scoring models"))
    for label in rows:
        for row in rows[label]:
            _fill(row, next(scores))
    return rows


def _compare_baselines(
    models: dict[tuple[str, str], baselines.Baseline],
    pairs: dict[str, tuple[Any, Any, Any, Any]],
    budget: int,
    data: dict[str, Any],
    d: int,
    trained: dict[str, dict[str, Any]] | None,
) -> dict[str, list[dict[str, Any]]]:
    """Build every baseline's tasks, compute them at once, and fill the rows.

    The per-pixel ones' weights are kept in ``trained[method][target]``
    (unless None).
    """
    rows: dict[str, list[dict[str, Any]]] = {}
    pending = []
    for (method, name), model in models.items():
        train_src, _, test_src, _ = pairs[name]
        n_train, n_test = int(train_src.shape[0]), int(test_src.shape[0])
        row = _row(method, name, n_train, n_test)
        rows.setdefault(method, []).append(row)
        is_pixelwise = isinstance(model, pixelwise.Pixelwise)
        outputs = min(PIXEL_BLOCK, d) if is_pixelwise else None
        try:
            model.check(n_train, d, budget, outputs)
        except InputError as error:
            row["status"] = f"refused: {error}"
            logger.info("%s for %s refused: %s", method, name, error)
            continue
        if is_pixelwise:
            blocks = [
                dask.delayed(_fit_block, pure=True)(
                    model,
                    data[name],
                    start,
                    min(d, start + PIXEL_BLOCK),
                    trained is not None,
                )
                for start in range(0, d, PIXEL_BLOCK)
            ]
            task = dask.delayed(_join_blocks, pure=True)(blocks, data[name])
        else:
            task = dask.delayed(_fit_and_score, pure=True)(model, data[name])
        pending.append((row, task))
    if pending:
        results = runtime.compute(
            *[task for _, task in pending], phase="fitting and scoring baselines"
        )
        for (row, _), result in zip(pending, results, strict=True):
            if "weights" in result and trained is not None:
                trained.setdefault(row["method"], {})[row["expression"]] = result.pop(
                    "weights"
                )
            _fill(row, result)
    return rows


def _number(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def _count(value: Any) -> str:
    if value is None:
        return "-"
    for suffix, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.3g}{suffix}"
    return str(value)


def format_comparison(rows: Sequence[dict[str, Any]], means_only: bool = False) -> str:
    """A plain-text table of :func:`compare` rows.

    Parameters
    ----------
    rows : sequence of dict
        Rows from :func:`compare`.
    means_only : bool
        Only the ``"mean"`` row of each method.
    """
    header = [
        "method",
        "expression",
        "train",
        "test",
        "MSE",
        "PSNR",
        "SSIM",
        "parameters",
        "train s",
        "peak MiB",
        "status",
    ]
    lines = [header]
    for row in rows:
        if means_only and row["expression"] != "mean":
            continue
        lines.append(
            [
                str(row["method"]),
                str(row["expression"]),
                "-" if row["n_train"] is None else str(row["n_train"]),
                "-" if row["n_test"] is None else str(row["n_test"]),
                _number(row["mse"], 5),
                _number(row["psnr"], 2),
                _number(row["ssim"], 4),
                _count(row["n_parameters"]),
                _number(row["train_seconds"], 3),
                _number(row["peak_mib"], 1),
                str(row["status"]),
            ]
        )
    return text_table(lines, free_last=True)
