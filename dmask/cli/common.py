"""What several commands share: argument types, cluster options and the client."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any

from dmask.errors import DmaskError

#: ``--resize`` choices: :data:`dmask.io.face_crops.RESIZE_METHODS` (spelled out
#: here so that the command line starts without loading the image libraries).
RESIZE_METHODS = ["lanczos", "bilinear", "area"]


def _add_resize_option(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument(
        "--resize", default="lanczos", choices=RESIZE_METHODS, help=text
    )


#: ``--crop`` choices: :data:`dmask.io.face_crops.CROP_MODES` (spelled out, as
#: the resize methods, so ``--help`` loads no image code; a test checks both).
CROP_MODES = ["auto", "align", "detect", "center", "none"]


def _add_crop_option(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument("--crop", default="auto", choices=CROP_MODES, help=text)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _add_cluster_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cluster")
    group.add_argument("--scheduler", help="address of an existing Dask scheduler")
    group.add_argument("--scheduler-file", help="scheduler file of an existing cluster")
    group.add_argument(
        "--workers", type=_positive_int, help="local workers (default: one per core)"
    )
    group.add_argument(
        "--threads-per-worker", type=_positive_int, help="threads per local worker"
    )
    group.add_argument("--memory-limit", help="memory limit per local worker, e.g. 4GB")
    group.add_argument(
        "--threads",
        action="store_true",
        help="run local workers as threads in this process instead of processes",
    )
    group.add_argument(
        "--dashboard-address",
        help="local dashboard address (default 127.0.0.1:8787)",
    )
    group.add_argument("--report", help="write a Dask performance report (HTML) here")
    group.add_argument(
        "--tls-ca", help="TLS: CA certificate (with --tls-cert/--tls-key)"
    )
    group.add_argument("--tls-cert", help="TLS: this client's certificate")
    group.add_argument("--tls-key", help="TLS: this client's private key")
    group.add_argument(
        "--config",
        help="YAML file of dask/dmask settings (the dmask: section; see cluster/)",
    )


def _lam(text: str) -> float | str:
    if text in ("loo", "gcv"):
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a positive number, loo or gcv, got {text}"
        ) from None


@contextlib.contextmanager
def _cluster(args: argparse.Namespace) -> Iterator[Any]:
    from dmask.cluster.clients import ClusterOptions, connect
    from dmask.options import set_options

    if args.config:
        _load_config(args.config)
    options = ClusterOptions.from_config(
        scheduler=args.scheduler,
        scheduler_file=args.scheduler_file,
        n_workers=args.workers,
        threads_per_worker=args.threads_per_worker,
        memory_limit=args.memory_limit,
        processes=False if args.threads else None,
        dashboard_address=args.dashboard_address,
        tls_ca_file=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        quiet=args.verbose < 2,  # scheduler and worker logs with -vv
    )
    _check_writable(getattr(args, "report", None))
    with connect(options) as client:
        print(f"dashboard: {_dashboard_link(client, options)}", flush=True)
        report: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if args.report:
            from distributed import performance_report

            report = performance_report(filename=args.report)
        # the bars redraw a line with carriage returns: for terminals, not log files
        with report, set_options(progress=sys.stdout.isatty()):
            yield client
        if args.report:
            print(f"performance report: {args.report}")


def _dashboard_link(client: Any, options: Any) -> str:
    """The dashboard's link; loopback when a local cluster's dashboard binds there.

    (An in-process cluster names the machine's address in its link although
    the dashboard listens on 127.0.0.1 only.)
    """
    from urllib.parse import urlsplit, urlunsplit

    from dmask.cluster.clients import bind_address

    link = str(client.dashboard_link)
    local = not (options.scheduler or options.scheduler_file)
    bound = bind_address(options.dashboard_address) or ""
    if local and bound.startswith("127.0.0.1:"):
        parts = urlsplit(link)
        if parts.port is not None:
            link = urlunsplit(parts._replace(netloc=f"127.0.0.1:{parts.port}"))
    return link


def _load_config(path: str) -> None:
    """Merge a YAML settings file into dask.config (it wins over other files)."""
    from dmask.options import load_file

    load_file(path)


def _split_names(text: str | None) -> list[str] | None:
    if not text:
        return None
    return [name.strip() for name in text.split(",") if name.strip()]


def _summary(client: Any, started: float, **figures: Any) -> None:
    from dmask.cluster.clients import peak_worker_memory

    wall = time.perf_counter() - started
    parts = [f"{key.replace('_', ' ')} {value}" for key, value in figures.items()]
    parts.append(f"wall time {wall:.1f} s")
    peak = peak_worker_memory(client)
    if peak:
        parts.append(f"peak worker memory {peak / 2**20:.0f} MiB")
    print("summary: " + ", ".join(parts))


def _image_size(values: list[int] | None, default: int | None) -> Any:
    from dmask.errors import InputError

    if not values:
        return None if default is None else (default, default)
    if len(values) > 2:
        raise InputError(f"--size takes H or H W, got {len(values)} numbers")
    return (values[0], values[-1])


def _is_store(path: str) -> bool:
    import os

    return os.path.isfile(os.path.join(path, "zarr.json"))


def _json_rows(path: str | None) -> list[dict[str, Any]] | None:
    import json

    if not path:
        return None
    try:
        with open(path) as handle:
            rows = json.load(handle)
    except ValueError as exc:
        raise DmaskError(f"{path} is not valid JSON: {exc}") from None
    if isinstance(rows, dict) and "rows" in rows:
        rows = rows["rows"]
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise DmaskError(f"{path} must hold a list of rows (JSON objects)")
    return rows


def _check_writable(*paths: str | None) -> None:
    """Refuse, before any work, an output file that cannot be written."""
    import os

    for path in paths:
        if not path or "://" in str(path):
            continue
        if os.path.isdir(path):
            raise DmaskError(f"cannot write {path}: it is a folder")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise DmaskError(f"cannot write {path}: folder {parent} does not exist")
        if not os.access(parent, os.W_OK):
            raise DmaskError(f"cannot write {path}: folder {parent} is not writable")


def _check_output_folder(folder: str | None) -> None:
    """Refuse, before any work, an output folder that cannot be made or written."""
    import os

    from dmask.io.locks import check_parent

    if not folder or "://" in str(folder):
        return
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise DmaskError(f"cannot write into {folder}: it is a file, not a folder")
    check_parent(os.path.join(folder, "x"))  # the nearest existing folder
    place = os.path.abspath(folder)
    while not os.path.exists(place):
        place = os.path.dirname(place)
    if not os.access(place, os.W_OK):
        raise DmaskError(f"cannot write into {folder}: {place} is not writable")


def _check_folders(*folders: str | None) -> None:
    """Refuse input folders that are not there."""
    import os

    for folder in folders:
        if folder and not os.path.isdir(folder):
            raise DmaskError(f"folder {folder} does not exist")
