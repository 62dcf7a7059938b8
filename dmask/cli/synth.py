"""dmask synth: a synthetic paired-face dataset."""

from __future__ import annotations

import argparse
import time

from dmask.cli.common import _add_cluster_options, _cluster, _positive_int, _summary


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    synth = sub.add_parser("synth", help="generate a synthetic paired-face dataset")
    synth.add_argument("--out", required=True, help="output dataset store")
    synth.add_argument("--subjects", type=_positive_int, default=160)
    synth.add_argument("--size", type=_positive_int, default=128, help="image height")
    synth.add_argument(
        "--width", type=_positive_int, help="image width (default: size)"
    )
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--test-fraction", type=float, default=0.25)
    synth.add_argument("--overwrite", action="store_true")
    _add_cluster_options(synth)


def run(args: argparse.Namespace) -> None:
    from dmask.datasets.synthetic import make_synthetic_dataset

    shape = (args.size, args.width or args.size)
    with _cluster(args) as client:
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
