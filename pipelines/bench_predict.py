"""Prediction benchmark: images per second of applying a trained dmask model.

Cases (synthetic faces, neutral -> happy, RGB, lambda 0.4, a model trained on
40 subjects of the same synthetic dataset):

  128 x 128, r = 3 and r = 7   (``--n-images`` neutral faces, default 300)
  512 x 512, r = 3 and r = 7   (default 60 faces)

Each case times three ways of predicting the same neutral faces:

(a) dmask zarr->zarr
    ``dmask.apply.store.apply_to_store`` from the dataset store to a new
    prediction store (each run a new one: the last is removed untimed), on
    dask's threaded scheduler with two threads.
(b) vectorised numpy in memory
    the images already min-max normalised as float64 in memory and the weights
    as numpy planes ``(r * r, H, W, C)``; the sum over the ``r * r`` window
    offsets of the shifted zero-padded images times the weight planes, in
    batches of 64 MiB, on as many threads as (a) (numpy releases the GIL), in
    this process. The ratio (a)/(b) is printed (issue 14's target: >= 90%).
(c) reference dense matrix
    per channel a dense ``d x (d + 1)`` matrix (``d = H * W``) of weights and
    bias and one matrix product for all images; only where a channel's matrix
    takes less than 4 GB (128 x 128), built one channel at a time.

Roofline of (a): the least time this machine allows (``benchlib``): the stored
images read and the predictions written once, with the weights, at the memory
bandwidth, or ``2 (k + 1)`` FLOPs per output value at the GEMM rate, whichever
is longer, both rates measured at the start of this run; "of roofline" is
that time over (a)'s.

All three are checked against ``Model.predict`` on a few images (1e-6). Times
are medians of ``--repeats`` runs; the machine, a table and, with ``--json``,
a JSON file are written.

    python pipelines/bench_predict.py [--cases 128-r3 128-r7 512-r3 512-r7]
        [--repeats 3] [--n-images N] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import dask
import numpy as np
import xarray as xr
from benchlib import Limits, machine, machine_limits, predict_work, roofline

import dmask
import dmask.apply.store
import dmask.datasets.synthetic
from dmask.core import minmax, windows
from dmask.io import dataset_store

CASES = {
    "128-r3": {"size": 128, "field": 3, "n_images": 300},
    "128-r7": {"size": 128, "field": 7, "n_images": 300},
    "512-r3": {"size": 512, "field": 3, "n_images": 60},
    "512-r7": {"size": 512, "field": 7, "n_images": 60},
}
TRAIN_SUBJECTS = 40
LAM = 0.4
THREADS = 2
CHECKED_IMAGES = 4
TOLERANCE = 1e-6
DENSE_LIMIT = 4 * 10**9
BATCH_BYTES = 64 * 2**20


@dataclass
class Faces:
    """A synthetic dataset store and its neutral faces in memory."""

    store: xr.Dataset
    raw: np.ndarray  # (N, H, W, 3) uint8 neutral faces, store order
    normalised: np.ndarray  # the same, min-max normalised, float64


def make_faces(folder: str, size: int, n_images: int) -> Faces:
    """Synthesize ``n_images`` subjects; the first 40 form the train split."""
    n_subjects = max(n_images, TRAIN_SUBJECTS + 1)
    store = dmask.datasets.synthetic.make_synthetic_dataset(
        os.path.join(folder, f"faces{size}.zarr"),
        n_subjects,
        (size, size),
        test_fraction=1 - TRAIN_SUBJECTS / n_subjects,
    )
    neutral = np.flatnonzero(store["expression"].values.astype(str) == "neutral")
    raw = dataset_store.read_images(store.encoding["dmask_path"], neutral)
    low, scale = minmax.minmax_parameters(raw)
    return Faces(store, raw, minmax.normalize_block(raw, low, scale))


def train(faces: Faces, field: int, folder: str) -> dmask.Model:
    """Fit neutral -> happy on the train split (40 subjects), stored."""
    sources, targets = dataset_store.stored_pairs(
        faces.store, "neutral", ["happy"], "train"
    )
    return dmask.fit(
        sources,
        targets,
        field=field,
        lam=LAM,
        store=os.path.join(folder, f"model{field}.zarr"),
        overwrite=True,
    )


def timings(
    fn: Callable[[], object], repeats: int, after: Callable[[], object] | None = None
) -> list[float]:
    """Wall times of ``repeats`` calls; ``after`` runs after each, untimed."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
        if after is not None:
            after()
    return times


# ----------------------------------------------------------- (a) dmask zarr->zarr


def apply_store(model: dmask.Model, faces: Faces, out: str) -> xr.Dataset:
    """Synthesise every neutral face of the store into ``out``."""
    return dmask.apply.store.apply_to_store(
        model, faces.store, out, source="neutral", overwrite=True
    )


# ------------------------------------------------ (b) vectorised numpy in memory


def numpy_weights(model: dmask.Model) -> tuple[np.ndarray, np.ndarray]:
    """Weights as contiguous ``(k, H, W, C)`` and bias ``(H, W, C)``, numpy."""
    weight = np.asarray(model.weights().values, dtype=np.float64)
    bias = np.asarray(model.bias().values, dtype=np.float64)
    return np.ascontiguousarray(np.moveaxis(weight, -1, 0)), bias


def numpy_loop(
    images: np.ndarray, weight: np.ndarray, bias: np.ndarray, field: int
) -> np.ndarray:
    """Predict normalised images: sums of shifted images times weight planes,
    the batches shared by ``THREADS`` threads."""
    n, height, width, _ = images.shape
    b = field // 2
    out = np.empty_like(images)
    batch = max(1, min(BATCH_BYTES // images[0].nbytes, -(-n // THREADS)))

    def run(s0: int) -> None:
        padded = np.pad(images[s0 : s0 + batch], ((0, 0), (b, b), (b, b), (0, 0)))
        part = out[s0 : s0 + batch]
        part[:] = bias
        product = np.empty_like(part)
        for a, (oy, ox) in enumerate(windows.window_offsets(field) + b):
            window = padded[:, oy : oy + height, ox : ox + width]
            np.multiply(weight[a], window, out=product)
            part += product

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(run, range(0, n, batch)))
    return out


# ---------------------------------------------------- (c) reference dense matrix


def dense_bytes(size: int) -> int:
    """Bytes of one channel's dense ``d x (d + 1)`` float64 matrix."""
    d = size * size
    return d * (d + 1) * 8


def dense_matrix(weight: np.ndarray, bias: np.ndarray, channel: int) -> np.ndarray:
    """One channel's ``d x (d + 1)`` matrix from ``(k, H, W, C)`` weights."""
    k, height, width, _ = weight.shape
    d = height * width
    field = math.isqrt(k)
    matrix = np.zeros((d, d + 1))
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    rows = np.arange(d).reshape(height, width)
    for a, (oy, ox) in enumerate(windows.window_offsets(field)):
        qy, qx = ys + oy, xs + ox
        inside = (qy >= 0) & (qy < height) & (qx >= 0) & (qx < width)
        matrix[rows[inside], (qy * width + qx)[inside]] = weight[a, ..., channel][
            inside
        ]
    matrix[:, d] = bias[..., channel].ravel()
    return matrix


def dense_predict(
    images: np.ndarray, weight: np.ndarray, bias: np.ndarray, repeats: int
) -> tuple[np.ndarray, list[float], float]:
    """Dense matrix prediction, one channel matrix at a time.

    Returns the prediction, the per-repeat times of the products (summed over
    channels) and the seconds spent building the matrices.
    """
    n, height, width, channels = images.shape
    out = np.empty_like(images)
    times = np.zeros(repeats)
    build = 0.0
    for c in range(channels):
        started = time.perf_counter()
        matrix = dense_matrix(weight, bias, c)
        build += time.perf_counter() - started
        for i in range(repeats):
            started = time.perf_counter()
            augmented = np.ones((n, height * width + 1))
            augmented[:, :-1] = images[..., c].reshape(n, -1)
            product = augmented @ matrix.T
            times[i] += time.perf_counter() - started
        out[..., c] = product.reshape(n, height, width)
        del matrix
    return out, times.tolist(), build


# ------------------------------------------------------------------------ cases


def max_error(reference: np.ndarray, other: np.ndarray) -> float:
    """Largest absolute difference over the checked images."""
    count = CHECKED_IMAGES
    return float(np.max(np.abs(reference[:count] - other[:count])))


def run_case(
    name: str, faces: Faces, field: int, repeats: int, folder: str, limits: Limits
) -> dict:
    """Train, then time and check (a), (b) and (c) for one case."""
    case = CASES[name]
    size = case["size"]
    n = faces.raw.shape[0]
    model = train(faces, field, folder)
    reference = model.predict(faces.raw[:CHECKED_IMAGES])["happy"]
    out = os.path.join(folder, "predicted.zarr")

    # each run writes a new store: the previous one is removed outside the time
    times_a = timings(
        lambda: apply_store(model, faces, out),
        repeats,
        after=lambda: shutil.rmtree(out),
    )
    apply_store(model, faces, out)
    predicted_store = dataset_store.open_dataset(out)["images"]
    stored = predicted_store[:CHECKED_IMAGES].values
    error_a = max_error(reference, stored.astype(np.float64))

    weight, bias = numpy_weights(model)
    times_b = timings(
        lambda: numpy_loop(faces.normalised, weight, bias, field), repeats
    )
    error_b = max_error(
        reference, numpy_loop(faces.normalised[:CHECKED_IMAGES], weight, bias, field)
    )

    row = {
        "case": name,
        "size": size,
        "field": field,
        "n_images": n,
        "train_pairs": TRAIN_SUBJECTS,
        "a_dmask_times_s": times_a,
        "a_dmask_images_per_s": n / statistics.median(times_a),
        "a_max_error": error_a,
        "b_numpy_times_s": times_b,
        "b_numpy_images_per_s": n / statistics.median(times_b),
        "b_max_error": error_b,
    }
    row["ratio_a_over_b"] = row["a_dmask_images_per_s"] / row["b_numpy_images_per_s"]
    work = predict_work(
        n, size, field, faces.raw.shape[-1], faces.raw.dtype.itemsize,
        predicted_store.dtype.itemsize, model.weights().dtype.itemsize,
    )  # fmt: skip
    least = roofline(work, limits)
    row["a_roofline"] = {
        "bytes": work.bytes,
        "flops": work.flops,
        "seconds": least,
        "fraction": least / statistics.median(times_a),
    }
    if dense_bytes(size) < DENSE_LIMIT:
        predicted, times_c, build = dense_predict(
            faces.normalised, weight, bias, repeats
        )
        row["c_dense_times_s"] = times_c
        row["c_dense_build_s"] = build
        row["c_dense_images_per_s"] = n / statistics.median(times_c)
        row["c_max_error"] = max_error(reference, predicted)
    else:
        row["c_dense_skipped"] = f"n/a (needs {dense_bytes(size) / 1e9:.0f} GB)"
    errors = [row[k] for k in ("a_max_error", "b_max_error", "c_max_error") if k in row]
    row["agree"] = max(errors) <= TOLERANCE
    return row


def print_table(results: list[dict]) -> None:
    """One line per case."""
    print(
        f"{'case':>8} {'N':>4} {'(a) dmask img/s':>16} {'(b) numpy img/s':>16} "
        f"{'(a)/(b)':>8} {'roofline s':>10} {'(a) s':>8} {'of roofline':>11} "
        f"{'(c) dense img/s':>18} {'max err':>8} {'ok':>3}"
    )
    for row in results:
        dense = row.get("c_dense_skipped") or f"{row['c_dense_images_per_s']:.1f}"
        error = max(row[k] for k in row if k.endswith("max_error"))
        print(
            f"{row['case']:>8} {row['n_images']:>4} "
            f"{row['a_dmask_images_per_s']:16.1f} {row['b_numpy_images_per_s']:16.1f} "
            f"{row['ratio_a_over_b']:7.0%} {row['a_roofline']['seconds']:10.4f} "
            f"{statistics.median(row['a_dmask_times_s']):8.3f} "
            f"{row['a_roofline']['fraction']:11.1%} {dense:>18} {error:8.1e} "
            f"{'yes' if row['agree'] else 'NO':>3}"
        )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--n-images",
        type=int,
        help="neutral faces to predict, at least 41 (default 300 at 128, 60 at 512)",
    )
    parser.add_argument("--json", help="write results here")
    args = parser.parse_args(argv)
    info = machine()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    limits = machine_limits()
    print(limits.header())
    print(f"dask: threaded scheduler, {THREADS} threads; (b), (c) in this process")
    results = []
    with (
        tempfile.TemporaryDirectory(prefix="bench_predict_") as folder,
        dask.config.set(scheduler="threads", num_workers=THREADS),
    ):
        faces: dict[int, Faces] = {}
        for name in args.cases:
            case = CASES[name]
            size = case["size"]
            if size not in faces:
                faces.clear()
                n_images = args.n_images or case["n_images"]
                faces[size] = make_faces(folder, size, n_images)
            results.append(
                run_case(name, faces[size], case["field"], args.repeats, folder, limits)
            )
    print_table(results)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                {"machine": info, "limits": asdict(limits), "results": results},
                handle,
                indent=2,
            )
    return 0 if all(row["agree"] for row in results) else 1


if __name__ == "__main__":
    sys.exit(main())
