"""dmask synth: a synthetic paired-face dataset."""

from __future__ import annotations

import argparse
import time

from dmask.cli.common import (
    _add_cluster_options,
    _add_overwrite_option,
    _cluster,
    _fraction,
    _image_size,
    _positive_int,
    _summary,
    add_command,
    renamed,
    size_option,
)
from dmask.errors import UsageError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    synth = add_command(
        sub,
        "synth",
        "generate a synthetic paired-face dataset",
        [
            "dmask synth --out faces.zarr",
            "dmask synth --out faces.zarr --subjects 30 --size 64 --in-process",
            "dmask synth --out wide.zarr --size 128 96 --seed 1",
        ],
        description="Generate a synthetic paired-face dataset: every subject "
        "drawn with 7 expressions (neutral, happy, sad, surprised, angry, "
        "afraid, disgusted).",
    )
    synth.add_argument("--out", required=True, help="output dataset store")
    synth.add_argument(
        "--subjects", type=_positive_int, default=160, metavar="N", help="subjects"
    )
    size_option(synth, "image height and width; one number: square (default: 128)")
    renamed(synth, "--width", "--size H W", "width", type=_positive_int)
    synth.add_argument("--seed", type=int, default=0, metavar="N", help="random seed")
    synth.add_argument(
        "--test-fraction",
        type=_fraction,
        default=0.25,
        metavar="FRACTION",
        help="subjects held out in the test split",
    )
    _add_overwrite_option(synth)
    _add_cluster_options(synth)


def run(args: argparse.Namespace) -> None:
    from dmask.datasets.synthetic import make_synthetic_dataset

    shape = _image_size(args.size, 128)
    width = getattr(args, "width", None)  # the old --width W
    if width is not None:
        if args.size is not None and args.size[0] != args.size[1]:
            raise UsageError("give --size H W, not --size H W and --width")
        shape = (shape[0], width)
    with _cluster(args, args.subjects * 7 * shape[0] * shape[1] * 3) as client:
        started = time.perf_counter()
        ds = make_synthetic_dataset(
            args.out,
            args.subjects,
            shape,
            args.seed,
            args.test_fraction,
            args.overwrite,
        )
        _summary(client, started, images=ds.sizes["sample"], store=args.out)
