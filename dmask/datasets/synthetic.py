"""Synthetic paired-face datasets, rendered block by block straight into Zarr."""

from __future__ import annotations

import logging
import os

import dask
import numpy as np
import xarray as xr

from dmask.core import alignment
from dmask.datasets.drawing import (
    EXPRESSIONS,
    landmark_fractions,
    render_face,
    subject_params,
)
from dmask.errors import InputError
from dmask.graph import runtime
from dmask.io import dataset_store, locations, locks, stores

__all__ = ["EXPRESSIONS", "render_samples", "make_synthetic_dataset"]

logger = logging.getLogger(__name__)

#: Bytes of one chunk of images aimed at.
CHUNK_BYTES = 2 * 2**20
#: Largest spatial chunk side: tiles read their window without decoding whole
#: large images.
CHUNK_SIDE = 128


def render_samples(
    seed: int, n_subjects: int, start: int, stop: int, height: int, width: int
) -> np.ndarray:
    """Render samples ``start:stop`` of a dataset of ``n_subjects``, as uint8.

    Samples are expression-major: sample ``e * n_subjects + s`` is subject ``s``
    with expression ``EXPRESSIONS[e]``, so each expression is one contiguous run.

    Returns
    -------
    numpy.ndarray
        ``(stop - start, height, width, 3)`` uint8.
    """
    out = np.empty((stop - start, height, width, 3), dtype=np.uint8)
    for i, sample in enumerate(range(start, stop)):
        expression, subject = divmod(sample, n_subjects)
        params = subject_params(seed, subject)
        face = render_face(params, EXPRESSIONS[expression], height, width)
        out[i] = np.rint(np.clip(face, 0.0, 1.0) * 255.0).astype(np.uint8)
    return out


def render_and_write(
    path: str,
    seed: int,
    n_subjects: int,
    start: int,
    stop: int,
    height: int,
    width: int,
) -> tuple[int, int]:
    """Task: render one sample block and write the chunks it owns."""
    return dataset_store.write_dataset_block(
        path, start, render_samples(seed, n_subjects, start, stop, height, width)
    )


@locks.locks_output("path")
def make_synthetic_dataset(
    path: str | os.PathLike,
    n_subjects: int,
    image_shape: tuple[int, int] = (128, 128),
    seed: int = 0,
    test_fraction: float = 0.25,
    overwrite: bool = False,
) -> xr.Dataset:
    """Generate a synthetic paired-face dataset store.

    Every subject has a neutral face and the six expressions of
    :data:`EXPRESSIONS`, stored expression-major (all neutral faces, then all
    happy ones, ...) so that training reads contiguous runs. The last
    ``test_fraction`` of subjects form the test split, so no identity is in both.

    Parameters
    ----------
    path : str or path
        Output dataset store.
    n_subjects : int
        Number of subjects (at least 2 when a test split is asked for).
    image_shape : tuple of int
        ``(H, W)``, any size from 16 up.
    seed : int
        Seed; the same seed gives the same dataset bit for bit.
    test_fraction : float
        Fraction of subjects held out for testing, in [0, 1).
    overwrite : bool
        Replace an existing store.

    Returns
    -------
    xarray.Dataset
        The written store, opened lazily.
    """
    height, width = (int(v) for v in image_shape)
    if n_subjects < 1:
        raise InputError(f"n_subjects must be at least 1, got {n_subjects}")
    if height < 16 or width < 16:
        raise InputError(f"image size must be at least 16x16, got {height}x{width}")
    if not 0 <= test_fraction < 1:
        raise InputError(f"test_fraction must be in [0, 1), got {test_fraction}")
    n_test = round(n_subjects * test_fraction)
    if test_fraction > 0 and n_subjects >= 2:
        n_test = min(max(1, n_test), n_subjects - 1)
    per_subject = len(EXPRESSIONS)
    n = n_subjects * per_subject
    subjects = [f"s{i:05d}" for _ in EXPRESSIONS for i in range(n_subjects)]
    expressions = [e for e in EXPRESSIONS for _ in range(n_subjects)]
    split = [
        "test" if i >= n_subjects - n_test else "train"
        for _ in EXPRESSIONS
        for i in range(n_subjects)
    ]
    n_train = max(1, n_subjects - n_test)  # canonical: the training faces' mean
    canonical = np.mean(
        [landmark_fractions(subject_params(seed, i)) for i in range(n_train)], axis=0
    )
    tile = (min(height, CHUNK_SIDE), min(width, CHUNK_SIDE))
    block = int(max(1, min(n, CHUNK_BYTES // (tile[0] * tile[1] * 3))))
    # a task draws its block of faces: uint8 pixels, and float64 canvases per face
    runtime.check_task_memory(
        block * height * width * 3 + 8 * 8 * height * width,
        f"drawing faces of {height}x{width}",
    )
    written = dataset_store.create_dataset_template(
        path,
        (n, height, width, 3),
        (block, *tile, 3),
        {"subject": subjects, "expression": expressions, "split": split},
        {
            "origin": "dmask synthetic faces",
            "seed": int(seed),
            "n_subjects": int(n_subjects),
            "value_range": [0, 255],
            "landmarks": alignment.landmarks_attribute(canonical, n_train, "drawn"),
        },
        overwrite=overwrite,
    )
    task = dask.delayed(render_and_write, pure=True)
    tasks = [
        task(
            locations.store_path(written),
            int(seed),
            n_subjects,
            s0,
            min(n, s0 + block),
            height,
            width,
        )
        for s0 in range(0, n, block)
    ]
    logger.info(
        "rendering %d faces of %dx%d in %d blocks to %s",
        n,
        height,
        width,
        len(tasks),
        path,
    )
    runtime.compute(*tasks, phase="drawing faces")
    stores.finalize_store(written)
    return dataset_store.open_dataset(path)
