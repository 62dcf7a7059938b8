"""Sparse models from the field's own files: import time, apply throughput, memory.

Builds an OMP-like model in the reference's file format (one scipy.sparse CSR
``d x (d + 1)`` per channel, BGR order, ``--nonzeros`` weights per output pixel
anywhere in the image), then measures on a LocalCluster of two one-thread worker
processes with a ``--memory-limit`` each:

- ``import``: the files to a model store (median of ``--repeats``);
- ``apply``: the model over a dataset store of ``--images`` faces into a new
  store (images per second, median of ``--repeats``), against a 3 x 3 MR field
  model on the same images in the same process (the ratio);
- ``folder``: the model over a folder of PNG faces (images per second);
- the peak resident memory of the workers (sampled every 5 ms, per step on a
  fresh cluster; ``idle`` is a worker's before any task);
- what importing the same weights as an ``r x r`` field would need (the
  window they span), which is refused up front on this machine.

    python pipelines/bench_sparse.py [--side 128] [--nonzeros 5] [--images 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import scipy.sparse as sp
from benchlib import machine, rss_start, rss_stop, timed
from PIL import Image

import dmask
from dmask.apply.folder import apply_to_folder
from dmask.apply.store import apply_to_store
from dmask.cluster.clients import ClusterOptions, connect
from dmask.errors import InputError
from dmask.interop import import_reference
from dmask.io import dataset_store, stores


def omp_like(rng: np.random.Generator, side: int, nonzeros: int) -> sp.csr_matrix:
    """``nonzeros`` weights per output pixel at distinct random pixels, and a bias."""
    d = side * side
    cols = (
        np.argsort(rng.random((d, d)), axis=1)[:, :nonzeros]
        if d <= 4096
        else (rng.integers(0, d, size=(d, nonzeros)))
    )
    cols = np.hstack([cols, np.full((d, 1), d)])
    values = rng.normal(size=cols.shape) / nonzeros
    rows = np.repeat(np.arange(d), nonzeros + 1)
    return sp.csr_matrix((values.ravel(), (rows, cols.ravel())), shape=(d, d + 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=128)
    parser.add_argument("--nonzeros", type=int, default=5)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--folder-images", type=int, default=500)
    parser.add_argument("--memory-limit", default="500MB")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    side, n = args.side, args.images
    work = tempfile.mkdtemp(prefix="dmask-bench-sparse-")
    rng = np.random.default_rng(0)
    try:
        files = []
        for c in (1, 2, 3):
            path = os.path.join(work, f"omp_weights_{c}.npz")
            sp.save_npz(path, omp_like(rng, side, args.nonzeros))
            files.append(path)
        store = os.path.join(work, "omp.zarr")

        def do_import() -> dmask.Model:
            model = import_reference(files, channel_order="bgr")
            model.save(store, overwrite=True)
            return model

        import_s, imported = timed(do_import, args.repeats)
        try:
            import_reference(files, channel_order="bgr", kind="field")
            as_field = "fits"
        except InputError as error:
            as_field = str(error)

        faces = rng.integers(0, 256, size=(n, side, side, 3), dtype=np.uint8)
        images_path = os.path.join(work, "faces.zarr")
        coords = {
            "subject": np.array([f"s{i}" for i in range(n)]),
            "expression": np.full(n, "neutral"),
            "split": np.full(n, "test"),
        }
        written = dataset_store.create_dataset_template(
            images_path, faces.shape, (256, side, side, 3), coords, {"origin": "bench"}
        )
        dataset_store.write_dataset_block(written, 0, faces)
        stores.finalize_store(written)
        ds = dataset_store.open_dataset(images_path)
        mr_path = os.path.join(work, "mr.zarr")
        x = faces[:64].astype(np.float64)
        dmask.fit(x, x[:, ::-1], field=3, store=mr_path)
        photos = os.path.join(work, "photos")
        os.makedirs(photos)
        for i in range(args.folder_images):
            Image.fromarray(faces[i]).save(os.path.join(photos, f"f{i:05d}.png"))

        options = ClusterOptions(
            n_workers=2, threads_per_worker=1, memory_limit=args.memory_limit
        )
        sparse_model = dmask.open_model(store)
        mr_model = dmask.open_model(mr_path)

        idle_rss: list[int] = []

        def on_cluster(step):
            """Median time of ``step`` on a fresh cluster, its result, peak RSS."""
            with connect(options) as client:
                idle = max(client.run(rss_start).values())
                seconds, result = timed(step, args.repeats)
                peak = max(client.run(rss_stop).values())
                idle_rss.append(idle)
                return seconds, result, peak

        def apply(model: dmask.Model, name: str):
            out = os.path.join(work, name)
            return lambda: apply_to_store(model, ds, out, source=None, overwrite=True)

        apply_s, _, apply_peak = on_cluster(apply(sparse_model, "out_omp.zarr"))
        mr_s, _, mr_peak = on_cluster(apply(mr_model, "out_mr.zarr"))
        folder_s, report, folder_peak = on_cluster(
            lambda: apply_to_folder(
                sparse_model,
                photos,
                os.path.join(work, "out_photos"),
                crop="none",
                resume=False,
            )
        )
        figures = {
            "machine": machine(),
            "side": side,
            "nonzeros": args.nonzeros,
            "model": repr(imported),
            "window_spanned": imported.field,
            "import_s": import_s,
            "import_as_field": as_field,
            "images": n,
            "apply_images_per_s": n / apply_s,
            "mr_r3_apply_images_per_s": n / mr_s,
            "sparse_over_mr_r3": mr_s / apply_s,
            "folder_images": report.written,
            "folder_images_per_s": report.written / folder_s,
            "workers": f"2 x 1 thread, memory limit {args.memory_limit}",
            "peak_worker_mib": {
                "idle": max(idle_rss) / 2**20,
                "apply": apply_peak / 2**20,
                "mr_r3_apply": mr_peak / 2**20,
                "folder": folder_peak / 2**20,
            },
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as handle:
            handle.write(text + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
