"""dmask train: fit a model from a dataset store."""

from __future__ import annotations

import argparse
import time

from dmask.cli.common import (
    _add_cluster_options,
    _add_overwrite_option,
    _cluster,
    _every,
    _field,
    _images_bytes,
    _lam,
    _positive_float,
    _positive_int,
    _summary,
    add_command,
    every_option,
    names_option,
    numbers_option,
)
from dmask.errors import DmaskError, UsageError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    train = add_command(
        sub,
        "train",
        "train a model from a dataset store",
        [
            "dmask train faces.zarr --out model.zarr",
            "dmask train faces.zarr --out model.zarr --field 5 --lam gcv "
            "--targets happy sad",
            "dmask train faces.zarr --out model.zarr --resume    # after a crash "
            "or Ctrl-C",
        ],
    )
    train.add_argument("dataset", help="dataset store (dmask synth or dmask ingest)")
    train.add_argument("--out", required=True, help="output model store")
    train.add_argument(
        "--source", default="neutral", metavar="NAME", help="source expression"
    )
    names_option(
        train,
        "--targets",
        "target expressions, space-separated (default: every other one)",
    )
    every_option(train, "--split", "train", "training split, or all")
    train.add_argument(
        "--field", type=_field, default=3, metavar="R", help="odd receptive field r"
    )
    train.add_argument(
        "--lam",
        type=_lam,
        default=0.4,
        metavar="LAM",
        help="ridge penalty, or loo / gcv: chosen per pixel from --lam-grid",
    )
    numbers_option(
        train,
        "--lam-grid",
        _positive_float,
        "penalties for --lam loo|gcv (default: 13 from 1e-3 to 1e3, and 0.4)",
        metavar="LAM",
    )
    train.add_argument(
        "--normalize",
        default="minmax",
        choices=["minmax", "none"],
        help="scale each image over all its channels to [0, 1], or not",
    )
    train.add_argument(
        "--tile",
        type=_positive_int,
        nargs=2,
        metavar=("H", "W"),
        help="tile shape (default: from the workers' memory)",
    )
    train.add_argument(
        "--sample-block",
        type=_positive_int,
        metavar="N",
        help="samples per task (default: from the workers' memory)",
    )
    train.add_argument(
        "--method",
        default="auto",
        choices=["auto", "covariance", "displacement"],
        help="how statistics are accumulated; the same model either way",
    )
    train.add_argument(
        "--channels",
        default="independent",
        choices=["independent", "joint"],
        help="each output channel reads its own channel's window, or every channel's",
    )
    train.add_argument(
        "--weights-dtype",
        default="float64",
        choices=["float64", "float32"],
        help="what the store holds the weights as: float64 (exact) or float32 (half "
        "the size, for batch synthesis)",
    )
    _add_overwrite_option(train)
    train.add_argument(
        "--resume",
        action="store_true",
        help="finish an interrupted run: solve only the tiles not yet written",
    )
    kept = train.add_argument_group("statistics")
    kept.add_argument(
        "--keep-statistics",
        metavar="STATS",
        help="also keep the sums in this statistics store (dmask solve, tune, update)",
    )
    kept.add_argument(
        "--statistics-field",
        type=_field,
        metavar="R",
        help="largest field the kept statistics serve (default: --field)",
    )
    kept.add_argument(
        "--statistics-folds",
        type=_positive_int,
        default=1,
        metavar="K",
        help="subject folds kept apart, for cross-validation",
    )
    _add_cluster_options(train)


def run(args: argparse.Namespace) -> None:
    from dmask.checks import check_settings
    from dmask.core.planning import check_field, plan_tiles, tile_grid
    from dmask.datasets.drawing import EXPRESSIONS
    from dmask.io.dataset_store import open_dataset, other_expressions, stored_pairs
    from dmask.io.locations import same_store
    from dmask.io.model_store import read_model_progress
    from dmask.io.stores import prepare_output
    from dmask.model import fit

    check_settings(args.field, args.lam, args.normalize)
    if args.resume and args.overwrite:
        raise UsageError("give --resume or --overwrite, not both")
    if not args.resume:
        prepare_output(args.out, args.overwrite, inputs=[args.dataset])
    elif same_store(args.out, args.dataset):
        raise DmaskError(f"output store {args.out} is the dataset; choose another")
    if args.keep_statistics:
        if args.resume:
            raise UsageError("--resume is not available with --keep-statistics")
        if args.weights_dtype != "float64":
            raise UsageError(
                "--weights-dtype float32 is not available with --keep-statistics"
            )
        if same_store(args.keep_statistics, args.out):
            raise DmaskError("--keep-statistics and --out are the same store")
        prepare_output(args.keep_statistics, args.overwrite, inputs=[args.dataset])
    elif args.statistics_field is not None or args.statistics_folds != 1:
        raise UsageError(
            "--statistics-field and --statistics-folds need --keep-statistics"
        )
    ds = open_dataset(args.dataset)
    targets = args.targets or None
    if targets is None:
        present = other_expressions(ds, args.source)
        targets = [e for e in EXPRESSIONS if e in present] + [
            e for e in present if e not in EXPRESSIONS
        ]
    sources, target_arrays = stored_pairs(ds, args.source, targets, _every(args.split))
    before = read_model_progress(args.out) if args.resume else None
    check_field(args.field, sources.shape[1:3], f"images of {args.dataset}")
    with _cluster(args, _images_bytes(ds)) as client:
        started = time.perf_counter()
        if args.keep_statistics:
            model = _train_keeping(args, ds, targets)
        else:
            model = fit(
                sources,
                target_arrays,
                field=args.field,
                lam=args.lam,
                normalize=args.normalize,
                store=args.out,
                overwrite=True,
                tile_shape=tuple(args.tile) if args.tile else None,
                sample_block=args.sample_block,
                method=args.method,
                resume=args.resume,
                lam_grid=args.lam_grid,
                landmarks=ds.attrs.get("landmarks"),
                channels=args.channels,
                weights_dtype=args.weights_dtype,
            )
        height, width = model.image_shape
        pixels = height * width * model.channels * len(model.targets)
        grid = tile_grid(model.image_shape, model.tile_shape)
        if before is not None and before.tile_complete.shape == grid:
            # a resumed run solved only the tiles left
            done = [
                t for t in plan_tiles(model.image_shape, model.tile_shape)
                if before.tile_complete[t.index]
            ]  # fmt: skip
            pixels -= sum(t.pixels for t in done) * model.channels * len(model.targets)
        wall = time.perf_counter() - started
        _summary(
            client,
            started,
            targets=len(model.targets),
            training_pairs=sources.shape[0],
            tiles=grid[0] * grid[1],
            problems_solved=pixels,
            throughput=f"{pixels / max(wall, 1e-9):.0f} problems/s",
        )
    print(f"model: {args.out}")


def _train_keeping(args: argparse.Namespace, ds: object, targets: list[str]) -> object:
    """Keep the dataset's sums in --keep-statistics, then solve the model from them."""
    from dmask.statistics import keep_statistics, solve

    info = keep_statistics(
        ds, args.keep_statistics, source=args.source, targets=targets,
        field=args.statistics_field or args.field, folds=args.statistics_folds,
        split=_every(args.split), normalize=args.normalize, overwrite=args.overwrite,
        tile_shape=tuple(args.tile) if args.tile else None,
        sample_block=args.sample_block, channels=args.channels,
    )  # fmt: skip
    print(f"statistics: {args.keep_statistics}")
    return solve(
        info, args.field, args.lam, lam_grid=args.lam_grid, store=args.out,
        overwrite=True,
    )  # fmt: skip
