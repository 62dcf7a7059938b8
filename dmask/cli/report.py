"""dmask report: one self-contained HTML report."""

from __future__ import annotations

import argparse

from dmask.cli.common import (
    _add_cluster_options,
    _add_crop_option,
    _add_overwrite_option,
    _add_resize_option,
    _check_folders,
    _check_writable,
    _cluster,
    _json_rows,
    _positive_int,
    add_command,
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    report = add_command(
        sub,
        "report",
        "one self-contained HTML report of a model",
        [
            "dmask report model.zarr faces.zarr --out report.html",
            "dmask report model.zarr faces.zarr --out report.html --comparison "
            "c.json --tuning t.json --size-curve n.json",
            "dmask report model.zarr faces.zarr --out report.html --photographs "
            "photos/ synthesised/",
        ],
    )
    report.add_argument("model", help="model store")
    report.add_argument("dataset", help="dataset store")
    report.add_argument("--out", required=True, help="output HTML file")
    report.add_argument(
        "--source", default="neutral", metavar="NAME", help="source expression"
    )
    report.add_argument(
        "--split", default="test", metavar="NAME", help="held-out split shown"
    )
    report.add_argument(
        "--subjects",
        type=_positive_int,
        default=4,
        metavar="N",
        help="held-out subjects shown in the grids",
    )
    report.add_argument(
        "--comparison", metavar="JSON", help="rows from dmask compare --json"
    )
    report.add_argument("--tuning", metavar="JSON", help="rows from dmask tune --json")
    report.add_argument(
        "--size-curve",
        metavar="JSON",
        help="rows of MSE against N, from dmask tune --size-json",
    )
    report.add_argument(
        "--photographs",
        nargs=2,
        metavar=("FOLDER", "SYNTHESISED"),
        help="a folder given to dmask apply, and that run's output folder",
    )
    _add_resize_option(report, "the --resize of that dmask apply run (its inputs)")
    _add_crop_option(
        report,
        "the --crop of that dmask apply run (retakes its aligned crops where "
        "it wrote none, as --output photo does)",
    )
    _add_overwrite_option(report, "replace an existing report file")
    _add_cluster_options(report)


def run(args: argparse.Namespace) -> None:
    from dmask.apply.folder import read_synthesised
    from dmask.io.dataset_store import open_dataset
    from dmask.model import open_model
    from dmask.report.page import write_report

    _check_writable(args.out)
    _check_folders(*(args.photographs or ()))
    model = open_model(args.model)
    ds = open_dataset(args.dataset)
    comparison = _json_rows(args.comparison)
    tuning = _json_rows(args.tuning)
    size_curve = _json_rows(args.size_curve)
    with _cluster(args):
        photographs = (
            read_synthesised(
                model, *args.photographs, resize=args.resize, crop=args.crop
            )
            if args.photographs
            else None
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
