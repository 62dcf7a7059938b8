"""dmask evaluate: MSE and PSNR against baselines."""

from __future__ import annotations

import argparse

from dmask.cli.common import (
    _add_cluster_options,
    _check_writable,
    _cluster,
    _images_bytes,
    add_command,
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    evaluate = add_command(
        sub,
        "evaluate",
        "MSE and PSNR of a model against baselines on held-out subjects",
        [
            "dmask evaluate model.zarr faces.zarr",
            "dmask evaluate model.zarr faces.zarr --csv e.csv --json e.json",
        ],
    )
    evaluate.add_argument("model", help="model store")
    evaluate.add_argument("dataset", help="dataset store")
    evaluate.add_argument(
        "--source", default="neutral", metavar="NAME", help="source expression"
    )
    evaluate.add_argument(
        "--split", default="test", metavar="NAME", help="held-out split scored"
    )
    evaluate.add_argument("--csv", metavar="FILE", help="write the table as CSV here")
    evaluate.add_argument("--json", metavar="FILE", help="write the table as JSON here")
    _add_cluster_options(evaluate)


def run(args: argparse.Namespace) -> None:
    from dmask.evaluation.evaluate import evaluate, format_evaluation
    from dmask.evaluation.metrics import write_results
    from dmask.io.dataset_store import open_dataset
    from dmask.model import open_model

    _check_writable(args.csv, args.json)
    model = open_model(args.model)
    ds = open_dataset(args.dataset)
    with _cluster(args, _images_bytes(ds)):
        rows = evaluate(model, ds, source=args.source, split=args.split)
    print(format_evaluation(rows))
    write_results(rows, args.csv, args.json)
    for path in (args.csv, args.json):
        if path:
            print(f"written: {path}")
