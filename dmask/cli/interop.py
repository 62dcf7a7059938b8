"""dmask export and dmask import: the reference implementation's format."""

from __future__ import annotations

import argparse
from typing import Any

from dmask.cli.common import (
    _add_overwrite_option,
    _field,
    _image_size,
    _positive_float,
    _positive_int,
    add_command,
    names_option,
    renamed,
    size_option,
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    export = add_command(
        sub,
        "export",
        "write a model in the reference implementation's format",
        [
            "dmask export model.zarr --out ref/ --targets happy",
            "dmask export model.zarr --out ref2/ --naming reference   "
            "# mr_weights_<date>_1..3, BGR",
        ],
    )
    export.add_argument("model", help="model store")
    export.add_argument("--out", required=True, help="output folder")
    export.add_argument(
        "--format",
        default="reference",
        choices=["reference"],
        help="file format: the reference's scipy.sparse CSR matrices",
    )
    names_option(export, "--targets", "targets to export (default: all of them)")
    renamed(export, "--target", "--targets", "targets", convert=lambda v: [v])
    export.add_argument(
        "--channel-order",
        choices=["rgb", "bgr"],
        help="order of the per-channel files: bgr is the reference's (it reads "
        "images with OpenCV, so its file 1 is blue); default bgr with "
        "--naming reference, else rgb",
    )
    export.add_argument(
        "--naming",
        choices=["dmask", "reference"],
        default="dmask",
        help="file names: channel_<i>.npz, or the reference's "
        "mr_weights_<date>_<i>.npz (i from 1)",
    )
    _add_overwrite_option(export, "replace an existing output folder")

    import_ = add_command(
        sub,
        "import",
        "read a reference-format model into a model store",
        [
            "dmask import ref/ --out imported.zarr     # a dmask export (its manifest)",
            "dmask import ref2/happy/mr_weights_*_{1,2,3}.npz --out ref.zarr "
            "--target happy --size 128",
            "dmask import omp_weights.npz --out omp.zarr --size 128   "
            "# one file for R, G and B",
        ],
    )
    import_.add_argument(
        "source",
        nargs="+",
        help="export folder, or one .npz file per channel (in --channel-order), "
        "or one file for every channel",
    )
    import_.add_argument("--out", required=True, help="output model store")
    import_.add_argument(
        "--format",
        default="reference",
        choices=["reference"],
        help="file format: the reference's scipy.sparse CSR matrices",
    )
    size_option(
        import_,
        "height and width of the images; one number: square (default: the "
        "export's, else a square found from the matrices)",
    )
    import_.add_argument(
        "--field",
        type=_field,
        metavar="R",
        help="receptive field r (default: found from the weights)",
    )
    import_.add_argument(
        "--target",
        default="target",
        metavar="NAME",
        help=".npz files: the name of the target they hold",
    )
    import_.add_argument(
        "--lam", type=_positive_float, help="ridge penalty, for the record"
    )
    import_.add_argument(
        "--normalize",
        choices=["minmax", "none"],
        help="input normalisation (default: the export's, else minmax)",
    )
    import_.add_argument(
        "--kind",
        choices=["auto", "field", "sparse"],
        default="auto",
        help="an r x r field, or sparse slots (auto: a field when the fullest "
        "row fills a quarter of the r x r window the weights span)",
    )
    import_.add_argument(
        "--channel-order",
        choices=["rgb", "bgr"],
        help="image channel of each file in the order given: bgr (default for "
        "files) is the reference's OpenCV order, _1 blue, _2 green, _3 red; "
        "an export folder's manifest says its own",
    )
    import_.add_argument(
        "--shared-channels",
        action="store_true",
        help="one file applied to every channel (the default for one file)",
    )
    import_.add_argument(
        "--channels",
        type=_positive_int,
        metavar="N",
        help="channels of the images (one file: 3 by default, 1 for greyscale)",
    )
    _add_overwrite_option(import_)


def run_export(args: argparse.Namespace) -> None:
    from dmask.interop import export_reference
    from dmask.model import open_model

    written = export_reference(
        open_model(args.model),
        args.out,
        target=args.targets or None,
        overwrite=args.overwrite,
        channel_order=args.channel_order,
        naming=args.naming,
    )
    print(f"reference-format model: {args.out} ({len(written)} files)")


def run_import(args: argparse.Namespace) -> None:
    import os

    from dmask.errors import UsageError
    from dmask.interop import import_reference
    from dmask.io.stores import prepare_output

    if args.shared_channels and len(args.source) != 1:
        raise UsageError(
            f"--shared-channels takes one weight file, got {len(args.source)}"
        )
    if args.shared_channels and args.channels == 1:
        raise UsageError("--shared-channels with --channels 1: nothing to share")
    prepare_output(args.out, args.overwrite, inputs=args.source)
    channels = args.channels
    if args.shared_channels and channels is None:
        channels = 3
    if len(args.source) == 1 and os.path.isdir(args.source[0]):
        source: Any = args.source[0]
        targets = None
    else:
        source = list(args.source)
        targets = [args.target]
    model = import_reference(
        source,
        image_shape=_image_size(args.size, None),
        field=args.field,
        targets=targets,
        lam=args.lam,
        normalize=args.normalize,
        kind=args.kind,
        channel_order=args.channel_order,
        channels=channels,
    )
    model.save(args.out, overwrite=True)
    print(f"model: {args.out} ({model})")
