"""Throughput of ingest and batch synthesis over folders, and peak worker memory.

For each image size, a KDEF-named folder of synthetic face photographs (JPEG,
a little larger than the size, three expressions per subject) is ingested with a
centre crop, a model is trained on it, and the folder is synthesised back (every
file, every target) with batch synthesis; then a folder of real photographs
(the shipped portraits, flipped and cropped into variants) is synthesised with
face detection. Each size runs on a fresh LocalCluster of worker processes, so
the peak resident memory of its workers belongs to that size alone. Figures are
medians of ``--repeats`` runs of each step.

``--throughput [N]`` runs instead the throughput case of batch synthesis: a
folder of N aligned 128 x 128 RGB faces (default 2000; synthetic faces of 210
subject-expression pairs, each file with its own sensor noise, half of them
mirrored), once as JPEG (quality 92) and once as PNG, synthesised by a model of
one target (r = 3, trained on a small synthetic store) with ``apply_to_folder``
(``crop="auto"``: each face taken whole; ``--outputs``, by default
``synthesised``: one PNG per input; ``--blocks`` files per task, by default
``apply_to_folder``'s) on a LocalCluster of 2 worker processes x 1 thread.
Several outputs or blocks are compared in the same cluster, their runs taken
in turn. Each timed run writes to a fresh output folder (``resume=False``)
after one untimed run over the first files (the workers load the model and
compile their kernels once). Printed: images/s (median of ``--repeats``), and
where the cores' time went in the median run, in CPU seconds per 1000 images
and as shares of 2 cores x the wall time: the stages the tasks time
themselves (:data:`dmask.apply.folder.STAGES`, the run's
:attr:`BatchReport.stages`: their threads' CPU time), the rest of the workers'
CPU time ("worker other": task transfer, progress records, resume checks),
the client's with the scheduler and the nannies ("client"), and "idle" (the
cores waiting, or taken by other programs on the machine).

    python pipelines/bench_batch.py [--sizes 128 512] [--subjects 40] [--json F]
    python pipelines/bench_batch.py --throughput [2000] [--formats jpeg png]
        [--outputs synthesised ...] [--blocks N ...] [--repeats 3] [--json F]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile

import numpy as np
import psutil
from benchlib import machine, timed
from PIL import Image

import dmask
from dmask.apply import folder as batch_folder
from dmask.apply.folder import apply_to_folder
from dmask.cluster.clients import ClusterOptions, connect, peak_worker_memory
from dmask.datasets import samples
from dmask.datasets.drawing import EXPRESSIONS, render_face, subject_params
from dmask.datasets.ingest import ingest
from dmask.datasets.synthetic import make_synthetic_dataset
from dmask.io import dataset_store

#: The stages the tasks time (none before the timers came: images/s only).
STAGES = getattr(batch_folder, "STAGES", ())
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


#: Distinct synthetic faces of the throughput folder: subjects x expressions.
FACE_SUBJECTS = 30
SUFFIXES = {"jpeg": ".jpg", "png": ".png"}


def aligned_folder(root: str, count: int, fmt: str, size: int = 128) -> int:
    """Write ``count`` aligned ``size`` x ``size`` RGB faces as ``fmt`` files.

    Each file is one of ``FACE_SUBJECTS`` x 7 rendered faces with its own
    Gaussian noise (sigma 2 of 255, as a camera's), every other cycle mirrored,
    so no two files are the same; JPEG at quality 92, PNG at Pillow's default.
    """
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(0)
    faces = [
        render_face(subject_params(5, subject), expression, size, size)
        for subject in range(FACE_SUBJECTS)
        for expression in EXPRESSIONS
    ]
    for i in range(count):
        face = faces[i % len(faces)]
        noisy = face + rng.normal(0.0, 2.0 / 255.0, face.shape).astype(np.float32)
        pixels = np.rint(np.clip(noisy, 0, 1) * 255).astype(np.uint8)
        if (i // len(faces)) % 2:
            pixels = pixels[:, ::-1]
        name = os.path.join(root, f"face_{i:06d}{SUFFIXES[fmt]}")
        Image.fromarray(np.ascontiguousarray(pixels)).save(name, quality=92)
    return count


def one_target_model(work: str, size: int = 128) -> dmask.Model:
    """A model of one target (happy), r = 3, trained on a small synthetic store."""
    store = os.path.join(work, "train.zarr")
    ds = make_synthetic_dataset(store, 16, (size, size), overwrite=True)
    sources, targets = dataset_store.stored_pairs(ds, "neutral", ["happy"], None)
    path = os.path.join(work, "model.zarr")
    dmask.fit(sources, targets, field=3, store=path, overwrite=True)
    return dmask.open_model(path)


def _cpu(processes: list[psutil.Process]) -> float:
    """User and system CPU seconds of processes (those gone count nothing)."""
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def run_throughput(
    count: int,
    formats: list[str],
    cases: list[tuple[str, int | None]],
    repeats: int,
    work: str,
) -> list[dict]:
    """The throughput case (see the module's docstring): one result per format
    and case ``(output, block)``, the cases' runs taken in turn."""
    folders = {
        fmt: (
            os.path.join(work, fmt),
            aligned_folder(os.path.join(work, fmt), count, fmt),
        )
        for fmt in formats
    }
    model = one_target_model(work)
    # aligned crops taken whole: the model's landmark positions are not needed
    logging.getLogger("dmask.apply.folder").setLevel(logging.ERROR)
    results = []
    options = ClusterOptions(n_workers=2, threads_per_worker=1, memory_limit="4GB")
    with connect(options) as client:
        cores = sum(client.nthreads().values())
        me = psutil.Process()
        workers = [psutil.Process(p) for p in client.run(os.getpid).values()]
        others = [me] + [  # the client with the scheduler, and the nannies
            p
            for p in me.children(recursive=True)
            if p.pid not in {w.pid for w in workers}
        ]
        for fmt, (folder, files) in folders.items():
            first = sorted(os.listdir(folder))[: 4 * 64 * cores]
            manifest = os.path.join(work, f"warm-{fmt}.txt")
            with open(manifest, "w") as handle:
                handle.write("\n".join(first) + "\n")
            for output, block in cases:
                apply_to_folder(
                    model, folder, os.path.join(work, "warm"), output=output,
                    resume=False, manifest=manifest, **_block(block),
                )  # fmt: skip
            runs: dict[tuple[str, int | None], list] = {case: [] for case in cases}
            for k in range(repeats):
                for output, block in cases:
                    out = os.path.join(work, f"out-{fmt}-{k}")
                    cpu = _cpu(workers), _cpu(others)
                    report = apply_to_folder(
                        model, folder, out, output=output, resume=False,
                        **_block(block),
                    )  # fmt: skip
                    cpu = _cpu(workers) - cpu[0], _cpu(others) - cpu[1]
                    assert report.written == files, report.summary()
                    runs[output, block].append((report, cpu))
                    shutil.rmtree(out, ignore_errors=True)
            for (output, block), done in runs.items():
                walls = [r.seconds for r, _ in done]
                report, (worker_cpu, other_cpu) = sorted(
                    done, key=lambda r: r[0].seconds
                )[len(done) // 2]
                available = cores * report.seconds
                split = dict(getattr(report, "stages", {}))
                split["worker other"] = worker_cpu - sum(split.values())
                split["client"] = other_cpu
                split["idle"] = available - worker_cpu - other_cpu
                results.append(
                    {
                        "format": fmt,
                        "files": files,
                        "output": output,
                        "block": block,
                        "cores": cores,
                        "input_kib": _mean_kib(folder),
                        "wall_s": walls,
                        "images_per_s": files / statistics.median(walls),
                        "s_per_1000": {k: v * 1000 / files for k, v in split.items()},
                        "fraction": {k: v / available for k, v in split.items()},
                    }
                )
    return results


def _block(block: int | None) -> dict[str, int]:
    """``apply_to_folder``'s block argument: its default where None."""
    return {} if block is None else {"block": block}


def _mean_kib(folder: str) -> float:
    names = os.listdir(folder)
    total = sum(os.path.getsize(os.path.join(folder, n)) for n in names)
    return total / len(names) / 1024


def _case(r: dict) -> str:
    block = "default" if r["block"] is None else r["block"]
    return f"{r['format']} {r['output']} block {block}"


def print_throughput(results: list[dict]) -> None:
    """Images/s, and where the cores' time went, per format and case."""
    for r in results:
        print(
            f"{_case(r)}: {r['files']} files of {r['input_kib']:.1f} KiB, "
            f"{r['images_per_s']:.1f} img/s, 1 M images in "
            f"{1e6 / r['images_per_s'] / 3600:.2f} h (runs: "
            + ", ".join(f"{w:.2f}" for w in r["wall_s"])
            + " s)"
        )
    width = max(len(_case(r)) for r in results) + 1
    print(f"{'CPU s per 1000 images':<22}" + "".join(
        f"{_case(r):>{width}} {'share':>6}" for r in results
    ))  # fmt: skip
    for key in results[0]["s_per_1000"]:
        print(
            f"{key:<22}"
            + "".join(
                f"{r['s_per_1000'][key]:>{width}.3f} {r['fraction'][key]:>6.1%}"
                for r in results
            )
        )
    total = [r["cores"] * 1000 / r["images_per_s"] for r in results]
    print(
        f"{'all (cores x wall)':<22}"
        + "".join(f"{t:>{width}.3f} {1:>6.0%}" for t in total)
    )
    print(
        "stages: the tasks' CPU time in each (their threads' user + system), summed "
        "over the workers; worker other: the rest of the workers' CPU (resume "
        "checks, progress records, task transfer); client: the client process "
        "with the scheduler, and the nannies; idle: cores x wall minus all of it "
        "(cores waiting, or taken by other programs). The median run's."
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--subjects", type=int, default=40)
    parser.add_argument("--photos", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write results here")
    parser.add_argument(
        "--throughput",
        type=int,
        nargs="?",
        const=2000,
        metavar="N",
        help="run the throughput case on N aligned 128 x 128 faces (default 2000)",
    )
    parser.add_argument("--formats", nargs="+", default=["jpeg", "png"],
                        choices=sorted(SUFFIXES))  # fmt: skip
    parser.add_argument(
        "--outputs",
        nargs="+",
        default=["synthesised"],
        choices=batch_folder.OUTPUT_KINDS,
        help="throughput: output kinds to compare (runs taken in turn)",
    )
    parser.add_argument(
        "--blocks",
        type=int,
        nargs="+",
        default=[None],
        help="throughput: files per task to compare (default: apply's)",
    )
    args = parser.parse_args(argv)
    info = machine()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    if args.throughput:
        cases = [(o, b) for o in args.outputs for b in args.blocks]
        print(
            f"throughput: {args.throughput} aligned 128 x 128 RGB faces, 1 target "
            "(r = 3), crop auto, 2 worker processes x 1 thread; cases (output, "
            f"files per task) {cases}, their runs in turn, medians of "
            f"{args.repeats} runs",
            flush=True,
        )
        work = tempfile.mkdtemp(prefix="dmask-bench-throughput-")
        try:
            results = run_throughput(
                args.throughput, args.formats, cases, args.repeats, work
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print_throughput(results)
        if args.json:
            with open(args.json, "w") as handle:
                json.dump({"machine": info, "throughput": results}, handle, indent=2)
        return 0
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
