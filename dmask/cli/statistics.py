"""dmask solve and dmask update: models from a statistics store, and adding to it."""

from __future__ import annotations

import argparse
import time

from dmask.cli.common import _add_cluster_options, _cluster, _lam, _summary
from dmask.errors import DmaskError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    solve = sub.add_parser(
        "solve", help="build a model from a statistics store (no images read)"
    )
    solve.add_argument("statistics", help="statistics store (train --keep-statistics)")
    solve.add_argument("--out", required=True, help="output model store")
    solve.add_argument(
        "--field", type=int, help="odd receptive field r, up to the store's (default)"
    )
    solve.add_argument(
        "--lam",
        type=_lam,
        default=0.4,
        help="ridge penalty, or gcv / loo: chosen per pixel (loo reads the images "
        "again)",
    )
    solve.add_argument(
        "--lam-grid", type=float, nargs="+", help="penalties for --lam gcv|loo"
    )
    solve.add_argument(
        "--exclude-folds", type=int, nargs="+", default=[], metavar="FOLD",
        help="leave these folds' subjects out",
    )  # fmt: skip
    solve.add_argument("--overwrite", action="store_true")
    _add_cluster_options(solve)

    update = sub.add_parser(
        "update", help="add a dataset's new subjects to a statistics store"
    )
    update.add_argument("statistics", help="statistics store to add to")
    update.add_argument("dataset", help="dataset store with the new subjects")
    update.add_argument("--split", default="train", help="split to add ('' for all)")
    _add_cluster_options(update)


def run_solve(args: argparse.Namespace) -> None:
    from dmask.io.stores import prepare_output
    from dmask.statistics import open_statistics, solve

    prepare_output(args.out, args.overwrite, inputs=[args.statistics])
    info = open_statistics(args.statistics)
    with _cluster(args) as client:
        started = time.perf_counter()
        model = solve(
            info, args.field, args.lam, lam_grid=args.lam_grid,
            exclude_folds=args.exclude_folds, store=args.out, overwrite=True,
        )  # fmt: skip
        height, width = model.image_shape
        _summary(
            client, started, field=model.field, targets=len(model.targets),
            training_pairs=model.dataset.attrs["n_samples"],
            problems_solved=height * width * model.channels * len(model.targets),
        )  # fmt: skip
    print(f"model: {args.out}")


def run_update(args: argparse.Namespace) -> None:
    from dmask.io.locations import same_store
    from dmask.statistics import open_statistics, update

    before = open_statistics(args.statistics)
    if same_store(args.dataset, args.statistics):
        raise DmaskError("the dataset and the statistics store are the same path")
    with _cluster(args) as client:
        started = time.perf_counter()
        info = update(args.statistics, args.dataset, split=args.split or None)
        _summary(
            client, started, subjects_added=len(info.subjects) - len(before.subjects),
            subjects=len(info.subjects), folds=info.folds,
        )  # fmt: skip
    print(f"statistics: {args.statistics}")
