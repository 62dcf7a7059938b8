"""Choosing the receptive field and the penalty: sweeps and training-size curves.

Both train on the training subjects of a dataset store and score on held-out
subjects with :func:`dmask.evaluation.evaluate.evaluate` (MSE and PSNR in the model's
normalisation), and return JSON-able rows that
:func:`dmask.evaluation.metrics.write_results` writes as CSV or JSON.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from dmask.checks import check_settings
from dmask.core import minmax
from dmask.errors import InputError
from dmask.evaluation.baselines import FullRidge
from dmask.evaluation.evaluate import evaluate
from dmask.evaluation.metrics import psnr
from dmask.graph import inputs
from dmask.io import dataset_store, locations
from dmask.model import fit

__all__ = ["best_setting", "training_size_curve", "tune"]

logger = logging.getLogger(__name__)

#: Split name given to the held-out part of the training subjects.
VALIDATION = "validation"


def _target_names(ds: xr.Dataset, source: str, targets: Sequence[str] | None) -> list:
    if targets:
        return list(targets)
    names = dataset_store.other_expressions(ds, source)
    if not names:
        raise InputError(f"the dataset has no expression besides {source!r}")
    return names


def _holdout(
    ds: xr.Dataset, split_fraction: float | None
) -> tuple[xr.Dataset, str, str]:
    """The dataset, its training split and the split to score on.

    With ``split_fraction``, the last (by name) fraction of the training
    subjects becomes a validation split and the test split stays untouched.
    """
    if split_fraction is None:
        return ds, "train", "test"
    try:
        fraction = float(split_fraction)
    except (TypeError, ValueError):
        fraction = math.nan
    if not 0 < fraction < 1:
        raise InputError(f"split_fraction must be in (0, 1), got {split_fraction!r}")
    if "split" not in ds.coords:
        raise InputError("dataset has no split coordinate")
    split = np.asarray(ds["split"].values).astype(str)
    subjects = np.asarray(ds["subject"].values).astype(str)
    train = sorted(set(subjects[split == "train"].tolist()))
    if len(train) < 2:
        raise InputError(
            f"split_fraction needs at least 2 training subjects, found {len(train)}"
        )
    n_held = min(len(train) - 1, max(1, round(fraction * len(train))))
    held = np.isin(subjects, train[-n_held:]) & (split == "train")
    new_split = np.where(held, VALIDATION, split)
    logger.info("validating on %d of %d training subjects", n_held, len(train))
    return ds.assign_coords(split=("sample", new_split)), "train", VALIDATION


def _mean_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    mean = {**rows[0], "expression": "mean"}
    mean["mse"] = float(np.mean([r["mse"] for r in rows]))
    mean["psnr"] = float(np.mean([r["psnr"] for r in rows]))
    return mean


def _score_mr(
    ds: xr.Dataset,
    source: str,
    names: list[str],
    train_split: str,
    test_split: str,
    field: int,
    lam: float | str,
    index: tuple[np.ndarray, dict[str, np.ndarray]] | None = None,
) -> list[dict[str, Any]]:
    """Train MR on the training pairs (or ``index``) and score on ``test_split``."""
    if index is None:
        src, tgt = dataset_store.stored_pairs(ds, source, names, train_split)
    else:
        src = dataset_store.stored_images(ds, index[0])
        tgt = {name: dataset_store.stored_images(ds, i) for name, i in index[1].items()}
    model = fit(src, tgt, field=field, lam=lam)
    return _scored_rows(model, ds, source, names, test_split, field, lam, train_split)


def tune(
    dataset: xr.Dataset | str | os.PathLike,
    *,
    source: str = "neutral",
    targets: Sequence[str] | None = None,
    fields: Sequence[int] = (1, 3, 5, 7),
    lams: Sequence[float | str] = (0.01, 0.1, 0.4, 1, 4, 10),
    split_fraction: float | None = None,
    statistics: str | os.PathLike | None = None,
    folds: int | None = None,
) -> list[dict[str, Any]]:
    """Test error of every receptive field and penalty of a grid.

    Each setting is trained on the training subjects and scored on held-out
    ones (all target expressions at once; one training per setting).

    Parameters
    ----------
    dataset : xarray.Dataset or path
        A dataset store (or one opened by :func:`dmask.io.dataset_store.open_dataset`).
    source : str
        Source expression.
    targets : sequence of str, optional
        Target expressions; all but ``source`` by default.
    fields : sequence of int
        Odd receptive field sizes ``r``.
    lams : sequence of float or {"loo", "gcv"}
        Penalties; ``"loo"``/``"gcv"`` choose one per pixel (see
        :func:`dmask.fit`).
    split_fraction : float, optional
        Score on this fraction of the training subjects (the last by name),
        trained on the rest, leaving the test split untouched; by default
        train on the ``train`` split and score on the ``test`` split.
    statistics : str or path, optional
        Solve every setting from this statistics store
        (:mod:`dmask.statistics`) instead of training it: one pass over the
        images for the whole sweep. A store that does not exist yet is kept
        first, from the training split, for the largest field of ``fields``.
    folds : int, optional
        Subject-level k-fold cross-validation on the training split instead:
        statistics kept per fold (in ``statistics``, or a temporary store),
        each fold scored by the model of the other folds; rows then carry the
        mean over folds of ``mse`` and ``psnr``, their spread ``mse_std`` and
        ``folds``.

    Returns
    -------
    list of dict
        Per setting, one row per expression and a ``mean`` row: ``field``,
        ``lam``, ``expression``, ``n_train``, ``n_test``, ``mse``, ``psnr``
        and ``best`` (True on the mean row of least MSE; see
        :func:`best_setting`). When ``lams`` holds ``"loo"``/``"gcv"``,
        every row also has ``lam_median``: for those settings the median of
        the penalties chosen per pixel and channel (over every target on the
        mean row; with ``folds``, the median of the folds' medians), None for
        the fixed ones.
    """
    ds = dataset_store.opened(dataset)
    names = _target_names(ds, source, targets)
    if not fields or not lams:
        raise InputError("fields and lams must each hold at least one value")
    for field in fields:
        for lam in lams:
            check_settings(field, lam, "minmax")
    if statistics is not None or folds is not None:
        if split_fraction is not None:
            raise InputError("split_fraction is not used with statistics or folds")
        rows = _tune_from_statistics(
            ds, source, names, fields, lams, statistics, folds
        )  # fmt: skip
        return _mark_best(rows)
    ds, train_split, test_split = _holdout(ds, split_fraction)
    rows: list[dict[str, Any]] = []
    for field in fields:
        for lam in lams:
            scored = _score_mr(ds, source, names, train_split, test_split, field, lam)
            logger.info(
                "field %s lam %s: mean MSE %.6f", field, lam, scored[-1]["mse"]
            )  # fmt: skip
            rows += scored
    return _mark_best(rows)


def _mark_best(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if any("lam_median" in row for row in rows):  # every row the same keys (CSV)
        for row in rows:
            row.setdefault("lam_median", None)
    best = best_setting(rows)
    for row in rows:
        row["best"] = row["expression"] == "mean" and (row["field"], row["lam"]) == (
            best["field"],
            best["lam"],
        )
    logger.info(
        "best: field %s lam %s (mean MSE %.6f, PSNR %.2f dB)",
        best["field"], best["lam"], best["mse"], best["psnr"],
    )  # fmt: skip
    return rows


def _scored_rows(
    model: Any,
    ds: xr.Dataset,
    source: str,
    names: list[str],
    split: str,
    field: int,
    lam: float | str,
    train_split: str = "train",
) -> list[dict[str, Any]]:
    """Rows of a trained model's test MSE and PSNR per expression, and their mean."""
    scored = evaluate(
        model, ds, source=source, split=split, train_split=train_split, targets=names
    )
    rows = [
        {
            "field": int(field),
            "lam": lam if isinstance(lam, str) else float(lam),
            "expression": row["expression"],
            "n_train": int(model.dataset.attrs["n_samples"]),
            "n_test": row["n_test"],
            "mse": row["mse_mr"],
            "psnr": row["psnr_mr"],
        }
        for row in scored
        if row["expression"] != "mean"
    ]
    mean = _mean_row(rows)
    if isinstance(lam, str):  # chosen per pixel: the median penalty chosen
        chosen = {
            row["expression"]: _chosen_lams(model, row["expression"]) for row in rows
        }
        for row in rows:
            row["lam_median"] = float(np.median(chosen[row["expression"]]))
        mean["lam_median"] = float(np.median(np.concatenate(list(chosen.values()))))
    return [*rows, mean]


def _chosen_lams(model: Any, target: str) -> np.ndarray:
    """The penalties a ``gcv``/``loo`` model chose for ``target``, every pixel."""
    (values,) = inputs.as_numpy(model.lam_map(target).data)
    return np.asarray(values, dtype=np.float64).ravel()


def _fold_mean(per_fold: list[list[dict[str, Any]]], folds: int) -> list[dict]:
    """One row per expression: the folds' mean MSE and PSNR, and MSE's spread."""
    out = []
    for rows in zip(*per_fold, strict=True):
        mse = np.array([r["mse"] for r in rows])
        out.append(
            {
                **rows[0],
                "n_train": int(np.mean([r["n_train"] for r in rows])),
                "n_test": int(sum(r["n_test"] for r in rows)),
                "mse": float(mse.mean()),
                "mse_std": float(mse.std(ddof=1)) if len(mse) > 1 else 0.0,
                "psnr": float(np.mean([r["psnr"] for r in rows])),
                "folds": folds,
            }
        )
        if "lam_median" in rows[0]:  # the median over folds of each one's median
            out[-1]["lam_median"] = float(np.median([r["lam_median"] for r in rows]))
    return out


def _tune_from_statistics(
    ds: xr.Dataset,
    source: str,
    names: list[str],
    fields: Sequence[int],
    lams: Sequence[float | str],
    statistics: str | os.PathLike | None,
    folds: int | None,
) -> list[dict[str, Any]]:
    """:func:`tune` from one statistics pass: held-out test split, or k folds."""
    import tempfile

    from dmask.statistics import keep_statistics, open_statistics, solve

    largest = max(int(f) for f in fields)
    with tempfile.TemporaryDirectory(prefix="dmask-tune-") as scratch:
        path = statistics or os.path.join(scratch, "statistics.zarr")
        if not locations.is_local(path) or os.path.exists(path):
            info = open_statistics(path)
            if folds is not None and info.folds != folds:
                raise InputError(
                    f"{path} keeps {info.folds} fold(s), not the {folds} asked for"
                )
            if info.field < largest or set(names) - set(info.targets):
                raise InputError(
                    f"{path} keeps r <= {info.field} for {info.targets}; the sweep "
                    f"needs r = {largest} for {names}"
                )
        else:
            info = keep_statistics(
                ds, path, source=source, targets=names, field=largest,
                folds=folds or 1,
            )  # fmt: skip
        split = np.asarray(ds["split"].values).astype(str)
        subjects = np.asarray(ds["subject"].values).astype(str)
        here = [  # this dataset's subjects in the store (an update adds others)
            i
            for i, entry in enumerate(info.datasets)
            if locations.same_store(entry["path"], ds.encoding["dmask_path"])
        ]
        ours = np.isin(info.subject_datasets, here)
        if folds is not None and not ours.any():
            raise InputError(
                f"{info.path} holds no subject of {ds.encoding['dmask_path']} to score"
            )
        rows: list[dict[str, Any]] = []
        for field in fields:
            for lam in lams:
                if folds is None:
                    model = solve(info, int(field), lam)
                    scored = _scored_rows(model, ds, source, names, "test", field, lam)
                else:
                    per_fold = []
                    for fold in range(info.folds):
                        held = info.subjects[(info.subject_folds == fold) & ours]
                        marked = np.where(
                            np.isin(subjects, held) & (split == "train"), "fold", split
                        )
                        model = solve(info, int(field), lam, exclude_folds=[fold])
                        per_fold.append(
                            _scored_rows(
                                model, ds.assign_coords(split=("sample", marked)),
                                source, names, "fold", field, lam,
                            )
                        )  # fmt: skip
                    scored = _fold_mean(per_fold, info.folds)
                logger.info(
                    "field %s lam %s: mean MSE %.6f", field, lam, scored[-1]["mse"]
                )  # fmt: skip
                rows += scored
    return rows


def best_setting(
    rows: Sequence[dict[str, Any]], numeric: bool = False
) -> dict[str, Any]:
    """The ``mean`` row of least MSE among :func:`tune` rows (its first on ties).

    Parameters
    ----------
    rows : sequence of dict
        Rows of :func:`tune`.
    numeric : bool
        Only settings with a numeric lambda (not ``"loo"``/``"gcv"``) and a
        finite error, as full ridge regression needs; all settings when there
        is none.

    Returns
    -------
    dict
        ``field``, ``lam``, ``mse`` and ``psnr`` of the best setting.
    """
    means = [r for r in rows if r["expression"] == "mean"]
    if numeric:
        fixed = [
            r
            for r in means
            if not isinstance(r["lam"], str) and not math.isnan(r["mse"])
        ]
        means = fixed or means
    if not means:
        raise InputError("no mean rows to choose from")
    best = min(means, key=lambda r: r["mse"])
    return {key: best[key] for key in ("field", "lam", "mse", "psnr")}


def _normalized_rows(ds: xr.Dataset, index: np.ndarray) -> np.ndarray:
    """Samples ``index`` min-max normalised per image, ``(n, H * W * C)`` float64."""
    (images,) = inputs.as_numpy(ds["images"].data[index])
    normalized = minmax.normalize_images(images)
    return normalized.reshape(len(index), -1)


def _image_scores(predicted: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Mean over images of per-image MSE and PSNR (peak 1), as in evaluation."""
    mse = ((predicted - truth) ** 2).mean(axis=1)
    return float(mse.mean()), float(psnr(mse).mean())


def _score_full_ridge(
    ds: xr.Dataset,
    names: list[str],
    source: str,
    train: tuple[np.ndarray, dict[str, np.ndarray]],
    lam: float,
) -> list[dict[str, Any]]:
    """Full ridge regression (whole normalised image to whole image) per target.

    Trained on the pairs ``train``, scored on the test pairs of each target.
    """
    x_train = _normalized_rows(ds, train[0])
    rows = []
    for name in names:
        model = FullRidge(lam=lam).fit(x_train, _normalized_rows(ds, train[1][name]))
        test_source, test_target = dataset_store.pair_indices(
            ds, source, [name], "test"
        )
        mse, psnr = _image_scores(
            model.predict(_normalized_rows(ds, test_source)),
            _normalized_rows(ds, test_target[name]),
        )
        rows.append(
            {
                "method": "full_ridge",
                "n_train": len(train[0]),
                "field": None,
                "lam": lam,
                "expression": name,
                "n_test": len(test_source),
                "mse": mse,
                "psnr": psnr,
            }
        )
    return [*rows, _mean_row(rows)]


def training_size_curve(
    dataset: xr.Dataset | str | os.PathLike,
    *,
    source: str = "neutral",
    targets: Sequence[str] | None = None,
    sizes: Sequence[int] = (5, 10, 20, 40, 80, 160),
    field: int = 3,
    lam: float = 0.4,
    include_full_ridge: bool = True,
) -> list[dict[str, Any]]:
    """Test error against the number of training subjects, MR and full ridge.

    Each size ``N`` trains on the first ``N`` training subjects (by name, so the
    sets are nested) and scores on the test split. Full ridge regression maps
    the whole normalised image to the whole image (:class:`dmask.evaluation.baselines.
    FullRidge`, dual form when ``N`` is below the pixel count) in this process:
    it holds the ``N`` training images of the source and one target in memory.

    Parameters
    ----------
    dataset : xarray.Dataset or path
        A dataset store (or one opened by :func:`dmask.io.dataset_store.open_dataset`).
    source : str
        Source expression.
    targets : sequence of str, optional
        Target expressions; all but ``source`` by default.
    sizes : sequence of int
        Training set sizes; those above the training subjects available are
        left out (logged).
    field : int
        Receptive field size of MR.
    lam : float
        Penalty of MR and of full ridge regression.
    include_full_ridge : bool
        Also score full ridge regression.

    Returns
    -------
    list of dict
        Per size and method, one row per expression and a ``mean`` row:
        ``method`` (``mr`` or ``full_ridge``), ``n_train``, ``field`` (None for
        full ridge), ``lam``, ``expression``, ``n_test``, ``mse``, ``psnr``.
    """
    check_settings(field, lam, "minmax")
    if include_full_ridge and isinstance(lam, str):
        raise InputError(f"full ridge regression needs a numeric lam, got {lam!r}")
    ds = dataset_store.opened(dataset)
    names = _target_names(ds, source, targets)
    if not sizes or any(
        isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1
        for s in sizes
    ):
        raise InputError(f"sizes must be positive integers, got {sizes!r}")
    train = dataset_store.pair_indices(ds, source, names, "train")
    available = len(train[0])
    kept = sorted({int(s) for s in sizes if s <= available})
    if len(kept) < len(set(sizes)):
        logger.info("training sizes above %d subjects left out", available)
    if not kept:
        raise InputError(
            f"every size in {list(sizes)} exceeds the {available} training subjects"
        )
    rows: list[dict[str, Any]] = []
    for n in kept:
        subset = (train[0][:n], {name: idx[:n] for name, idx in train[1].items()})
        scored = _score_mr(ds, source, names, "train", "test", field, lam, subset)
        rows += [{"method": "mr", **row} for row in scored]
        if include_full_ridge:
            rows += _score_full_ridge(ds, names, source, subset, float(lam))
        logger.info("N = %d: MR mean MSE %.6f", n, scored[-1]["mse"])
    order = ("method", "n_train", "field", "lam", "expression", "n_test", "mse", "psnr")
    return [{key: row[key] for key in order} for row in rows]
