"""dmask evaluate: MSE and PSNR against baselines."""

from __future__ import annotations

import argparse

from dmask.cli.common import _add_cluster_options, _check_writable, _cluster


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    evaluate = sub.add_parser("evaluate", help="MSE and PSNR against baselines")
    evaluate.add_argument("model", help="model store")
    evaluate.add_argument("dataset", help="dataset store")
    evaluate.add_argument("--source", default="neutral")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--csv", help="write the table as CSV here")
    evaluate.add_argument("--json", help="write the table as JSON here")
    _add_cluster_options(evaluate)


def run(args: argparse.Namespace) -> None:
    from dmask.evaluation.evaluate import evaluate, format_evaluation
    from dmask.evaluation.metrics import write_results
    from dmask.io.dataset_store import open_dataset
    from dmask.model import open_model

    _check_writable(args.csv, args.json)
    model = open_model(args.model)
    ds = open_dataset(args.dataset)
    with _cluster(args):
        rows = evaluate(model, ds, source=args.source, split=args.split)
    print(format_evaluation(rows))
    write_results(rows, args.csv, args.json)
    for path in (args.csv, args.json):
        if path:
            print(f"written: {path}")
