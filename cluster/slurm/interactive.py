"""Train a dmask model on Dask workers that run as Slurm jobs (dask-jobqueue).

Run it where ``sbatch`` works (a login node), with the Python that has dmask and
dask-jobqueue installed::

    python cluster/slurm/interactive.py DATASET MODEL [--jobs N] [--config FILE]
        [--set jobqueue.slurm.KEY=VALUE ...] [-- dmask train options...]

It loads ``jobqueue.yaml`` (next to this file unless ``--config`` names another)
into dask's configuration, starts a ``dask_jobqueue.SLURMCluster`` (the scheduler
runs here, the workers in Slurm jobs), scales it to ``--jobs`` jobs, waits for
their workers, runs ``dmask train DATASET --out MODEL --scheduler ADDRESS`` and
cancels the jobs at the end. ``--dry-run`` prints the job script instead. The exit
status is dmask's (3: the workers did not start in ``--wait`` seconds).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CONFIG = Path(__file__).with_name("jobqueue.yaml")
EXIT_NO_WORKERS = 3


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> None:
    """Merge a dask-jobqueue YAML file, then ``KEY=VALUE`` overrides, into dask's
    configuration (values are parsed as YAML: ``4``, ``null``, ``[a, b]``)."""
    import dask.config
    import yaml

    with open(path) as f:
        loaded = yaml.safe_load(f) or {}
    dask.config.update(dask.config.config, loaded, priority="new")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set takes KEY=VALUE, got {item!r}")
        dask.config.set({key.strip(): yaml.safe_load(value)})


def _parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    argv = list(argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(
        description="Train a dmask model on a dask-jobqueue SLURMCluster.",
        epilog="Options after -- go to `dmask train`.",
    )
    parser.add_argument("dataset", help="dataset store (seen by every node)")
    parser.add_argument("model", help="output model store (seen by every node)")
    parser.add_argument("--jobs", type=int, default=1, help="Slurm jobs (default 1)")
    parser.add_argument("--config", default=str(CONFIG), help="jobqueue YAML file")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. jobqueue.slurm.queue=compute",
    )
    parser.add_argument(
        "--wait", type=float, default=300, help="seconds to wait for the workers"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the job script and stop"
    )
    return parser.parse_args(argv), extra


def main(argv: Sequence[str] | None = None) -> int:
    args, extra = _parse(sys.argv[1:] if argv is None else argv)
    load_config(args.config, args.set)

    from dask_jobqueue import SLURMCluster

    cluster = SLURMCluster()
    try:
        if args.dry_run:
            print(cluster.job_script())
            return 0
        return _train(cluster, args, extra)
    finally:
        # Closing cancels the in-process scheduler's periodic feeds, which
        # distributed logs as errors although nothing failed.
        logging.getLogger("distributed.scheduler").setLevel(logging.CRITICAL)
        cluster.close()


def _train(cluster: Any, args: argparse.Namespace, extra: list[str]) -> int:
    import dask.config
    from distributed import Client

    from dmask.cli import main as dmask_main

    processes = int(dask.config.get("jobqueue.slurm.processes") or 1)
    workers = args.jobs * processes
    print(f"scheduler {cluster.scheduler_address}, dashboard {cluster.dashboard_link}")
    cluster.scale(jobs=args.jobs)
    with Client(cluster) as client:
        try:
            client.wait_for_workers(workers, timeout=args.wait)
        except TimeoutError:
            logs = dask.config.get("jobqueue.slurm.log-directory")
            print(
                f"interactive.py: {workers} workers not up after {args.wait:.0f} s; "
                f"see squeue and the job logs in {logs}",
                file=sys.stderr,
            )
            return EXIT_NO_WORKERS
        print(f"{workers} workers in {args.jobs} Slurm job(s)", flush=True)
        train = ["train", args.dataset, "--out", args.model]
        return dmask_main([*train, "--scheduler", cluster.scheduler_address, *extra])


if __name__ == "__main__":
    sys.exit(main())
