"""Batch synthesis: apply a stored model to a dataset store, into a new store."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from dmask.errors import InputError
from dmask.graph import runtime
from dmask.io import dataset_store, locations, locks, photographs, stores
from dmask.model import Model

__all__ = ["apply_to_store", "write_pngs"]

logger = logging.getLogger(__name__)


def _source_samples(
    ds: xr.Dataset, source: str | None, split: str | None
) -> np.ndarray:
    keep = np.ones(ds.sizes["sample"], dtype=bool)
    if source is not None:
        expressions = np.asarray(ds["expression"].values).astype(str)
        if source not in set(expressions.tolist()):
            raise InputError(f"expression {source!r} is not in the dataset")
        keep &= expressions == source
    if split is not None:
        if "split" not in ds.coords:
            raise InputError("dataset has no split coordinate")
        keep &= np.asarray(ds["split"].values).astype(str) == split
    index = np.flatnonzero(keep)
    if index.size == 0:
        raise InputError(f"no sample has expression {source!r} in split {split!r}")
    return index


@locks.locks_output("out")
def apply_to_store(
    model: Model,
    dataset: xr.Dataset,
    out: str | os.PathLike,
    source: str | None = "neutral",
    split: str | None = None,
    targets: Sequence[str] | None = None,
    overwrite: bool = False,
    sample_block: int | None = None,
    strength: float = 1.0,
) -> xr.Dataset:
    """Synthesise every target from the source faces of a dataset store.

    Parameters
    ----------
    model : Model
        Model to apply (lazily opened or in memory).
    dataset : xarray.Dataset
        An opened dataset store.
    out : str or path
        New dataset store of float32 predictions: one sample per source face
        and target, target-major, with ``expression`` naming the target.
    source : str or None
        Expression of the faces to transform; None takes every sample.
    split : str or None
        Only this split; None takes all.
    targets : sequence of str, optional
        Subset of the model's targets.
    overwrite : bool
        Replace an existing ``out``.
    sample_block : int, optional
        Samples per task.
    strength : float
        Expression strength (see :meth:`dmask.Model.predict`).

    Returns
    -------
    xarray.Dataset
        The output store, opened lazily.
    """
    out = locations.store_path(out)
    for name, source_path in (
        ("dataset", dataset.encoding.get("dmask_path")),
        ("model", model.dataset.encoding.get("dmask_path")),
    ):
        if locations.same_store(out, source_path):
            raise InputError(f"output store {out} is the {name} store; choose another")
    index = _source_samples(dataset, source, split)
    names = list(targets) if targets else model.targets
    for name in names:
        model._target(name)
    if "dmask_path" in dataset.encoding:
        sources: Any = dataset_store.stored_images(dataset, index)
    else:
        sources = dataset["images"].isel(sample=index)
    lazy = model.predict_lazy(
        sources, sample_block, name="images", strength=strength, dtype=np.float32
    )

    channels = model.channels
    first = lazy[names[0]]
    th, tw = first.chunks[1][0], first.chunks[2][0]
    block = first.chunks[0][0]
    images = da.concatenate([lazy[n] for n in names], axis=0)
    images = images.rechunk((block, th, tw, channels))
    subjects = np.asarray(dataset["subject"].values).astype(str)[index]
    splits = (
        np.asarray(dataset["split"].values).astype(str)[index]
        if "split" in dataset.coords
        else np.full(index.size, "all")
    )
    coords = {
        "subject": np.tile(subjects, len(names)),
        "expression": np.repeat(np.asarray(names, dtype=str), index.size),
        "split": np.tile(splits, len(names)),
    }
    written = dataset_store.create_dataset_template(
        out,
        images.shape,
        (block, th, tw, channels),
        coords,
        {
            "origin": "dmask apply",
            "model_fingerprint": str(model.dataset.attrs.get("training_fingerprint")),
            "value_range": [0, _peak(model, dataset)],
            "normalize": model.normalize,
            "strength": float(strength),
        },
        dtype="float32",
        overwrite=overwrite,
    )
    region = xr.Dataset({"images": (("sample", "y", "x", "channel"), images)})
    with stores.quiet_zarr():
        delayed = region.to_zarr(
            written, mode="r+", compute=False, zarr_format=3, consolidated=False
        )
    runtime.compute(delayed, phase="predicting")
    stores.finalize_store(written)
    logger.info("wrote %d synthesised faces to %s", images.shape[0], out)
    return dataset_store.open_dataset(out)


def _peak(model: Model, dataset: xr.Dataset) -> float:
    """Value of white in the predictions: 1 after min-max, else the data's own."""
    if model.normalize == "minmax":
        return 1.0
    return dataset_store.value_peak(dataset)


def _write_png_block(
    images: np.ndarray,
    names: Sequence[str],
    folder: str,
    peak: float = 1.0,
    display: str = "clip",
) -> int:
    for image, name in zip(images, names, strict=True):
        photographs.write_png(os.path.join(folder, name), image, peak, display)
    return len(names)


def write_pngs(
    dataset: xr.Dataset, folder: str | os.PathLike, display: str = "clip"
) -> int:
    """Write every image of a prediction store as ``{subject}_{expression}.png``.

    ``display="clip"`` clips values to [0, 1] (of the store's value range) and
    scales them to 8 bits; ``"stretch"`` maps each image's own minimum and
    maximum to 0 and 255 (:func:`dmask.io.photographs.stretch_uint8`). Returns
    the count.
    """
    photographs.check_display(display)
    os.makedirs(folder, exist_ok=True)
    images = dataset["images"].data
    subjects = np.asarray(dataset["subject"].values).astype(str)
    expressions = np.asarray(dataset["expression"].values).astype(str)
    names = [f"{s}_{e}.png" for s, e in zip(subjects, expressions, strict=True)]
    peak = float(dataset.attrs.get("value_range", [0, 1])[1])
    task = dask.delayed(_write_png_block, pure=True)
    tasks = []
    start = 0
    for size in images.chunks[0]:
        block = images[start : start + size]
        chunk = names[start : start + size]
        tasks.append(task(block, chunk, str(folder), peak, display))
        start += size
    return int(sum(runtime.compute(*tasks, phase="writing images")))
