"""Command line: ``dmask synth | ingest | train | apply | export | import | ...``."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from dmask import __version__
from dmask.errors import DmaskError

__all__ = ["main"]

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


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


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dmask",
        description="Masked ridge regression for facial expression synthesis.",
    )
    parser.add_argument("--version", action="version", version=f"dmask {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True)

    synth = sub.add_parser("synth", help="generate a synthetic paired-face dataset")
    synth.add_argument("--out", required=True, help="output dataset store")
    synth.add_argument("--subjects", type=_positive_int, default=160)
    synth.add_argument("--size", type=_positive_int, default=128, help="image height")
    synth.add_argument(
        "--width", type=_positive_int, help="image width (default: size)"
    )
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--test-fraction", type=float, default=0.25)
    synth.add_argument("--overwrite", action="store_true")
    _add_cluster_options(synth)

    train = sub.add_parser("train", help="train a model from a dataset store")
    train.add_argument("dataset", help="dataset store")
    train.add_argument("--out", required=True, help="output model store")
    train.add_argument("--source", default="neutral", help="source expression")
    train.add_argument(
        "--targets", help="comma-separated target expressions (default: all others)"
    )
    train.add_argument("--split", default="train", help="training split ('' for all)")
    train.add_argument("--field", type=int, default=3, help="odd receptive field r")
    train.add_argument(
        "--lam",
        type=_lam,
        default=0.4,
        help="ridge penalty, or loo / gcv: chosen per pixel from --lam-grid",
    )
    train.add_argument(
        "--lam-grid", type=float, nargs="+", help="penalties for --lam loo|gcv"
    )
    train.add_argument("--normalize", default="minmax", choices=["minmax", "none"])
    train.add_argument(
        "--tile", type=_positive_int, nargs=2, metavar=("H", "W"), help="tile shape"
    )
    train.add_argument("--sample-block", type=_positive_int, help="samples per task")
    train.add_argument(
        "--method",
        default="auto",
        choices=["auto", "covariance", "displacement"],
        help="how statistics are accumulated (same model either way)",
    )
    train.add_argument("--overwrite", action="store_true")
    train.add_argument(
        "--resume",
        action="store_true",
        help="finish an interrupted run: solve only the tiles not yet written",
    )
    _add_cluster_options(train)

    ingest = sub.add_parser(
        "ingest", help="turn a folder of face photographs into a dataset store"
    )
    ingest.add_argument("folder", help="folder of images (KDEF, RaFD, trainA/trainB)")
    ingest.add_argument("--out", required=True, help="output dataset store")
    ingest.add_argument(
        "--layout",
        default="auto",
        choices=["auto", "kdef", "rafd", "pairs", "manifest"],
        help="file naming scheme (default: detected)",
    )
    ingest.add_argument("--manifest", help="CSV: path,subject,expression[,split]")
    ingest.add_argument(
        "--size", type=_positive_int, nargs="+", metavar="N", help="H [W] (default 128)"
    )
    ingest.add_argument(
        "--crop", default="detect", choices=["detect", "center", "none"]
    )
    ingest.add_argument("--margin", type=float, default=0.25, help="around a face")
    ingest.add_argument("--channels", type=int, choices=[1, 3], help="force 1 or 3")
    ingest.add_argument(
        "--target-expression",
        default="happy",
        help="expression of trainB/ in the pairs layout",
    )
    ingest.add_argument("--seed", type=int, default=0, help="train/test split seed")
    ingest.add_argument("--test-fraction", type=float, default=0.25)
    ingest.add_argument("--overwrite", action="store_true")
    _add_cluster_options(ingest)

    apply = sub.add_parser("apply", help="synthesise faces with a stored model")
    apply.add_argument("model", help="model store")
    apply.add_argument(
        "dataset", help="dataset store of source faces, or a folder of photographs"
    )
    apply.add_argument(
        "--out",
        required=True,
        help="output store (from a store) or output folder of PNGs (from a folder)",
    )
    apply.add_argument("--source", default="neutral", help="('' for every sample)")
    apply.add_argument("--split", default="", help="only this split ('' for all)")
    apply.add_argument("--targets", help="comma-separated subset of model targets")
    apply.add_argument("--png", help="also write PNG files to this folder")
    apply.add_argument("--sample-block", type=_positive_int, help="samples per task")
    apply.add_argument(
        "--crop",
        default="auto",
        choices=["auto", "detect", "center", "none"],
        help="folders: face crop (auto: detect, else the centre)",
    )
    apply.add_argument("--margin", type=float, default=0.25, help="around a face")
    apply.add_argument(
        "--files-per-task", type=_positive_int, default=16, help="folders: files/task"
    )
    apply.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the output store; for folders, redo files already done",
    )
    _add_cluster_options(apply)

    export = sub.add_parser(
        "export", help="write a model in the reference implementation's format"
    )
    export.add_argument("model", help="model store")
    export.add_argument("--out", required=True, help="output folder")
    export.add_argument("--format", default="reference", choices=["reference"])
    export.add_argument("--target", help="one target (default: all)")
    export.add_argument("--overwrite", action="store_true")

    import_ = sub.add_parser(
        "import", help="read a reference-format model into a model store"
    )
    import_.add_argument(
        "source", nargs="+", help="export folder, or one .npz file per channel"
    )
    import_.add_argument("--out", required=True, help="output model store")
    import_.add_argument("--format", default="reference", choices=["reference"])
    import_.add_argument(
        "--size", type=_positive_int, nargs="+", metavar="N", help="H [W] of images"
    )
    import_.add_argument("--field", type=int, help="receptive field r (default: found)")
    import_.add_argument("--target", default="target", help="target name (.npz files)")
    import_.add_argument("--lam", type=float, help="ridge penalty, for the record")
    import_.add_argument(
        "--normalize",
        choices=["minmax", "none"],
        help="input normalisation (default: the export's, else minmax)",
    )
    import_.add_argument("--overwrite", action="store_true")

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
    ssh.add_argument("--dashboard-address", default=":8787")
    ssh.add_argument(
        "--remote-python", help="Python with dmask on the hosts (default: this one)"
    )
    ssh.add_argument("--ssh-port", type=int)
    ssh.add_argument("--ssh-user")
    ssh.add_argument("--ssh-key", action="append", help="private key (repeatable)")
    ssh.add_argument("--known-hosts", help="known_hosts file ('none': no checks)")
    ssh.add_argument("--scheduler-file", help="write the scheduler's address here")

    compare = sub.add_parser(
        "compare", help="MR against the paper's baselines on held-out subjects"
    )
    compare.add_argument("dataset", help="dataset store")
    compare.add_argument("--source", default="neutral")
    compare.add_argument("--targets", help="comma-separated target expressions")
    compare.add_argument("--fields", type=int, nargs="+", default=[1, 3, 5])
    compare.add_argument("--lam", type=float, default=0.4)
    compare.add_argument(
        "--methods",
        help="comma-separated subset of mr, full_ridge, reduced_rank, kernel_ridge, "
        "lasso, omp, identity, mean_difference",
    )
    compare.add_argument("--rank", type=_positive_int, help="reduced-rank q")
    compare.add_argument("--csv", help="write the rows as CSV here")
    compare.add_argument("--json", help="write the rows as JSON here")
    compare.add_argument(
        "--all-rows", action="store_true", help="print every expression, not means"
    )
    _add_cluster_options(compare)

    tune = sub.add_parser(
        "tune", help="sweep r and lambda, scored on held-out subjects"
    )
    tune.add_argument("dataset", help="dataset store")
    tune.add_argument("--source", default="neutral")
    tune.add_argument("--targets", help="comma-separated target expressions")
    tune.add_argument("--fields", type=int, nargs="+", default=[1, 3, 5, 7])
    tune.add_argument(
        "--lams", type=_lam, nargs="+", default=[0.01, 0.1, 0.4, 1.0, 4.0, 10.0]
    )
    tune.add_argument(
        "--sizes", type=int, nargs="+", help="also: test MSE against N (MR, full ridge)"
    )
    tune.add_argument("--json", help="write the sweep's rows here")
    tune.add_argument("--csv", help="write the sweep's rows here")
    tune.add_argument("--size-json", help="write the N curve's rows here")
    _add_cluster_options(tune)

    report = sub.add_parser("report", help="one self-contained HTML report")
    report.add_argument("model", help="model store")
    report.add_argument("dataset", help="dataset store")
    report.add_argument("--out", required=True, help="output HTML file")
    report.add_argument("--source", default="neutral")
    report.add_argument("--split", default="test", help="held-out split shown")
    report.add_argument("--subjects", type=_positive_int, default=4)
    report.add_argument("--comparison", help="JSON rows from dmask compare")
    report.add_argument("--tuning", help="JSON rows from dmask tune")
    report.add_argument("--size-curve", help="JSON rows of MSE against N")
    report.add_argument(
        "--photographs",
        nargs=2,
        metavar=("FOLDER", "SYNTHESISED"),
        help="a folder given to dmask apply, and that run's output folder",
    )
    report.add_argument("--overwrite", action="store_true")
    _add_cluster_options(report)

    evaluate = sub.add_parser("evaluate", help="MSE and PSNR against baselines")
    evaluate.add_argument("model", help="model store")
    evaluate.add_argument("dataset", help="dataset store")
    evaluate.add_argument("--source", default="neutral")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--csv", help="write the table as CSV here")
    evaluate.add_argument("--json", help="write the table as JSON here")
    _add_cluster_options(evaluate)
    return parser


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
        quiet=not args.verbose,
    )
    with connect(options) as client:
        print(f"dashboard: {_dashboard_link(client, options)}", flush=True)
        report: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if args.report:
            from distributed import performance_report

            report = performance_report(filename=args.report)
        with report, set_options(progress=True):
            yield client
        if args.report:
            print(f"performance report: {args.report}")


def _dashboard_link(client: Any, options: Any) -> str:
    """The dashboard's link; loopback when a local cluster's dashboard binds there.

    (An in-process cluster names the machine's address in its link although
    the dashboard listens on 127.0.0.1 only.)
    """
    from urllib.parse import urlsplit, urlunsplit

    link = str(client.dashboard_link)
    local = not (options.scheduler or options.scheduler_file)
    if local and str(options.dashboard_address or "").startswith("127.0.0.1:"):
        parts = urlsplit(link)
        if parts.port is not None:
            link = urlunsplit(parts._replace(netloc=f"127.0.0.1:{parts.port}"))
    return link


def _load_config(path: str) -> None:
    """Merge a YAML settings file into dask.config (it wins over other files)."""
    import dask.config
    import yaml

    try:
        with open(path) as handle:
            settings = yaml.safe_load(handle) or {}
    except yaml.YAMLError as exc:
        raise DmaskError(
            f"configuration file {path} is not valid YAML: {exc}"
        ) from None
    if not isinstance(settings, dict):
        raise DmaskError(f"configuration file {path} must hold a mapping")
    dask.config.update(dask.config.config, settings, priority="new")


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


def _run_synth(args: argparse.Namespace) -> None:
    from dmask.datasets.synthetic import make_synthetic_dataset

    shape = (args.size, args.width or args.size)
    with _cluster(args) as client:
        started = time.perf_counter()
        ds = make_synthetic_dataset(
            args.out,
            args.subjects,
            shape,
            args.seed,
            args.test_fraction,
            args.overwrite,
        )
        _summary(client, started, images=ds.sizes["sample"], store=args.out)


def _run_train(args: argparse.Namespace) -> None:
    from dmask.datasets.drawing import EXPRESSIONS
    from dmask.io.dataset_store import open_dataset, other_expressions, stored_pairs
    from dmask.io.locations import same_store
    from dmask.io.stores import prepare_output
    from dmask.model import check_settings, fit

    check_settings(args.field, args.lam, args.normalize)
    if args.resume and args.overwrite:
        raise DmaskError("give --resume or --overwrite, not both")
    if not args.resume:
        prepare_output(args.out, args.overwrite, inputs=[args.dataset])
    elif same_store(args.out, args.dataset):
        raise DmaskError(f"output store {args.out} is the dataset; choose another")
    ds = open_dataset(args.dataset)
    targets = _split_names(args.targets)
    if targets is None:
        present = other_expressions(ds, args.source)
        targets = [e for e in EXPRESSIONS if e in present] + [
            e for e in present if e not in EXPRESSIONS
        ]
    sources, target_arrays = stored_pairs(ds, args.source, targets, args.split or None)
    with _cluster(args) as client:
        started = time.perf_counter()
        model = fit(
            sources,
            target_arrays,
            field=args.field,
            lam=args.lam,
            normalize=args.normalize,
            store=args.out,
            overwrite=True,
            tile_shape=tuple(args.tile) if args.tile else None,
            sample_block=args.sample_block,
            method=args.method,
            resume=args.resume,
            lam_grid=args.lam_grid,
        )
        height, width = model.image_shape
        pixels = height * width * model.channels * len(model.targets)
        wall = time.perf_counter() - started
        _summary(
            client,
            started,
            targets=len(model.targets),
            training_pairs=sources.shape[0],
            tiles=int(model.dataset.sizes["tile_y"] * model.dataset.sizes["tile_x"]),
            problems_solved=pixels,
            throughput=f"{pixels / max(wall, 1e-9):.0f} problems/s",
        )
    print(f"model: {args.out}")


def _image_size(values: list[int] | None, default: int | None) -> Any:
    from dmask.errors import InputError

    if not values:
        return None if default is None else (default, default)
    if len(values) > 2:
        raise InputError(f"--size takes H or H W, got {len(values)} numbers")
    return (values[0], values[-1])


def _run_ingest(args: argparse.Namespace) -> None:
    from dmask.datasets.ingest import ingest

    with _cluster(args) as client:
        started = time.perf_counter()
        report = ingest(
            args.folder,
            args.out,
            layout=args.layout,
            manifest=args.manifest,
            size=_image_size(args.size, 128),
            crop=args.crop,
            margin=args.margin,
            channels=args.channels,
            target_expression=args.target_expression,
            seed=args.seed,
            test_fraction=args.test_fraction,
            overwrite=args.overwrite,
        )
        problems = report.lines[:-1]
        for line in problems[:20]:
            print(f"  {line}")
        if len(problems) > 20:
            print(f"  ... {len(problems) - 20} more in {report.report_path}")
        print(report.summary())
        wall = time.perf_counter() - started
        _summary(
            client,
            started,
            images=report.taken,
            throughput=f"{report.files / max(wall, 1e-9):.1f} files/s",
        )
    print(f"dataset: {args.out}")


def _is_store(path: str) -> bool:
    import os

    return os.path.isfile(os.path.join(path, "zarr.json"))


def _run_apply_folder(args: argparse.Namespace) -> None:
    from dmask.apply.folder import apply_to_folder
    from dmask.model import open_model

    model = open_model(args.model)
    with _cluster(args) as client:
        started = time.perf_counter()
        report = apply_to_folder(
            model,
            args.dataset,
            args.out,
            targets=_split_names(args.targets),
            crop=args.crop,
            margin=args.margin,
            block=args.files_per_task,
            resume=not args.overwrite,
        )
        for line in report.problems[:20]:
            print(f"  skipped {line}")
        wall = time.perf_counter() - started
        _summary(
            client,
            started,
            image_files=report.scanned,
            already_done=report.already_done,
            images_synthesised=report.written,
            skipped=len(report.problems),
            throughput=f"{report.written / max(wall, 1e-9):.1f} images/s",
        )
    print(f"synthesised faces: {args.out} (report: {args.out}/report.txt)")


def _run_apply(args: argparse.Namespace) -> None:
    import os

    from dmask.apply.store import apply_to_store, write_pngs
    from dmask.io.dataset_store import open_dataset
    from dmask.io.stores import prepare_output
    from dmask.model import open_model

    if os.path.isdir(args.dataset) and not _is_store(args.dataset):
        _run_apply_folder(args)
        return
    prepare_output(args.out, args.overwrite, inputs=[args.model, args.dataset])
    model = open_model(args.model)
    ds = open_dataset(args.dataset)
    with _cluster(args) as client:
        started = time.perf_counter()
        out = apply_to_store(
            model,
            ds,
            args.out,
            source=args.source or None,
            split=args.split or None,
            targets=_split_names(args.targets),
            overwrite=True,
            sample_block=args.sample_block,
        )
        count = out.sizes["sample"]
        if args.png:
            write_pngs(out, args.png)
            print(f"PNG files: {args.png}")
        wall = time.perf_counter() - started
        _summary(
            client,
            started,
            images_synthesised=count,
            throughput=f"{count / max(wall, 1e-9):.1f} images/s",
        )
    print(f"synthesised faces: {args.out}")


def _run_export(args: argparse.Namespace) -> None:
    from dmask.interop import export_reference
    from dmask.model import open_model

    written = export_reference(
        open_model(args.model), args.out, target=args.target, overwrite=args.overwrite
    )
    print(f"reference-format model: {args.out} ({len(written)} files)")


def _run_import(args: argparse.Namespace) -> None:
    import os

    from dmask.interop import import_reference
    from dmask.io.stores import prepare_output

    prepare_output(args.out, args.overwrite, inputs=args.source)
    if len(args.source) == 1 and os.path.isdir(args.source[0]):
        source: Any = args.source[0]
        targets = None
    else:
        source = list(args.source)
        targets = [args.target]
    model = import_reference(
        source,
        image_shape=_image_size(args.size, None),
        field=args.field,
        targets=targets,
        lam=args.lam,
        normalize=args.normalize,
    )
    model.save(args.out, overwrite=True)
    print(f"model: {args.out} ({model})")


def _run_cluster(args: argparse.Namespace) -> None:
    import json
    import os
    import signal
    import threading

    from dmask.cluster.ssh import ssh_cluster

    if not args.verbose:
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


def _run_compare(args: argparse.Namespace) -> None:
    from dmask.evaluation.compare import METHODS, compare, format_table, write_rows
    from dmask.io.dataset_store import open_dataset

    ds = open_dataset(args.dataset)
    methods = _split_names(args.methods) or list(METHODS)
    with _cluster(args) as client:
        started = time.perf_counter()
        rows = compare(
            ds,
            source=args.source,
            targets=_split_names(args.targets),
            fields=tuple(args.fields),
            lam=args.lam,
            methods=methods,
            rank=args.rank,
        )
        print(format_table(rows, means_only=not args.all_rows))
        write_rows(rows, args.csv, args.json)
        _summary(client, started, methods=len(methods))
    for path in (args.csv, args.json):
        if path:
            print(f"written: {path}")


def _run_tune(args: argparse.Namespace) -> None:
    from dmask.evaluation.metrics import write_results
    from dmask.evaluation.tune import best_setting, training_size_curve, tune
    from dmask.io.dataset_store import open_dataset

    ds = open_dataset(args.dataset)
    with _cluster(args) as client:
        started = time.perf_counter()
        rows = tune(
            ds,
            source=args.source,
            targets=_split_names(args.targets),
            fields=tuple(args.fields),
            lams=tuple(args.lams),
        )
        means = [r for r in rows if r["expression"] == "mean"]
        print(f"{'r':>3} {'lambda':>8} {'MSE':>10} {'PSNR':>7}")
        for row in means:
            print(
                f"{row['field']:>3} {row['lam']!s:>8} {row['mse']:>10.5f} "
                f"{row['psnr']:>7.2f}{'  best' if row.get('best') else ''}"
            )
        best = best_setting(rows)
        print(f"best: r={best['field']} lambda={best['lam']} (MSE {best['mse']:.5f})")
        write_results(rows, args.csv, args.json)
        if args.sizes:
            best = best_setting(rows, numeric=True)  # full ridge needs a number
            curve = training_size_curve(
                ds,
                source=args.source,
                targets=_split_names(args.targets),
                sizes=tuple(args.sizes),
                field=int(best["field"]),
                lam=best["lam"],
            )
            print(f"{'method':>11} {'N':>5} {'MSE':>10}")
            for row in curve:
                if row["expression"] == "mean":
                    print(
                        f"{row['method']:>11} {row['n_train']:>5} {row['mse']:>10.5f}"
                    )
            write_results(curve, None, args.size_json)
        _summary(client, started, settings=len(means))
    for path in (args.csv, args.json, args.size_json):
        if path:
            print(f"written: {path}")


def _run_report(args: argparse.Namespace) -> None:
    from dmask.apply.folder import read_synthesised
    from dmask.io.dataset_store import open_dataset
    from dmask.model import open_model
    from dmask.report.page import write_report

    model = open_model(args.model)
    ds = open_dataset(args.dataset)
    comparison = _json_rows(args.comparison)
    tuning = _json_rows(args.tuning)
    size_curve = _json_rows(args.size_curve)
    with _cluster(args):
        photographs = (
            read_synthesised(model, *args.photographs) if args.photographs else None
        )
        path = write_report(
            args.out,
            model,
            ds,
            source=args.source,
            split=args.split,
            subjects=args.subjects,
            comparison=comparison,
            tuning=tuning,
            size_curve=size_curve,
            photographs=photographs,
            overwrite=args.overwrite,
        )
    print(f"report: {path}")


def _run_evaluate(args: argparse.Namespace) -> None:
    from dmask.evaluation.evaluate import evaluate, format_table
    from dmask.evaluation.metrics import write_results
    from dmask.io.dataset_store import open_dataset
    from dmask.model import open_model

    model = open_model(args.model)
    ds = open_dataset(args.dataset)
    with _cluster(args):
        rows = evaluate(model, ds, source=args.source, split=args.split)
    print(format_table(rows))
    write_results(rows, args.csv, args.json)
    for path in (args.csv, args.json):
        if path:
            print(f"written: {path}")


COMMANDS = {
    "synth": _run_synth,
    "ingest": _run_ingest,
    "train": _run_train,
    "apply": _run_apply,
    "export": _run_export,
    "import": _run_import,
    "cluster": _run_cluster,
    "compare": _run_compare,
    "tune": _run_tune,
    "report": _run_report,
    "evaluate": _run_evaluate,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
    )
    try:
        COMMANDS[args.command](args)
    except DmaskError as exc:
        print(f"dmask {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:  # unwritable output, full disk, unreachable scheduler
        print(f"dmask {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"dmask {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
