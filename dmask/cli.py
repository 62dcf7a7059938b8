"""Command line: ``dmask synth | train | apply | evaluate``."""

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
        default="127.0.0.1:8787",
        help="local dashboard address (default 127.0.0.1:8787)",
    )
    group.add_argument("--report", help="write a Dask performance report (HTML) here")


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
    train.add_argument("--lam", type=float, default=0.4, help="ridge penalty")
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
    _add_cluster_options(train)

    apply = sub.add_parser("apply", help="synthesise faces with a stored model")
    apply.add_argument("model", help="model store")
    apply.add_argument("dataset", help="dataset store of source faces")
    apply.add_argument("--out", required=True, help="output store of synthesised faces")
    apply.add_argument("--source", default="neutral", help="('' for every sample)")
    apply.add_argument("--split", default="", help="only this split ('' for all)")
    apply.add_argument("--targets", help="comma-separated subset of model targets")
    apply.add_argument("--png", help="also write PNG files to this folder")
    apply.add_argument("--sample-block", type=_positive_int, help="samples per task")
    apply.add_argument("--overwrite", action="store_true")
    _add_cluster_options(apply)

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
    from dmask.cluster import ClusterOptions, connect
    from dmask.execution import show_progress

    options = ClusterOptions(
        scheduler=args.scheduler,
        scheduler_file=args.scheduler_file,
        n_workers=args.workers,
        threads_per_worker=args.threads_per_worker,
        memory_limit=args.memory_limit,
        processes=not args.threads,
        dashboard_address=args.dashboard_address,
        quiet=not args.verbose,
    )
    with connect(options) as client:
        print(f"dashboard: {client.dashboard_link}", flush=True)
        report: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if args.report:
            from distributed import performance_report

            report = performance_report(filename=args.report)
        with report, show_progress(True):
            yield client
        if args.report:
            print(f"performance report: {args.report}")


def _split_names(text: str | None) -> list[str] | None:
    if not text:
        return None
    return [name.strip() for name in text.split(",") if name.strip()]


def _summary(client: Any, started: float, **figures: Any) -> None:
    from dmask.cluster import peak_worker_memory

    wall = time.perf_counter() - started
    parts = [f"{key.replace('_', ' ')} {value}" for key, value in figures.items()]
    parts.append(f"wall time {wall:.1f} s")
    peak = peak_worker_memory(client)
    if peak:
        parts.append(f"peak worker memory {peak / 2**20:.0f} MiB")
    print("summary: " + ", ".join(parts))


def _run_synth(args: argparse.Namespace) -> None:
    from dmask.synth import synthesize

    shape = (args.size, args.width or args.size)
    with _cluster(args) as client:
        started = time.perf_counter()
        ds = synthesize(
            args.out,
            args.subjects,
            shape,
            args.seed,
            args.test_fraction,
            args.overwrite,
        )
        _summary(client, started, images=ds.sizes["sample"], store=args.out)


def _run_train(args: argparse.Namespace) -> None:
    from dmask.faces import EXPRESSIONS
    from dmask.model import check_settings, fit
    from dmask.storage import open_dataset, prepare_output, stored_pairs

    check_settings(args.field, args.lam, args.normalize)
    prepare_output(args.out, args.overwrite, inputs=[args.dataset])
    ds = open_dataset(args.dataset)
    targets = _split_names(args.targets)
    if targets is None:
        present = [str(e) for e in dict.fromkeys(ds["expression"].values.tolist())]
        order = [e for e in EXPRESSIONS if e in present] + [
            e for e in present if e not in EXPRESSIONS
        ]
        targets = [e for e in order if e != args.source]
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


def _run_apply(args: argparse.Namespace) -> None:
    from dmask.inference import apply_to_store, write_pngs
    from dmask.model import open_model
    from dmask.storage import open_dataset, prepare_output

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


def _run_evaluate(args: argparse.Namespace) -> None:
    from dmask.evaluate import evaluate, format_table, write_results
    from dmask.model import open_model
    from dmask.storage import open_dataset

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
    "train": _run_train,
    "apply": _run_apply,
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
