"""dmask cluster ssh: start a Dask cluster for the other commands."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from dmask.cli.common import _memory_limit, _positive_int, add_command, renamed


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cluster = add_command(
        sub,
        "cluster",
        "start a Dask cluster for the other commands to use",
        [
            "dmask cluster ssh node1 node2 --scheduler-file s.json",
            "dmask cluster ssh --help",
        ],
    )
    kinds = cluster.add_subparsers(dest="kind", required=True, metavar="KIND")
    ssh = add_command(
        kinds,
        "ssh",
        "over SSH: the scheduler on the first host, workers on the rest",
        [
            "dmask cluster ssh node1 node2 node3 --workers-per-host 2 "
            "--threads-per-worker 4 --memory-limit 16GB --scheduler-file s.json",
            "dmask train faces.zarr --out model.zarr --scheduler-file s.json   "
            "# in another shell",
        ],
        description="Start a Dask cluster over SSH (distributed's SSHCluster): the "
        "scheduler on the first host, workers on the others (one host: both). "
        "It runs until Ctrl-C.",
    )
    ssh.add_argument(
        "hosts", nargs="+", metavar="HOST", help="the scheduler's host, then workers'"
    )
    ssh.add_argument(
        "--workers-per-host",
        type=_positive_int,
        default=1,
        metavar="N",
        help="worker processes on each host",
    )
    ssh.add_argument(
        "--threads-per-worker",
        type=_positive_int,
        default=1,
        metavar="N",
        help="threads per worker",
    )
    renamed(
        ssh, "--threads", "--threads-per-worker", "threads_per_worker",
        type=_positive_int,
    )  # fmt: skip
    ssh.add_argument(
        "--memory-limit",
        type=_memory_limit,
        default="auto",
        metavar="SIZE",
        help="memory limit per worker, e.g. 4GB",
    )
    ssh.add_argument(
        "--scheduler-port", type=int, default=8786, metavar="PORT",
        help="the scheduler's port",
    )  # fmt: skip
    renamed(ssh, "--port", "--scheduler-port", "scheduler_port", type=int)
    ssh.add_argument(
        "--dashboard-address",
        default="127.0.0.1:8787",
        metavar="ADDRESS",
        help="the dashboard's address on the scheduler's host",
    )
    ssh.add_argument(
        "--remote-python",
        metavar="PATH",
        help="Python with dmask on the hosts (default: this one's path)",
    )
    ssh.add_argument(
        "--ssh-port", type=int, metavar="PORT", help="SSH port (default: 22)"
    )
    ssh.add_argument(
        "--ssh-user", metavar="USER", help="SSH user name (default: yours)"
    )
    ssh.add_argument(
        "--ssh-key",
        action="append",
        metavar="FILE",
        help="private key file (repeatable; default: SSH's own)",
    )
    ssh.add_argument(
        "--known-hosts",
        metavar="FILE",
        help="known_hosts file ('none': no host key checks; default: SSH's own)",
    )
    ssh.add_argument(
        "--scheduler-file",
        metavar="FILE",
        help="write the scheduler's address here (removed when the cluster stops)",
    )


def run(args: argparse.Namespace) -> None:
    import json
    import os
    import signal
    import threading

    from dmask.cluster.ssh import ssh_cluster

    if args.verbose < 2:  # distributed's own log with -vv
        logging.getLogger("distributed").setLevel(logging.ERROR)
    options: dict[str, Any] = {}
    if args.ssh_port:
        options["port"] = args.ssh_port
    if args.ssh_user:
        options["username"] = args.ssh_user
    if args.ssh_key:
        options["client_keys"] = args.ssh_key
    if args.known_hosts:
        options["known_hosts"] = (
            None if args.known_hosts == "none" else args.known_hosts
        )
    cluster = ssh_cluster(
        args.hosts,
        workers_per_host=args.workers_per_host,
        threads=args.threads_per_worker,
        memory_limit=args.memory_limit,
        scheduler_port=args.scheduler_port,
        dashboard_address=args.dashboard_address,
        remote_python=args.remote_python,
        connect_options=options or None,
    )
    try:
        address = cluster.scheduler_address
        if args.scheduler_file:
            with open(args.scheduler_file, "w") as handle:
                json.dump({"address": address}, handle)
        print(f"scheduler: {address}")
        print(f"dashboard: {cluster.dashboard_link}", file=sys.stderr)
        print(
            f"use it: dmask train DATASET --out MODEL --scheduler {address}",
            file=sys.stderr,
        )
        print("Ctrl-C stops the cluster", file=sys.stderr, flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        while not stop.wait(1):
            pass
    finally:
        cluster.close()
        if args.scheduler_file and os.path.exists(args.scheduler_file):
            os.remove(args.scheduler_file)
