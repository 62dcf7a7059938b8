"""dmask tune: sweep r and lambda on held-out subjects."""

from __future__ import annotations

import argparse
import time

from dmask.cli.common import (
    _add_cluster_options,
    _check_writable,
    _cluster,
    _lam,
    _split_names,
    _summary,
)
from dmask.errors import DmaskError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    tune.add_argument(
        "--statistics",
        metavar="STATS",
        help="solve every setting from this statistics store (kept first if absent)",
    )
    tune.add_argument(
        "--folds",
        type=int,
        metavar="K",
        help="subject-level k-fold cross-validation on the training subjects",
    )
    tune.add_argument("--json", help="write the sweep's rows here")
    tune.add_argument("--csv", help="write the sweep's rows here")
    tune.add_argument("--size-json", help="write the N curve's rows here")
    _add_cluster_options(tune)


def run(args: argparse.Namespace) -> None:
    from dmask.evaluation.metrics import write_results
    from dmask.evaluation.tune import best_setting, training_size_curve, tune
    from dmask.io.dataset_store import open_dataset

    _check_writable(args.csv, args.json, args.size_json)
    if args.folds is not None and args.folds < 2:
        raise DmaskError(f"--folds must be at least 2, got {args.folds}")
    if args.sizes and min(args.sizes) < 1:
        raise DmaskError(f"--sizes must be positive, got {min(args.sizes)}")
    ds = open_dataset(args.dataset)
    with _cluster(args) as client:
        started = time.perf_counter()
        rows = tune(
            ds,
            source=args.source,
            targets=_split_names(args.targets),
            fields=tuple(args.fields),
            lams=tuple(args.lams),
            statistics=args.statistics,
            folds=args.folds,
        )
        means = [r for r in rows if r["expression"] == "mean"]
        spread = "folds" in means[0]
        print(
            f"{'r':>3} {'lambda':>8} {'MSE':>10}"
            + (f" {'MSE sd':>9}" if spread else "")
            + f" {'PSNR':>7}"
        )
        for row in means:
            print(
                f"{row['field']:>3} {row['lam']!s:>8} {row['mse']:>10.5f}"
                + (f" {row['mse_std']:>9.5f}" if spread else "")
                + f" {row['psnr']:>7.2f}{'  best' if row.get('best') else ''}"
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
