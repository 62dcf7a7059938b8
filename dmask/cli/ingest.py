"""dmask ingest: a folder of face photographs into a dataset store."""

from __future__ import annotations

import argparse
import sys
import time

from dmask.cli.common import (
    _add_cluster_options,
    _add_crop_option,
    _add_resize_option,
    _cluster,
    _image_size,
    _positive_int,
    _summary,
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ingest = sub.add_parser(
        "ingest", help="turn a folder of face photographs into a dataset store"
    )
    ingest.add_argument(
        "folder", help="folder of images (KDEF, RaFD, trainA/trainB, train/trainA)"
    )
    ingest.add_argument("--out", required=True, help="output dataset store")
    ingest.add_argument(
        "--layout",
        default="auto",
        choices=["auto", "kdef", "rafd", "pairs", "manifest"],
        help="file naming scheme (default: detected)",
    )
    ingest.add_argument("--manifest", help="CSV: path,subject,expression[,split]")
    ingest.add_argument(
        "--size", type=_positive_int, nargs="+", metavar="N", help="H [W] (default 128)"
    )
    _add_crop_option(
        ingest,
        "auto (default): square images up to 2x the size whole, else the "
        "face box; align: every face moved by its landmarks to their mean position",
    )
    _add_resize_option(ingest, "lanczos (default), or bilinear/area as OpenCV's")
    ingest.add_argument("--margin", type=float, default=0.25, help="around a face")
    ingest.add_argument("--channels", type=int, choices=[1, 3], help="force 1 or 3")
    ingest.add_argument(
        "--target-expression",
        default="happy",
        help="expression of trainB/ in the pairs layout",
    )
    ingest.add_argument("--seed", type=int, default=0, help="train/test split seed")
    ingest.add_argument("--test-fraction", type=float, default=0.25)
    ingest.add_argument("--overwrite", action="store_true")
    _add_cluster_options(ingest)


def run(args: argparse.Namespace) -> None:
    from dmask.datasets.ingest import ingest

    with _cluster(args) as client:
        started = time.perf_counter()
        report = ingest(
            args.folder,
            args.out,
            layout=args.layout,
            manifest=args.manifest,
            size=_image_size(args.size, 128),
            crop=args.crop,
            margin=args.margin,
            channels=args.channels,
            target_expression=args.target_expression,
            seed=args.seed,
            test_fraction=args.test_fraction,
            overwrite=args.overwrite,
            resize=args.resize,
        )
        problems = report.lines[:-1]
        for line in problems[:20]:
            print(f"  {line}", file=sys.stderr)
        if len(problems) > 20:
            print(
                f"  ... {len(problems) - 20} more in {report.report_path}",
                file=sys.stderr,
            )
        if problems:
            print(
                f"{report.left_out()} (report: {report.report_path})", file=sys.stderr
            )
        print(report.summary())
        wall = time.perf_counter() - started
        _summary(
            client,
            started,
            images=report.taken,
            throughput=f"{report.files / max(wall, 1e-9):.1f} files/s",
        )
    print(f"dataset: {args.out}")
