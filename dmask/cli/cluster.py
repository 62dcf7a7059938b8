"""dmask cluster ssh|kubernetes: start a Dask cluster for the other commands."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from dmask.cli.common import (
    _checked,
    _memory_limit,
    _positive_float,
    _positive_int,
    add_command,
    renamed,
)
from dmask.errors import UsageError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cluster = add_command(
        sub,
        "cluster",
        "start a Dask cluster for the other commands to use",
        [
            "dmask cluster ssh node1 node2 --scheduler-file s.json",
            "dmask cluster ssh --help",
            "dmask cluster kubernetes --workers 4 --scheduler-file s.json",
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

    _add_kubernetes_parser(kinds)


def _size(text: str) -> str:
    """A size dask understands (``4GiB``, ``4Gi``, ``512MB``), not ``auto``."""
    if text == "auto":
        raise argparse.ArgumentTypeError("must be a size such as 4GiB, got auto")
    return _memory_limit(text)


def _env(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE, got {text}")
    return key, value


_count = _checked(int, lambda v: v >= 0, "an integer >= 0")


def _add_kubernetes_parser(
    kinds: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    kube = add_command(
        kinds,
        "kubernetes",
        "on Kubernetes, through the Dask operator (dask-kubernetes)",
        [
            "dmask cluster kubernetes --workers 4 --threads-per-worker 2 "
            "--memory-limit 8GiB --claim dmask-data --scheduler-file s.json",
            "dmask cluster kubernetes --image registry.example.com/dmask:0.1.0 "
            "--adapt 1 20 --env AWS_REGION=eu-west-1",
            "dmask train s3://bucket/faces.zarr --out s3://bucket/model.zarr "
            "--scheduler-file s.json   # in another shell",
        ],
        description="Start a Dask cluster on Kubernetes (dask-kubernetes' "
        "KubeCluster: a DaskCluster resource that the Dask operator turns into a "
        "scheduler and worker pods), connect to it (through a port-forward from "
        "outside the Kubernetes cluster), and run until Ctrl-C, which deletes it. "
        'Needs pip install "dmask[kubernetes]", a kubeconfig (KUBECONFIG) and the '
        "operator installed in the Kubernetes cluster.",
    )
    kube.add_argument(
        "--name",
        metavar="NAME",
        help="the DaskCluster's name (default: dmask-USER)",
    )
    kube.add_argument(
        "--image",
        default=None,
        metavar="IMAGE",
        help="image of the scheduler and workers, built from "
        "cluster/docker/Dockerfile (default: dmask:VERSION)",
    )
    kube.add_argument(
        "--namespace",
        metavar="NAMESPACE",
        help="Kubernetes namespace (default: the current context's)",
    )
    kube.add_argument(
        "--workers", type=_positive_int, default=2, metavar="N",
        help="worker pods (one worker process each)",
    )  # fmt: skip
    kube.add_argument(
        "--threads-per-worker",
        type=_positive_int,
        default=1,
        metavar="N",
        help="threads per worker, and its container's CPU limit",
    )
    kube.add_argument(
        "--memory-limit",
        type=_size,
        default="4GiB",
        metavar="SIZE",
        help="memory per worker, and its container's memory limit",
    )
    kube.add_argument(
        "--scheduler-memory",
        type=_size,
        default="2GiB",
        metavar="SIZE",
        help="the scheduler container's memory limit",
    )
    kube.add_argument(
        "--env",
        type=_env,
        action="append",
        metavar="KEY=VALUE",
        help="environment variable of every pod (repeatable)",
    )
    kube.add_argument(
        "--claim",
        metavar="PVC",
        help="a PersistentVolumeClaim mounted at /data in every pod",
    )
    kube.add_argument(
        "--adapt",
        nargs=2,
        type=_count,
        metavar=("MIN", "MAX"),
        help="scale the workers between MIN and MAX by load instead of --workers",
    )
    kube.add_argument(
        "--timeout",
        type=_positive_float,
        default=120.0,
        metavar="SECONDS",
        help="wait this long for the Kubernetes API and for each step of the start",
    )
    kube.add_argument(
        "--scheduler-file",
        metavar="FILE",
        help="write the scheduler's address here (removed when the cluster stops)",
    )


def _serve(args: argparse.Namespace, cluster: Any, notes: list[str]) -> None:
    """Print where the cluster is, write the scheduler file, wait for Ctrl-C."""
    import json
    import os
    import signal
    import threading

    try:
        address = cluster.scheduler_address
        if args.scheduler_file:
            with open(args.scheduler_file, "w") as handle:
                json.dump({"address": address}, handle)
        print(f"scheduler: {address}")
        print(f"dashboard: {cluster.dashboard_link}", file=sys.stderr)
        for note in notes:
            print(note, file=sys.stderr)
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


def run_kubernetes(args: argparse.Namespace) -> None:
    """``dmask cluster kubernetes``: start, announce, run until Ctrl-C, delete."""
    from dmask.cluster.kubernetes import (
        DEFAULT_IMAGE,
        in_cluster_address,
        kubernetes_cluster,
        kubernetes_cluster_spec,
    )

    if args.verbose < 2:  # distributed's, the operator client's logs with -vv
        for name in ("distributed", "dask_kubernetes", "kr8s", "httpx"):
            logging.getLogger(name).setLevel(logging.ERROR)
    if args.adapt and args.adapt[1] < max(args.adapt[0], 1):
        raise UsageError("--adapt MIN MAX needs MAX >= MIN and MAX >= 1")
    spec = kubernetes_cluster_spec(
        args.name,
        image=args.image or DEFAULT_IMAGE,
        workers=args.adapt[0] if args.adapt and args.adapt[0] else args.workers,
        threads=args.threads_per_worker,
        memory_limit=args.memory_limit,
        scheduler_memory=args.scheduler_memory,
        env=dict(args.env or []),
        claim=args.claim,
    )
    cluster = kubernetes_cluster(
        spec,
        namespace=args.namespace,
        timeout=args.timeout,
        adapt=tuple(args.adapt) if args.adapt else None,
    )
    name = spec["metadata"]["name"]
    inside = in_cluster_address(name, cluster.namespace)
    _serve(
        args,
        cluster,
        [
            f"inside the Kubernetes cluster: {inside}",
            f"kubectl get daskcluster {name} -n {cluster.namespace}",
        ],
    )


def run(args: argparse.Namespace) -> None:
    if args.kind == "kubernetes":
        run_kubernetes(args)
        return
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
    _serve(args, cluster, [])
