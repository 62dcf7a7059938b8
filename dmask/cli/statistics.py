"""dmask solve and dmask update: models from a statistics store, and adding to it."""

from __future__ import annotations

import argparse
import time

from dmask.cli.common import (
    _add_cluster_options,
    _add_overwrite_option,
    _cluster,
    _every,
    _field,
    _lam,
    _positive_float,
    _summary,
    add_command,
    every_option,
    numbers_option,
)
from dmask.errors import DmaskError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    solve = add_command(
        sub,
        "solve",
        "build a model from a statistics store (no images read)",
        [
            "dmask solve stats.zarr --field 5 --lam 1 --out model-r5.zarr",
            "dmask solve stats.zarr --lam gcv --lam-grid 0.1 1 10 --out gcv.zarr",
            "dmask solve stats.zarr --exclude-folds 0 --out without-0.zarr",
        ],
    )
    solve.add_argument("statistics", help="statistics store (train --keep-statistics)")
    solve.add_argument("--out", required=True, help="output model store")
    solve.add_argument(
        "--field",
        type=_field,
        metavar="R",
        help="odd receptive field r, up to the store's (default: the store's)",
    )
    solve.add_argument(
        "--lam",
        type=_lam,
        default=0.4,
        metavar="LAM",
        help="ridge penalty, or gcv / loo: chosen per pixel (loo reads the images "
        "again)",
    )
    numbers_option(
        solve,
        "--lam-grid",
        _positive_float,
        "penalties for --lam gcv|loo (default: 13 from 1e-3 to 1e3, and 0.4)",
        metavar="LAM",
    )
    numbers_option(
        solve, "--exclude-folds", _fold, "leave these folds' subjects out",
        default=[], metavar="FOLD",
    )  # fmt: skip
    _add_overwrite_option(solve)
    _add_cluster_options(solve)

    update = add_command(
        sub,
        "update",
        "add a dataset's new subjects to a statistics store",
        ["dmask update stats.zarr new-faces.zarr", "dmask update stats.zarr more.zarr "
         "--split all"],
    )  # fmt: skip
    update.add_argument("statistics", help="statistics store to add to")
    update.add_argument("dataset", help="dataset store with the new subjects")
    every_option(update, "--split", "train", "split to add, or all")
    _add_cluster_options(update)


def _fold(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a fold number >= 0, got {text}")
    return value


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
        info = update(args.statistics, args.dataset, split=_every(args.split))
        _summary(
            client, started, subjects_added=len(info.subjects) - len(before.subjects),
            subjects=len(info.subjects), folds=info.folds,
        )  # fmt: skip
    print(f"statistics: {args.statistics}")
