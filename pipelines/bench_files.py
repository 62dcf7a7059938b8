"""Batch synthesis over a folder of a million tiny files: what the client holds.

Makes ``--files`` tiny PNG faces (16 x 16, the smallest a model takes) in
nested folders of ``--per-folder`` files, and a model of the same size trained
with the Python API on a small synthetic dataset; then runs, each phase in a
fresh Python process so that its peak resident memory is its own:

- ``listing-old``: the whole sorted list at once
  (:func:`dmask.io.photographs.image_files`, what ``apply`` used to hold);
- ``listing``: the streamed walk (:func:`dmask.apply.batches.walk_images`);
- ``apply``: ``apply_to_folder`` over the folder (``--output photo``, one
  target), on ``--scheduler`` (a LocalCluster of ``--workers`` processes of
  one thread, or threads in the process); with ``--apply-seconds S`` it is
  interrupted after S seconds (the million-file apply takes long on few cores)
  and its throughput is that of the files done by then;
- ``rerun``: the same command again, after a run that finished: everything
  is skipped (the records of finished batches, one listing of them).

For each: client peak RSS (``ru_maxrss`` of the process), wall time, time to
the first task submitted and to the first batch finished, tasks and the bytes
of one task pickled (function, paths, options). Disk use is printed; the files
are removed at the end unless ``--keep``.

    python pipelines/bench_files.py [--files 1000000] [--files-per-task 64]
        [--scheduler processes] [--apply-seconds S] [--json F]
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB (Linux: ``VmHWM``).

    Not ``ru_maxrss``: Linux carries that over from the parent across exec.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_model(root: str) -> str:
    """A one-target model on 16 x 16 RGB faces, trained on a synthetic dataset."""
    import dmask
    from dmask.datasets.synthetic import make_synthetic_dataset

    faces = os.path.join(root, "faces.zarr")
    make_synthetic_dataset(faces, 12, image_shape=(16, 16), test_fraction=0)
    ds = dmask.open_dataset(faces)
    sources, targets = dmask.select_pairs(ds, "neutral", ["happy"], split=None)
    path = os.path.join(root, "model.zarr")
    dmask.fit(sources, targets, field=3, store=path)
    return path


def make_files(folder: str, count: int, per_folder: int) -> float:
    """``count`` 16 x 16 PNG faces, ``per_folder`` a folder; the seconds it took.

    Faces of 64 subjects are encoded once and their bytes written again and
    again (encoding a million would take longer than the rest).
    """
    from dmask.datasets.drawing import render_face, subject_params

    encoded = []
    for subject in range(64):
        face = render_face(subject_params(7, subject), "neutral", 16, 16)
        buffer = io.BytesIO()
        pixels = np.rint(np.clip(face, 0, 1) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    started = time.perf_counter()
    for i in range(count):
        sub = os.path.join(folder, f"d{i // per_folder:05d}")
        if i % per_folder == 0:
            os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, f"f{i:07d}.png"), "wb") as handle:
            handle.write(encoded[i % len(encoded)])
    return time.perf_counter() - started


def used_bytes(path: str) -> int:
    """Bytes the files under ``path`` take on disk (blocks, not sizes)."""
    total = 0
    for directory, _, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(directory, name)).st_blocks * 512
    return total


def fill_records(args: argparse.Namespace) -> int:
    """Record every batch not recorded yet, as its task would have; the count."""
    from dmask.apply import batches

    done = batches.done_batches(args.out)
    filled = 0
    paths = batches.walk_images(args.photos)
    for part in batches.batched(paths, args.files_per_task):
        name = batches.batch_id(part, "photo:happy")
        if name not in done:
            batches.record_batch(args.out, name, len(part))
            filled += 1
    return filled


# ----------------------------------------------------------------- the phases


def phase_listing_old(args: argparse.Namespace) -> dict:
    from dmask.io import photographs

    before = peak_rss_mib()
    started = time.perf_counter()
    count = len(photographs.image_files(args.photos))
    return {
        "files": count,
        "seconds": time.perf_counter() - started,
        "rss_before_mib": before,
        "peak_rss_mib": peak_rss_mib(),
    }


def phase_listing(args: argparse.Namespace) -> dict:
    from dmask.apply import batches

    before = peak_rss_mib()
    started = time.perf_counter()
    first = None
    count = 0
    for _ in batches.batched(batches.walk_images(args.photos), args.files_per_task):
        if first is None:
            first = time.perf_counter() - started
        count += 1
    return {
        "batches": count,
        "seconds": time.perf_counter() - started,
        "first_batch_seconds": first,
        "rss_before_mib": before,
        "peak_rss_mib": peak_rss_mib(),
    }


def task_bytes(model: str, photos: str, out: str, block: int) -> int:
    """Bytes of one task pickled as it is submitted: function, paths, options."""
    import cloudpickle

    from dmask.apply import batches, folder

    paths = next(batches.batched(batches.walk_images(photos), block))
    item = (batches.batch_id(paths, "photo:happy"), paths)
    options = {
        "folder": photos, "out": out, "names": ["happy"], "arrays": model,
        "field_size": 3, "normalize": True, "crop": "none", "margin": 0.25,
        "convert_channels": False, "resize": "bilinear", "display": "clip",
        "strength": 1.0, "canonical": None, "output": "photo", "resume": True,
    }  # fmt: skip
    return len(cloudpickle.dumps((folder._run_batch, item, options)))


def phase_apply(args: argparse.Namespace) -> dict:
    import dmask
    from dmask.apply import batches
    from dmask.apply.folder import apply_to_folder

    result: dict = {"rss_before_mib": peak_rss_mib()}
    model = dmask.open_model(args.model)
    progress = os.path.join(args.out, batches.PROGRESS)
    before = set(os.listdir(progress)) if os.path.isdir(progress) else set()
    started = time.perf_counter()
    stop = threading.Event()
    first_done: list[float] = []

    def watch() -> None:  # the first new batch record: a first task finished
        while not stop.wait(0.01):
            if os.path.isdir(progress):
                with os.scandir(progress) as scan:
                    if any(e.name not in before for e in scan):
                        first_done.append(time.perf_counter() - started)
                        return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    submitted: list[float] = []

    class FirstTask(logging.Handler):  # the library logs its first submission
        def emit(self, record: logging.LogRecord) -> None:
            if not submitted and record.getMessage().startswith("first task"):
                submitted.append(time.perf_counter() - started)

    logging.getLogger("dmask.apply.folder").addHandler(FirstTask())
    logging.getLogger("dmask.apply.folder").setLevel(logging.INFO)
    client = cluster = None
    if args.scheduler == "processes":
        from distributed import Client, LocalCluster

        cluster = LocalCluster(
            n_workers=args.workers, threads_per_worker=1, processes=True,
            dashboard_address=None, host="127.0.0.1",
        )  # fmt: skip
        client = Client(cluster)
        started = time.perf_counter()  # the cluster's start is not the listing's
    if args.apply_seconds:
        import _thread
        import signal

        # a shell's background job starts with SIGINT ignored: Ctrl-C's handler
        # back, so that the timer's interrupt is a KeyboardInterrupt here
        signal.signal(signal.SIGINT, signal.default_int_handler)
        threading.Timer(args.apply_seconds, _thread.interrupt_main).start()
    try:
        report = apply_to_folder(
            model, args.photos, args.out, targets=["happy"], crop="none",
            resize="bilinear", output="photo", block=args.files_per_task,
        )  # fmt: skip
        result.update(
            files=report.scanned, written=report.written,
            already_done=report.already_done, batches=report.batches,
            batches_recorded_before=report.batches_done, tasks=report.tasks,
            first_task_submitted_seconds=report.first_task,
            problems=report.problem_count, interrupted=False,
        )  # fmt: skip
    except KeyboardInterrupt:
        done = len(set(os.listdir(progress)) - before)
        result.update(
            interrupted=True, batches_finished=done,
            written=done * args.files_per_task,
            first_task_submitted_seconds=submitted[0] if submitted else None,
        )  # fmt: skip
    result["seconds"] = time.perf_counter() - started
    stop.set()
    result["first_batch_finished_seconds"] = first_done[0] if first_done else None
    result["peak_rss_mib"] = peak_rss_mib()
    result["images_per_second"] = result["written"] / result["seconds"]
    if client is not None:
        client.close()
        cluster.close()
    return result


PHASES = {
    "listing-old": phase_listing_old,
    "listing": phase_listing,
    "apply": phase_apply,
    "rerun": phase_apply,
}


def run_phase(name: str, args: argparse.Namespace, extra: list[str]) -> dict:
    """One phase in a fresh process; its figures."""
    argv = [
        sys.executable, os.path.abspath(__file__), "--phase", name,
        "--photos", args.photos, "--out", args.out, "--model", args.model,
        "--files-per-task", str(args.files_per_task), "--scheduler", args.scheduler,
        "--workers", str(args.workers), *extra,
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"phase {name} failed")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{name}: " + ", ".join(f"{k} {_shown(v)}" for k, v in figures.items()))
    return figures


def _shown(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--per-folder", type=int, default=1000)
    parser.add_argument("--files-per-task", type=int, default=64)
    parser.add_argument("--scheduler", choices=["processes", "threads"],
                        default="processes")  # fmt: skip
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--apply-seconds", type=float, default=0.0,
        help="interrupt the first apply after this long (0: never)",
    )  # fmt: skip
    parser.add_argument(
        "--fill-records", action="store_true",
        help="after an interrupted apply, record the batches not done (with the "
        "tasks' own function) instead of resuming it to the end, so that the "
        "re-run's full skip is measured without the hours of a full apply",
    )  # fmt: skip
    parser.add_argument("--root", help="where the files go (default: a temporary one)")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--photos", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(PHASES[args.phase](args)))
        return

    from benchlib import machine

    info = machine()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    root = args.root or tempfile.mkdtemp(prefix="dmask-bench-files-")
    os.makedirs(root, exist_ok=True)
    args.photos = os.path.join(root, "photos")
    args.out = os.path.join(root, "out")
    results: dict = {"files": args.files, "files_per_task": args.files_per_task,
                     "scheduler": args.scheduler, "workers": args.workers}  # fmt: skip
    try:
        args.model = make_model(root)
        seconds = make_files(args.photos, args.files, args.per_folder)
        disk = used_bytes(args.photos)
        results["make"] = {"seconds": seconds, "disk_mib": disk / 2**20}
        print(f"made {args.files} files in {seconds:.1f} s, {disk / 2**20:.0f} MiB "
              f"on disk, in folders of {args.per_folder}", flush=True)  # fmt: skip
        results["task_bytes"] = task_bytes(
            args.model, args.photos, args.out, args.files_per_task
        )
        print(f"one task pickled: {results['task_bytes']} bytes")
        for name in ("listing-old", "listing"):
            results[name] = run_phase(name, args, [])
        extra = ["--apply-seconds", str(args.apply_seconds)]
        results["apply"] = run_phase("apply", args, extra)
        if results["apply"].get("interrupted") and args.fill_records:
            filled = fill_records(args)
            results["filled_records"] = filled
            print(
                f"apply interrupted: {filled} batch records written by the "
                "benchmark for the batches not done (their outputs do not exist)"
            )
        elif results["apply"].get("interrupted"):
            print("apply interrupted: resumed to the end")
            results["resume"] = run_phase("apply", args, [])
        results["out_disk_mib"] = used_bytes(args.out) / 2**20
        results["rerun"] = run_phase("rerun", args, [])
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"machine": info, "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
