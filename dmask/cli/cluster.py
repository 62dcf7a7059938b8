"""dmask cluster ssh: start a Dask cluster for the other commands."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from dmask.cli.common import _positive_int


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cluster = sub.add_parser(
        "cluster", help="start a Dask cluster for the other commands to use"
    )
    kinds = cluster.add_subparsers(dest="kind", required=True)
    ssh = kinds.add_parser(
        "ssh", help="over SSH: the scheduler on the first host, workers on the rest"
    )
    ssh.add_argument("hosts", nargs="+", metavar="HOST")
    ssh.add_argument("--workers-per-host", type=_positive_int, default=1)
    ssh.add_argument("--threads", type=_positive_int, default=1, help="per worker")
    ssh.add_argument("--memory-limit", default="auto", help="per worker, e.g. 4GB")
    ssh.add_argument("--port", type=int, default=8786, help="scheduler port")
    ssh.add_argument("--dashboard-address", default="127.0.0.1:8787")
    ssh.add_argument(
        "--remote-python", help="Python with dmask on the hosts (default: this one)"
    )
    ssh.add_argument("--ssh-port", type=int)
    ssh.add_argument("--ssh-user")
    ssh.add_argument("--ssh-key", action="append", help="private key (repeatable)")
    ssh.add_argument("--known-hosts", help="known_hosts file ('none': no checks)")
    ssh.add_argument("--scheduler-file", help="write the scheduler's address here")


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
        threads=args.threads,
        memory_limit=args.memory_limit,
        scheduler_port=args.port,
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
        print(f"dashboard: {cluster.dashboard_link}")
        print(f"use it: dmask train DATASET --out MODEL --scheduler {address}")
        print("Ctrl-C stops the cluster", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        while not stop.wait(1):
            pass
    finally:
        cluster.close()
        if args.scheduler_file and os.path.exists(args.scheduler_file):
            os.remove(args.scheduler_file)
