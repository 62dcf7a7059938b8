"""Peak memory per worker as image size and N grow: it should stay flat.

Each case synthesises a dataset store (neutral plus the targets, RGB), starts a
fresh LocalCluster of worker processes (so each worker's peak resident memory,
``ru_maxrss``, belongs to that case alone), trains from the store to a model
store, and reports wall time and the largest worker peak. ``--large`` adds the
issue's stress case: 1024 x 1024 RGB, N = 1000, r = 7, 6 targets (about 10 GB
of pixels read; 10-20 minutes on 2 cores).

    python pipelines/bench_memory.py [--workers 2] [--memory-limit 4GB] [--large]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import dmask
from dmask.cluster.clients import ClusterOptions, connect, peak_worker_memory
from dmask.datasets.drawing import EXPRESSIONS
from dmask.datasets.synthetic import make_synthetic_dataset
from dmask.io import dataset_store


@dataclass(frozen=True)
class Case:
    """One training job from a store."""

    size: int
    n: int
    field: int = 7
    targets: int = 1

    @property
    def label(self) -> str:
        """Short description."""
        return f"{self.size}x{self.size}x3 N={self.n} r={self.field} T={self.targets}"


CASES = [
    Case(128, 200),
    Case(256, 200),
    Case(512, 200),
    Case(1024, 200),
    Case(256, 1000),
    Case(256, 2000),
]
LARGE = Case(1024, 1000, 7, 6)


def run_case(case: Case, folder: str, options: ClusterOptions) -> dict:
    """Synthesise, then train on a fresh cluster; return the figures."""
    faces = os.path.join(folder, f"faces-{case.size}-{case.n}.zarr")
    model = os.path.join(folder, "model.zarr")
    names = list(EXPRESSIONS[1 : 1 + case.targets])
    with connect(options) as client:
        if not os.path.exists(faces):
            started = time.perf_counter()
            make_synthetic_dataset(
                faces, case.n, (case.size, case.size), test_fraction=0
            )
            synth_s = time.perf_counter() - started
        else:
            synth_s = 0.0
    with connect(options) as client:
        ds = dataset_store.open_dataset(faces)
        sources, targets = dataset_store.stored_pairs(ds, "neutral", names, "train")
        started = time.perf_counter()
        trained = dmask.fit(
            sources, targets, field=case.field, store=model, overwrite=True
        )
        wall = time.perf_counter() - started
        peak = peak_worker_memory(client)
    shutil.rmtree(model, ignore_errors=True)
    return {
        **asdict(case),
        "label": case.label,
        "synth_s": synth_s,
        "train_s": wall,
        "peak_worker_mib": peak / 2**20,
        "tile_shape": trained.tile_shape,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="4GB")
    parser.add_argument("--large", action="store_true", help="add 1024^2 N=1000 T=6")
    parser.add_argument("--only-large", action="store_true")
    parser.add_argument("--folder", help="where to keep the stores (default: temp)")
    parser.add_argument("--json", help="write results here")
    args = parser.parse_args(argv)
    options = ClusterOptions(
        n_workers=args.workers,
        threads_per_worker=1,
        memory_limit=args.memory_limit,
        dashboard_address=":0",
    )
    cases = [] if args.only_large else list(CASES)
    if args.large or args.only_large:
        cases.append(LARGE)
    folder = args.folder or tempfile.mkdtemp(prefix="dmask-bench-")
    print(
        f"machine: {os.cpu_count()} cores; {args.workers} worker processes x 1 thread,"
        f" memory limit {args.memory_limit} each; stores in {folder}"
    )
    print(f"{'case':>32} {'synth s':>8} {'train s':>8} {'peak worker MiB':>16}")
    results = []
    try:
        for case in cases:
            result = run_case(case, folder, options)
            results.append(result)
            print(
                f"{case.label:>32} {result['synth_s']:8.1f} {result['train_s']:8.1f}"
                f" {result['peak_worker_mib']:16.0f}",
                flush=True,
            )
    finally:
        if not args.folder:
            shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
