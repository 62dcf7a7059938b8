"""dmask compare: MR against the paper's baselines."""

from __future__ import annotations

import argparse
import time

from dmask.cli.common import (
    _add_cluster_options,
    _check_writable,
    _cluster,
    _positive_int,
    _split_names,
    _summary,
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
        "lasso, omp, identity, mean_difference (the default), and mr_joint: MR in the "
        "joint colour mode",
    )
    compare.add_argument("--rank", type=_positive_int, help="reduced-rank q")
    compare.add_argument("--csv", help="write the rows as CSV here")
    compare.add_argument("--json", help="write the rows as JSON here")
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
    methods = _split_names(args.methods) or list(COMPARED_METHODS)
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
