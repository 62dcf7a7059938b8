"""Small jobs on the command line: what a 30-subject synth plus train costs.

Runs ``dmask synth`` (30 subjects, 64 x 64 RGB) then ``dmask train`` (all six
expressions, r = 3) as a user does, each a fresh ``python -m dmask`` process,
output to files. The first pair of runs is a warm-up (numba's cache, the OS's
file cache) and is reported apart; then ``--repeats`` pairs in each mode:

* ``auto`` (the default): a job under ``cluster.small-job`` bytes of input
  runs its local workers as threads in this process;
* ``--processes``: a LocalCluster of worker processes, as before.

Printed per command: the median wall time of the whole process, the time
``python -c "import dmask.cli"`` and the imports a command loads take, and
the ratio auto / processes.

    python pipelines/bench_small_jobs.py [--subjects 30] [--size 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import machine

IMPORTS = (
    "import dmask.datasets.synthetic, dmask.model, distributed, dmask.core._engine"
)


def _run(argv: list[str], where: str) -> float:
    started = time.perf_counter()
    with open(os.path.join(where, "log.txt"), "a") as log:
        subprocess.run(
            [sys.executable, "-m", "dmask", *argv],
            stdout=log,
            stderr=log,
            check=True,
            cwd=where,
        )
    return time.perf_counter() - started


def _pair(where: str, subjects: int, size: int, mode: list[str]) -> tuple[float, float]:
    synth = _run(["synth", "--out", "faces.zarr", "--subjects", str(subjects),
                  "--size", str(size), "--overwrite", *mode], where)  # fmt: skip
    train = _run(["train", "faces.zarr", "--out", "model.zarr", "--field", "3",
                  "--overwrite", *mode], where)  # fmt: skip
    return synth, train


def _imports(repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", IMPORTS], check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=30)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(machine()))
    where = tempfile.mkdtemp(prefix="dmask-small-")
    try:
        first = _pair(where, args.subjects, args.size, [])
        print(f"first run (warm-up): synth {first[0]:.2f} s, train {first[1]:.2f} s")
        results = {}
        for label, mode in (("auto", []), ("processes", ["--processes"])):
            runs = [
                _pair(where, args.subjects, args.size, mode)
                for _ in range(args.repeats)
            ]
            synth = statistics.median(r[0] for r in runs)
            train = statistics.median(r[1] for r in runs)
            total = statistics.median(r[0] + r[1] for r in runs)
            results[label] = total
            print(
                f"{label:>9}: synth {synth:.2f} s, train {train:.2f} s, "
                f"synth + train {total:.2f} s (median of {args.repeats})"
            )
        print(f"auto / processes: {results['auto'] / results['processes']:.2f}")
        imports = _imports(args.repeats)
        print(
            f"python start-up and the imports of a command ({IMPORTS}): "
            f"{imports:.2f} s per process, {2 * imports:.2f} s of the pair"
        )
    finally:
        shutil.rmtree(where, ignore_errors=True)


if __name__ == "__main__":
    main()
