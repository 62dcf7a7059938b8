"""dmask tune: sweep r and lambda on held-out subjects."""

from __future__ import annotations

import argparse
import time

from dmask.cli.common import (
    _add_cluster_options,
    _at_least_two,
    _check_writable,
    _cluster,
    _field,
    _images_bytes,
    _lam,
    _positive_int,
    _summary,
    add_command,
    names_option,
    numbers_option,
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tune = add_command(
        sub,
        "tune",
        "sweep r and lambda, scored on held-out subjects",
        [
            "dmask tune faces.zarr --fields 1 3 5 7 --lams 0.1 0.4 1 gcv --json t.json",
            "dmask tune faces.zarr --fields 1 3 5 7 --lams 0.1 0.4 1 --folds 5   "
            "# k-fold CV",
            "dmask tune faces.zarr --fields 1 3 5 --statistics stats.zarr   "
            "# sweep from one pass",
        ],
    )
    tune.add_argument("dataset", help="dataset store")
    tune.add_argument(
        "--source", default="neutral", metavar="NAME", help="source expression"
    )
    names_option(
        tune,
        "--targets",
        "target expressions, space-separated (default: every other one)",
    )
    numbers_option(
        tune, "--fields", _field, "receptive fields r to try", default=[1, 3, 5, 7],
        metavar="R",
    )  # fmt: skip
    numbers_option(
        tune, "--lams", _lam, "penalties to try (gcv, loo: chosen per pixel)",
        default=[0.01, 0.1, 0.4, 1.0, 4.0, 10.0], metavar="LAM",
    )  # fmt: skip
    numbers_option(
        tune, "--sizes", _positive_int,
        "also: test MSE against these training sizes N (MR, full ridge)", metavar="N",
    )  # fmt: skip
    tune.add_argument(
        "--statistics",
        metavar="STATS",
        help="solve every setting from this statistics store (kept first if absent)",
    )
    tune.add_argument(
        "--folds",
        type=_at_least_two,
        metavar="K",
        help="subject-level k-fold cross-validation on the training subjects",
    )
    tune.add_argument("--json", metavar="FILE", help="write the sweep's rows here")
    tune.add_argument("--csv", metavar="FILE", help="write the sweep's rows here")
    tune.add_argument(
        "--size-json", metavar="FILE", help="write the N curve's rows here"
    )
    _add_cluster_options(tune)


def run(args: argparse.Namespace) -> None:
    from dmask.evaluation.metrics import write_results
    from dmask.evaluation.tune import best_setting, training_size_curve, tune
    from dmask.io.dataset_store import open_dataset

    _check_writable(args.csv, args.json, args.size_json)
    ds = open_dataset(args.dataset)
    with _cluster(args, _images_bytes(ds)) as client:
        started = time.perf_counter()
        rows = tune(
            ds,
            source=args.source,
            targets=args.targets or None,
            fields=tuple(args.fields),
            lams=tuple(args.lams),
            statistics=args.statistics,
            folds=args.folds,
        )
        means = [r for r in rows if r["expression"] == "mean"]
        spread = "folds" in means[0]
        lams = [str(r["lam"]) for r in means]
        for i, row in enumerate(means):
            if row.get("lam_median") is not None:  # gcv/loo: the median chosen
                lams[i] += f" (median {row['lam_median']:.3g})"
        width = max(8, *(len(lam) for lam in lams))
        print(
            f"{'r':>3} {'lambda':>{width}} {'MSE':>10}"
            + (f" {'MSE sd':>9}" if spread else "")
            + f" {'PSNR':>7}"
        )
        for row, lam in zip(means, lams, strict=True):
            print(
                f"{row['field']:>3} {lam:>{width}} {row['mse']:>10.5f}"
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
                targets=args.targets or None,
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
