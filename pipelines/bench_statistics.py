"""Train once, solve many: an r x lambda sweep from one statistics pass.

A synthetic dataset store (``--size`` square RGB faces, ``--subjects``
training pairs of neutral to happy) is summed once into a statistics store for
the largest field (``dmask.statistics.keep_statistics``), and every setting of
the sweep (``--fields`` x 13 penalties, the default grid of ``lam="gcv"``) is
solved from it (``dmask.statistics.solve``, in memory, nothing read but the
store). Against it: training each setting from the images (``dmask.fit`` on
the stored pairs), measured once per field, since the penalty does not change
what a training does, and counted 13 times. Data read is counted from the
arrays' sizes: each training reads every training pair; the sweep reads them
once, then the statistics store once per setting. All in this process on the
threaded scheduler (one thread per core). Finally the size of one fold of
statistics at 128, 512 and 1024 (formula, float64) against the model's and
the dataset's, and the store on disk here.

    python pipelines/bench_statistics.py [--size 256] [--subjects 500] \
        [--fields 1 3 5 7] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

from benchlib import machine, timed

import dmask
from dmask.core import sufficient
from dmask.core.lambdas import DEFAULT_LAM_GRID
from dmask.core.planning import format_bytes
from dmask.datasets.synthetic import make_synthetic_dataset
from dmask.io import dataset_store
from dmask.statistics import keep_statistics, solve


def disk_bytes(path: str) -> int:
    return sum(
        os.path.getsize(os.path.join(root, f))
        for root, _, files in os.walk(path)
        for f in files
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--subjects", type=int, default=500)
    parser.add_argument("--fields", type=int, nargs="+", default=[1, 3, 5, 7])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    print(json.dumps(machine()), file=sys.stderr)
    grid = sorted(DEFAULT_LAM_GRID)[:13]
    largest = max(args.fields)
    scratch = tempfile.mkdtemp(prefix="dmask-bench-statistics-")
    try:
        started = time.perf_counter()
        path = os.path.join(scratch, "faces.zarr")
        # every subject but a handful in the training split
        fraction = 4 / (args.subjects + 4)
        make_synthetic_dataset(
            path, args.subjects + 4, (args.size, args.size), test_fraction=fraction
        )
        ds = dataset_store.open_dataset(path)
        src, tgt = dataset_store.stored_pairs(ds, "neutral", ["happy"])
        n = src.shape[0]
        made = time.perf_counter() - started
        print(f"dataset: {n} training pairs made in {made:.0f} s", file=sys.stderr)
        pair_bytes = 2 * n * args.size * args.size * 3  # uint8, source and target

        def keep() -> object:
            stats = os.path.join(scratch, "stats.zarr")
            shutil.rmtree(stats, ignore_errors=True)
            return keep_statistics(ds, stats, targets=["happy"], field=largest)

        keep_s, info = timed(keep, 1)
        solves = {}
        for field in args.fields:
            walls = []
            for lam in grid:
                w, _ = timed(lambda f=field, v=lam: solve(info, f, v), 1)
                walls.append(w)
            solves[field] = walls
        trains = {}
        for field in args.fields:
            trains[field], _ = timed(
                lambda f=field: dmask.fit(src, tgt, field=f, lam=0.4), args.repeats
            )
        n_settings = len(args.fields) * len(grid)
        sweep_s = keep_s + sum(sum(w) for w in solves.values())
        separate_s = sum(trains[f] * len(grid) for f in args.fields)
        stats_size = sufficient.statistics_bytes((args.size, args.size), 3, largest, 1)
        sweep = f"{len(args.fields)} fields x {len(grid)} penalties"
        print(f"\n{args.size}x{args.size} RGB, N = {n}, target happy, "
              f"{sweep} = {n_settings} settings")  # fmt: skip
        print(f"statistics pass (r_max = {largest}): {keep_s:.2f} s, "
              f"store {format_bytes(disk_bytes(info.path))} on disk "
              f"({format_bytes(stats_size)} float64)")  # fmt: skip
        print(f"{'r':>3} {'train s':>9} {'solve s (median of 13)':>24} {'ratio':>7}")
        for field in args.fields:
            median = statistics.median(solves[field])
            print(f"{field:>3} {trains[field]:>9.3f} {median:>24.3f} "
                  f"{trains[field] / median:>6.1f}x")  # fmt: skip
        print(f"sweep from one pass: {sweep_s:.1f} s, data read "
              f"{format_bytes(pair_bytes)} of images + "
              f"{format_bytes(n_settings * stats_size)} of statistics")  # fmt: skip
        print(f"{n_settings} separate trainings: {separate_s:.1f} s "
              f"(measured once per field, x{len(grid)}), data read "
              f"{format_bytes(n_settings * pair_bytes)} of images")  # fmt: skip
        print(f"speed-up of the sweep: {separate_s / sweep_s:.1f}x")
        print("\nsize of one fold of statistics (r_max = 7, 6 targets, RGB, float64):")
        print(f"{'side':>6} {'statistics':>11} {'model r=7':>10} {'dataset N=500':>14}")
        sizes = {}
        for side in (128, 512, 1024):
            kept = sufficient.statistics_bytes((side, side), 3, 7, 6)
            model = 8 * 6 * (49 + 1) * side * side * 3
            data = 500 * 7 * side * side * 3
            sizes[side] = (kept, model, data)
            print(f"{side:>6} {format_bytes(kept):>11} {format_bytes(model):>10} "
                  f"{format_bytes(data):>14}")  # fmt: skip
        if args.json:
            with open(args.json, "w") as handle:
                json.dump(
                    {"machine": machine(), "keep_s": keep_s, "solves": solves,
                     "trains": trains, "sweep_s": sweep_s, "separate_s": separate_s,
                     "store_bytes": disk_bytes(info.path), "sizes": sizes},
                    handle, indent=1,
                )  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
