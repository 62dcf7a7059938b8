"""Throughput of ingest and batch synthesis over folders, and peak worker memory.

For each image size, a KDEF-named folder of synthetic face photographs (JPEG,
a little larger than the size, three expressions per subject) is ingested with a
centre crop, a model is trained on it, and the folder is synthesised back (every
file, every target) with batch synthesis; then a folder of real photographs
(the shipped portraits, flipped and cropped into variants) is synthesised with
face detection. Each size runs on a fresh LocalCluster of worker processes, so
the peak resident memory of its workers belongs to that size alone. Figures are
medians of ``--repeats`` runs of each step.

    python pipelines/bench_batch.py [--sizes 128 512] [--subjects 40] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np
from benchlib import machine, timed
from PIL import Image

import dmask
from dmask.apply.folder import apply_to_folder
from dmask.cluster.clients import ClusterOptions, connect, peak_worker_memory
from dmask.datasets import samples
from dmask.datasets.drawing import render_face, subject_params
from dmask.datasets.ingest import ingest
from dmask.io import dataset_store

CODES = {"neutral": "NE", "happy": "HA", "sad": "SA"}


def kdef_folder(root: str, subjects: int, height: int, width: int) -> int:
    """Write a KDEF-named folder of synthetic faces; return the file count."""
    count = 0
    for subject in range(1, subjects + 1):
        folder = os.path.join(root, f"AM{subject:02d}")
        os.makedirs(folder, exist_ok=True)
        for expression, code in CODES.items():
            face = render_face(subject_params(11, subject), expression, height, width)
            pixels = np.rint(np.clip(face, 0, 1) * 255).astype(np.uint8)
            name = f"AM{subject:02d}{code}S.JPG"
            Image.fromarray(pixels).save(os.path.join(folder, name), quality=92)
            count += 1
    return count


def photo_folder(root: str, count: int) -> int:
    """Write ``count`` variants of the shipped portraits (flips and crops)."""
    os.makedirs(root, exist_ok=True)
    photos = [
        p
        for name, p in samples.sample_photographs().items()
        if name in ("astronaut", "grace_hopper")
    ]
    rng = np.random.default_rng(0)
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        dy, dx = rng.integers(0, h // 10), rng.integers(0, w // 10)
        variant = photo[dy : h - h // 10 + dy, dx : w - w // 10 + dx]
        if i % 2:
            variant = variant[:, ::-1]
        Image.fromarray(np.ascontiguousarray(variant)).save(
            os.path.join(root, f"photo_{i:04d}.jpg"), quality=92
        )
    return count


def run_size(size: int, subjects: int, photos: int, repeats: int, work: str) -> dict:
    """Ingest, train and synthesise at one size on a fresh cluster."""
    raw = os.path.join(work, f"kdef{size}")
    real = os.path.join(work, f"photos{size}")
    files = kdef_folder(raw, subjects, size * 5 // 4, size * 9 // 8)
    photo_folder(real, photos)
    store = os.path.join(work, f"faces{size}.zarr")
    model_path = os.path.join(work, f"model{size}.zarr")
    options = ClusterOptions(n_workers=2, threads_per_worker=1, memory_limit="4GB")
    with connect(options) as client:
        ingest_s, report = timed(
            lambda: ingest(
                raw, store, size=(size, size), crop="center", overwrite=True
            ),
            repeats,
        )
        ds = dataset_store.open_dataset(store)
        sources, targets = dataset_store.stored_pairs(
            ds, "neutral", ["happy", "sad"], None
        )
        dmask.fit(sources, targets, field=3, store=model_path, overwrite=True)
        model = dmask.open_model(model_path)
        out = os.path.join(work, f"out{size}")
        apply_s, batch = timed(
            lambda: apply_to_folder(model, raw, out, crop="center", resume=False),
            repeats,
        )
        detect_out = os.path.join(work, f"detect{size}")
        detect_s, detected = timed(
            lambda: apply_to_folder(
                model, real, detect_out, crop="detect", resume=False
            ),
            repeats,
        )
        resume_s, _ = timed(
            lambda: apply_to_folder(model, raw, out, crop="center"), repeats
        )
        peak = peak_worker_memory(client)
    return {
        "size": size,
        "files": files,
        "ingest_s": ingest_s,
        "ingest_images_per_s": report.taken / ingest_s,
        "batch_s": apply_s,
        "batch_images_per_s": batch.written / apply_s,
        "batch_outputs_per_s": batch.written * len(batch.targets) / apply_s,
        "detect_files": photos,
        "detect_written": detected.written,
        "detect_images_per_s": detected.written / detect_s,
        "resume_check_s": resume_s,
        "peak_worker_mib": peak / 2**20,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--subjects", type=int, default=40)
    parser.add_argument("--photos", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write results here")
    args = parser.parse_args(argv)
    info = machine()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    print("cluster: 2 worker processes x 1 thread, memory limit 4GB each")
    print(
        f"{'size':>6} {'files':>6} {'ingest img/s':>13} {'batch img/s':>12} "
        f"{'detect img/s':>13} {'resume s':>9} {'peak MiB':>9}"
    )
    results = []
    work = tempfile.mkdtemp(prefix="dmask-bench-batch-")
    try:
        for size in args.sizes:
            r = run_size(size, args.subjects, args.photos, args.repeats, work)
            results.append(r)
            print(
                f"{size:>6} {r['files']:>6} {r['ingest_images_per_s']:>13.1f} "
                f"{r['batch_images_per_s']:>12.1f} {r['detect_images_per_s']:>13.1f} "
                f"{r['resume_check_s']:>9.2f} {r['peak_worker_mib']:>9.0f}",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        "ingest: decode, centre crop, resize, write (img/s of images stored); batch: "
        "decode, crop, synthesise 2 targets, write PNGs (input img/s); detect: batch "
        "on real photographs with face detection; resume: a re-run with all done"
    )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"machine": info, "results": results}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
