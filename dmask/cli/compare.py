"""dmask compare: MR against the paper's baselines."""

from __future__ import annotations

import argparse
import time

from dmask.cli.common import (
    _add_cluster_options,
    _check_writable,
    _cluster,
    _field,
    _images_bytes,
    _positive_float,
    _positive_int,
    _summary,
    add_command,
    names_option,
    numbers_option,
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    compare = add_command(
        sub,
        "compare",
        "MR against the paper's baselines on held-out subjects",
        [
            "dmask compare faces.zarr --json c.json",
            "dmask compare faces.zarr --fields 3 5 --methods mr mr_joint identity "
            "--targets happy",
            "dmask compare faces.zarr --save-models models/   # then dmask apply "
            "models/omp.zarr ...",
        ],
    )
    compare.add_argument("dataset", help="dataset store (train and test splits)")
    compare.add_argument(
        "--source", default="neutral", metavar="NAME", help="source expression"
    )
    names_option(
        compare,
        "--targets",
        "target expressions, space-separated (default: every other one)",
    )
    numbers_option(
        compare, "--fields", _field, "MR's receptive fields r", default=[1, 3, 5],
        metavar="R",
    )  # fmt: skip
    compare.add_argument(
        "--lam",
        type=_positive_float,
        default=0.4,
        help="ridge penalty of MR, full ridge, reduced-rank and kernel ridge",
    )
    names_option(
        compare,
        "--methods",
        "methods among mr, full_ridge, reduced_rank, kernel_ridge, lasso, omp, "
        "identity, mean_difference (the default: all of these), and mr_joint: MR in "
        "the joint colour mode",
        metavar="METHOD",
    )
    compare.add_argument(
        "--rank",
        type=_positive_int,
        metavar="Q",
        help="reduced-rank ridge's rank q (default: half the training pairs)",
    )
    compare.add_argument("--csv", metavar="FILE", help="write the rows as CSV here")
    compare.add_argument("--json", metavar="FILE", help="write the rows as JSON here")
    compare.add_argument(
        "--all-rows", action="store_true", help="print every expression, not means"
    )
    compare.add_argument(
        "--save-models",
        metavar="FOLDER",
        help="save MR (mr_r<r>.zarr, mr_joint_r<r>.zarr) and the lasso and OMP "
        "baselines (lasso.zarr, "
        "omp.zarr: sparse models) as model stores for dmask apply",
    )
    _add_cluster_options(compare)


def run(args: argparse.Namespace) -> None:
    from dmask.evaluation.compare import COMPARED_METHODS, compare, format_comparison
    from dmask.evaluation.metrics import write_results
    from dmask.io.dataset_store import open_dataset

    _check_writable(args.csv, args.json)
    ds = open_dataset(args.dataset)
    methods = args.methods or list(COMPARED_METHODS)
    with _cluster(args, _images_bytes(ds)) as client:
        started = time.perf_counter()
        rows = compare(
            ds,
            source=args.source,
            targets=args.targets or None,
            fields=tuple(args.fields),
            lam=args.lam,
            methods=methods,
            rank=args.rank,
            save_models=args.save_models,
        )
        print(format_comparison(rows, means_only=not args.all_rows))
        write_results(rows, args.csv, args.json)
        _summary(client, started, methods=len(methods))
    for path in (args.csv, args.json):
        if path:
            print(f"written: {path}")
    if args.save_models:
        print(f"models: {args.save_models}")
