"""Test error of a model against the identity and mean-difference baselines."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from dmask.evaluation.metrics import psnr, text_table
from dmask.graph import inputs, runtime
from dmask.io import dataset_store
from dmask.model import Model

__all__ = ["EVALUATED_METHODS", "evaluate", "format_evaluation"]


#: Methods compared, in table order.
EVALUATED_METHODS = ("mr", "identity", "mean_difference")


def _normalized(images: da.Array, minmax: bool) -> da.Array:
    data = images.astype(np.float64)
    if not minmax:
        return data
    return inputs.normalized(data)


def _per_image_mse(a: da.Array, b: da.Array) -> da.Array:
    return ((a - b) ** 2).mean(axis=(1, 2, 3))


def evaluate(
    model: Model,
    dataset: xr.Dataset,
    source: str = "neutral",
    split: str = "test",
    train_split: str = "train",
    targets: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """MSE and PSNR per target expression on one split, with baselines.

    Baselines: ``identity`` (output = input) and ``mean_difference`` (input plus
    the mean training difference target - source). Images are compared in the
    model's normalisation (min-max: [0, 1], peak 1; none: the data's values,
    peak 255 for 8-bit data, else 1).

    Returns
    -------
    list of dict
        One row per target: ``expression``, ``n_test`` and ``mse_<method>``,
        ``psnr_<method>`` (mean over images of per-image PSNR in dB).
    """
    minmax = model.normalize == "minmax"
    names = list(targets) if targets else model.targets
    peak = 1.0 if minmax else dataset_store.value_peak(dataset)
    images = dataset["images"].data
    pending = []
    for name in names:
        src_idx, tgt_idx = dataset_store.pair_indices(dataset, source, [name], split)
        train_src, train_tgt = dataset_store.pair_indices(
            dataset, source, [name], train_split
        )
        src = _normalized(images[src_idx], minmax)
        truth = _normalized(images[tgt_idx[name]], minmax)
        mean_diff = (
            _normalized(images[train_tgt[name]], minmax)
            - _normalized(images[train_src], minmax)
        ).mean(axis=0)
        test_source = (
            dataset_store.stored_images(dataset, src_idx)
            if "dmask_path" in dataset.encoding
            else images[src_idx]
        )
        predicted = model.predict_lazy(test_source, name="images")[name]
        pending.append(
            (
                name,
                {
                    "mr": _per_image_mse(predicted, truth),
                    "identity": _per_image_mse(src, truth),
                    "mean_difference": _per_image_mse(src + mean_diff[None], truth),
                },
            )
        )
    flat = [arr for _, methods in pending for arr in methods.values()]
    values = iter(runtime.compute(*flat, phase="evaluating"))
    rows = []
    for name, methods in pending:
        row: dict[str, Any] = {"expression": name}
        for method in methods:
            mse = np.asarray(next(values))
            row["n_test"] = int(mse.size)
            row[f"mse_{method}"] = float(mse.mean())
            row[f"psnr_{method}"] = float(np.mean(psnr(mse, peak)))
        rows.append(row)
    if len(rows) > 1:
        mean_row: dict[str, Any] = {"expression": "mean", "n_test": rows[0]["n_test"]}
        for key in rows[0]:
            if key.startswith(("mse_", "psnr_")):
                mean_row[key] = float(np.mean([r[key] for r in rows]))
        rows.append(mean_row)
    return rows


def format_evaluation(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of evaluation rows."""
    header = ["expression", "n"]
    for method in EVALUATED_METHODS:
        header += [f"MSE {method}", f"PSNR {method}"]
    lines = [header]
    for row in rows:
        line = [str(row["expression"]), str(row["n_test"])]
        for method in EVALUATED_METHODS:
            psnr = row[f"psnr_{method}"]
            line += [
                f"{row[f'mse_{method}']:.5f}",
                "inf" if math.isinf(psnr) else f"{psnr:.2f}",
            ]
        lines.append(line)
    return text_table(lines)
