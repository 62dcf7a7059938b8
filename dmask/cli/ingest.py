"""dmask ingest: a folder of face photographs into a dataset store."""

from __future__ import annotations

import argparse
import sys
import time

from dmask.cli.common import (
    _add_cluster_options,
    _add_crop_option,
    _add_overwrite_option,
    _add_resize_option,
    _cluster,
    _fraction,
    _image_size,
    _summary,
    add_command,
    renamed,
    size_option,
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ingest = add_command(
        sub,
        "ingest",
        "turn a folder of face photographs into a dataset store",
        [
            "dmask ingest ~/KDEF --out kdef.zarr --size 128",
            "dmask ingest dataset/ --out ref.zarr --resize bilinear   "
            "# the reference's trainA/trainB tree",
            "dmask ingest photos/ --out faces.zarr --layout manifest --manifest "
            "faces.csv --crop align",
        ],
    )
    ingest.add_argument(
        "folder", help="folder of images (KDEF, RaFD, trainA/trainB, train/trainA)"
    )
    ingest.add_argument("--out", required=True, help="output dataset store")
    ingest.add_argument(
        "--layout",
        default="auto",
        choices=["auto", "kdef", "rafd", "pairs", "manifest"],
        help="file naming scheme; auto: found from the names",
    )
    ingest.add_argument(
        "--manifest", metavar="CSV", help="CSV file: path,subject,expression[,split]"
    )
    size_option(
        ingest, "height and width of the faces; one number: square (default: 128)"
    )
    _add_crop_option(
        ingest,
        "auto: square images up to 2x the size whole, else the face box; align: "
        "every face moved by its landmarks to their mean position; detect: the "
        "face box; center: the centred square; none: the whole image",
    )
    _add_resize_option(ingest, "how faces are resized (bilinear, area: as OpenCV's)")
    ingest.add_argument(
        "--margin",
        type=float,
        default=0.25,
        metavar="FRACTION",
        help="margin around a found face box, a fraction of its size",
    )
    ingest.add_argument(
        "--channels",
        type=int,
        choices=[1, 3],
        help="force grey (1) or colour (3) (default: the images')",
    )
    ingest.add_argument(
        "--target",
        default="happy",
        metavar="NAME",
        help="the pairs layout: the expression of trainB/ and testB/",
    )
    renamed(ingest, "--target-expression", "--target", "target")
    ingest.add_argument(
        "--seed", type=int, default=0, metavar="N", help="train/test split seed"
    )
    ingest.add_argument(
        "--test-fraction",
        type=_fraction,
        default=0.25,
        metavar="FRACTION",
        help="subjects held out for testing, where the layout does not say",
    )
    _add_overwrite_option(ingest)
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
            target_expression=args.target,
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
