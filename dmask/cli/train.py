"""dmask train: fit a model from a dataset store."""

from __future__ import annotations

import argparse
import time

from dmask.cli.common import (
    _add_cluster_options,
    _add_overwrite_option,
    _check_writable,
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
    planning = train.add_argument_group(
        "dry run", "what the run would do, from the dataset's metadata alone"
    )
    planning.add_argument(
        "--plan",
        action="store_true",
        help="print the tiles, sample blocks, tasks, memory per task, model size "
        "and an estimated time for --workers, and stop: no image read, no cluster "
        "started, nothing written",
    )
    planning.add_argument(
        "--plan-rates",
        metavar="FILE",
        help="JSON of the rates to estimate with (statistics_flops, combine_flops, "
        "solve_flops, read_bytes, write_bytes per thread per second, "
        "task_overhead in s; default: measured here in a few seconds)",
    )
    planning.add_argument(
        "--json", metavar="FILE", help="with --plan: also write the plan as JSON here"
    )
    _add_cluster_options(train)


def run(args: argparse.Namespace) -> None:
    from dmask.checks import check_settings
    from dmask.core.planning import check_field, plan_tiles, tile_grid
    from dmask.io.dataset_store import open_dataset, stored_pairs
    from dmask.io.locations import same_store
    from dmask.io.model_store import read_model_progress
    from dmask.io.stores import prepare_output
    from dmask.model import fit

    check_settings(args.field, args.lam, args.normalize)
    if args.plan:
        show_plan(args)
        return
    if args.plan_rates or args.json:
        raise UsageError("--plan-rates and --json go with --plan")
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
    targets = training_targets(ds, args.source, args.targets)
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


def training_targets(ds: object, source: str, given: list[str] | None) -> list[str]:
    """The targets to train: those given, else every expression but the source.

    The synthetic expressions come first, in their order, then any others.
    """
    from dmask.datasets.drawing import EXPRESSIONS
    from dmask.io.dataset_store import other_expressions

    if given:
        return list(given)
    present = other_expressions(ds, source)
    return [e for e in EXPRESSIONS if e in present] + [
        e for e in present if e not in EXPRESSIONS
    ]


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


# ------------------------------------------------------------------ --plan


def show_plan(args: argparse.Namespace) -> None:
    """``dmask train --plan``: the run's plan and estimate, from metadata alone.

    Opens the dataset lazily (its shape, chunks, dtype and coordinates; no
    image is read), plans as :func:`dmask.fit` would on the workers that
    ``--workers``, ``--threads-per-worker`` and ``--memory-limit`` describe (a
    local cluster's defaults otherwise), and prints the plan on stdout (and as
    JSON to ``--json``). No cluster is started and the output is not touched.
    """
    import json

    from dmask.cli.common import _load_config
    from dmask.core import planning
    from dmask.core.planning import check_field
    from dmask.io.dataset_store import open_dataset, pair_indices
    from dmask.options import get

    if args.resume or args.keep_statistics:
        raise UsageError("--plan shows a fresh run: give it without --resume or "
                         "--keep-statistics")  # fmt: skip
    if args.scheduler or args.scheduler_file:
        raise UsageError(
            "--plan starts and asks no cluster: describe its workers with "
            "--workers, --threads-per-worker and --memory-limit"
        )
    _check_writable(args.json)
    if args.config:
        _load_config(args.config)
    settings = _plan_settings(args)
    ds = open_dataset(args.dataset)
    targets = training_targets(ds, args.source, args.targets)
    src, tgt = pair_indices(ds, args.source, targets, _every(args.split))
    images = ds["images"]
    n_all, height, width, channels = (int(v) for v in images.shape)
    check_field(args.field, (height, width), f"images of {args.dataset}")
    chunks = tuple(int(c) for c in images.encoding.get("chunks") or images.shape)
    workers = _plan_workers(args, _images_bytes(ds))
    plan = planning.plan_for_workers(
        len(src), (height, width), channels, args.field, len(targets),
        workers["thread_memory"],
        tile_shape=tuple(args.tile) if args.tile else None,
        sample_block=args.sample_block, method=settings["method"],
        n_lams=len(settings["lam_grid"]), max_tasks=get("max-tasks"),
    )  # fmt: skip
    itemsize = int(images.dtype.itemsize)
    weights_itemsize = 4 if args.weights_dtype == "float32" else 8
    work = planning.fit_work(
        plan, channels, args.field, len(targets),
        [src, *(tgt[name] for name in targets)], (n_all, height, width, channels),
        chunks, itemsize, settings["penalty"], len(settings["lam_grid"]),
        weights_itemsize,
    )  # fmt: skip
    given = _read_rates(args.plan_rates) if args.plan_rates else {}
    needed = set(planning.Rates.names()) - {"task_overhead"}
    measured = None
    if not needed <= set(given):
        measured = measure_rates(
            args.field, channels, len(targets), plan.method, settings["penalty"],
            settings["lam_grid"], chunks, images.encoding, images.dtype,
        )  # fmt: skip
    rates = planning.Rates.from_dict(given, measured)
    if not given:
        rates_from = "measured on this machine"
    elif measured is None:
        rates_from = str(args.plan_rates)
    else:
        rates_from = f"{args.plan_rates}, the rest measured on this machine"
    seconds = planning.estimate_seconds(
        work, rates, workers["workers"], workers["threads_per_worker"]
    )
    memory = planning.task_memory_parts(
        plan, channels, args.field, len(targets), len(settings["lam_grid"])
    )
    rows, cols = planning.tile_grid((height, width), plan.tile_shape)
    result = {
        "dataset": str(args.dataset),
        "out": str(args.out),
        "image": {
            "height": height,
            "width": width,
            "channels": channels,
            "dtype": str(images.dtype),
            "itemsize": itemsize,
            "chunks": list(chunks),
        },
        "source": args.source,
        "targets": targets,
        "training_pairs": len(src),
        "field": args.field,
        "lam": args.lam,
        "lam_grid": list(settings["lam_grid"]) or None,
        "method": plan.method,
        "channels": args.channels,
        "weights_dtype": args.weights_dtype,
        "tile": {
            "shape": list(plan.tile_shape),
            "grid": [rows, cols],
            "count": len(plan.tiles),
        },
        "sample_block": {"size": plan.sample_block, "count": len(plan.blocks)},
        "tasks": {
            "bounds": work.bounds_tasks,
            "fit": work.tasks,
            "total": work.task_total,
        },
        "memory_per_task": {**memory, "thread_memory": workers["thread_memory"]},
        "model_store_bytes": work.write_bytes,
        "read_bytes": {"fit": work.read_bytes, "bounds": work.bounds_bytes},
        "flops": {
            "statistics": work.statistics_flops,
            "combine": work.combine_flops,
            "solve": work.solve_flops,
        },
        "workers": workers,
        "rates": {**dataclasses_asdict(rates), "from": rates_from},
        "estimate_seconds": seconds,
    }
    print(format_plan(result))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
        print(f"written: {args.json}")


def dataclasses_asdict(value: object) -> dict:
    """A dataclass's fields as a dict."""
    import dataclasses

    return dataclasses.asdict(value)  # type: ignore[call-overload]


def _plan_settings(args: argparse.Namespace) -> dict:
    """The fit's method and penalties as :func:`dmask.fit` settles them."""
    from dmask.checks import LAM_SELECTIONS, check_lam_grid

    method = args.method
    if args.channels == "joint":
        if method == "covariance":
            raise UsageError("the joint colour mode sums displacements: --method auto")
        method = "joint"
    penalty = args.lam if args.lam in LAM_SELECTIONS else "fixed"
    if penalty != "fixed":
        if method == "covariance":
            raise UsageError(
                f"--lam {args.lam} needs --method auto or displacement, not covariance"
            )
        method = "joint" if method == "joint" else "displacement"
        grid = check_lam_grid(args.lam_grid)
    elif args.lam_grid:
        raise UsageError("--lam-grid goes with --lam loo or gcv")
    else:
        grid = ()
    return {"method": method, "penalty": penalty, "lam_grid": tuple(grid)}


def _plan_workers(args: argparse.Namespace, input_bytes: int) -> dict:
    """The workers a run would have: as a LocalCluster lays them out.

    ``--workers``, ``--threads-per-worker`` and ``--memory-limit`` (or the
    configuration's ``cluster.*``), else distributed's defaults for this
    machine; the run's choice of threads for a small job included.
    """
    import logging
    import os

    from distributed.deploy.utils import nprocesses_nthreads
    from distributed.system import MEMORY_LIMIT
    from distributed.worker_memory import parse_memory_limit

    from dmask.cluster.clients import ClusterOptions

    options = ClusterOptions.from_config(
        n_workers=args.workers,
        threads_per_worker=args.threads_per_worker,
        memory_limit=args.memory_limit,
        processes=False if args.in_process else (True if args.processes else None),
    ).for_job(input_bytes)
    cores = os.cpu_count() or 1
    workers, threads = options.n_workers, options.threads_per_worker
    if workers is None and threads is None:
        workers, threads = nprocesses_nthreads(cores) if options.processes else (
            1, cores)  # fmt: skip
    elif workers is None:
        workers = max(1, cores // threads) if options.processes else 1
    elif threads is None:
        threads = max(1, -(-cores // workers))
    if options.memory_limit is None:
        limit = int(MEMORY_LIMIT * min(1, 1 / workers))
    else:
        try:
            limit = parse_memory_limit(
                options.memory_limit, threads, logger=logging.getLogger(__name__)
            )
        except ValueError as exc:
            raise UsageError(f"--memory-limit: {exc}") from None
        limit = int(limit or MEMORY_LIMIT)
    return {
        "workers": int(workers),
        "threads_per_worker": int(threads),
        "memory_limit": limit,
        "thread_memory": limit // threads,
    }


def _read_rates(path: str) -> dict:
    """``--plan-rates``: a JSON object of rates (:class:`dmask.core.planning.Rates`),
    a plan's JSON (its ``rates``) or pipelines/bench_large.py's (its
    ``measured_rates``); checked."""
    import json

    from dmask.core.planning import Rates

    try:
        with open(path) as handle:
            values = json.load(handle)
    except OSError as exc:
        raise DmaskError(f"cannot read rates {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise DmaskError(f"rates {path} is not valid JSON: {exc}") from None
    for key in ("rates", "measured_rates"):  # a plan's, a benchmark's JSON
        if isinstance(values, dict) and isinstance(values.get(key), dict):
            values = values[key]
            break
    if not isinstance(values, dict):
        raise DmaskError(f"rates {path} must hold a JSON object of rates")
    values = {k: v for k, v in values.items() if k != "from"}
    Rates.from_dict(values, Rates(*[1.0] * len(Rates.names())))  # checked
    return values


#: Seconds each calibration step repeats its work for, at least.
CALIBRATION_SECONDS = 0.3


def measure_rates(
    field: int,
    channels: int,
    n_targets: int,
    method: str,
    penalty: str,
    lam_grid: tuple[float, ...],
    chunks: tuple[int, ...],
    encoding: dict,
    dtype: object,
) -> object:
    """Rates of one thread here, measured in a few seconds on made-up data.

    The statistics, combine and solve tasks of a fit run on a 64 x 64 tile of
    random images (as the real tasks, with one BLAS thread); reading decodes
    chunks of the dataset's shape and codecs from memory, and writing encodes a
    model tile's chunk (disk and network speeds are not in them).
    """
    import time

    import numpy as np
    from threadpoolctl import threadpool_limits

    from dmask.core import planning
    from dmask.graph import fit_tasks

    def repeat(step: object) -> tuple[float, object]:
        step()  # once to warm up (compiled kernels loaded, caches filled)
        runs, started, result = 0, time.perf_counter(), None
        while True:
            result = step()  # type: ignore[operator]
            runs += 1
            wall = time.perf_counter() - started
            if wall >= CALIBRATION_SECONDS:
                return wall / runs, result

    rng = np.random.default_rng(0)
    side, block = 64, 16
    b = field // 2
    tile = planning.Tile((0, 0), b, b + side, b, b + side)
    shape = (side + 2 * b, side + 2 * b)
    source = rng.integers(0, 256, (block, *shape, channels), dtype=np.uint8)
    inner = source[:, b : b + side, b : b + side]
    targets = [np.ascontiguousarray(inner[:, :, ::-1]) for _ in range(n_targets)]
    low, high = np.zeros(block), np.full(block, 255.0)
    bounds = ((low, high), [(low, high)] * n_targets)
    padding = ((0, 0), (0, 0))
    squares = penalty != "fixed"  # leave-one-out's factors: timed as GCV's
    lam = "gcv" if squares else 0.4
    grid = lam_grid or None
    joint = method == "joint"
    sum_channels = channels * channels if joint else channels
    stats_method = "displacement" if joint else method
    with threadpool_limits(limits=1, user_api="blas"):
        stats_s, stats = repeat(
            lambda: fit_tasks.statistics(
                source, targets, bounds, padding, field, method, squares
            )
        )
        combine_s, _ = repeat(lambda: fit_tasks.combine(stats, stats, stats))
        solve_s, _solved = repeat(
            lambda: fit_tasks.solve(stats, tile, shape, field, lam, grid)
        )
    k = field * field * (channels if joint else 1)
    stats_flops = planning.statistics_flops(
        (side, side), sum_channels, field, n_targets, block, method
    )
    stats_elements = (
        planning.estimate_statistics_bytes(
            (side, side), sum_channels, field, n_targets, stats_method
        )
        / 8
    )
    solve_flops = planning.solve_flops(
        (side, side), 1 if joint else channels, field,
        n_targets * (channels if joint else 1), len(lam_grid), k,
    )  # fmt: skip
    read_rate, write_rate = _measure_store_rates(chunks, encoding, dtype, repeat)
    return planning.Rates(
        statistics_flops=stats_flops / stats_s,
        combine_flops=2 * stats_elements / combine_s,
        solve_flops=solve_flops / solve_s,
        read_bytes=read_rate,
        write_bytes=write_rate,
    )


def _measure_store_rates(
    chunks: tuple[int, ...], encoding: dict, dtype: object, repeat: object
) -> tuple[float, float]:
    """Bytes per second decoding the dataset's chunks and encoding a model's."""
    import numpy as np
    import zarr

    from dmask.io.stores import quiet_zarr

    rng = np.random.default_rng(1)
    shape = tuple(int(c) for c in chunks)
    # images: smooth rows with some noise, about as compressible as faces
    pixels = np.cumsum(rng.integers(-3, 4, shape), axis=2) % 256
    data = pixels.astype(dtype)  # type: ignore[call-overload]
    codecs = {
        key: encoding[key]
        for key in ("compressors", "filters", "serializer")
        if encoding.get(key) is not None
    }
    with quiet_zarr():
        images = zarr.create_array(
            zarr.storage.MemoryStore(), shape=shape, chunks=shape, dtype=data.dtype,
            **codecs,
        )  # fmt: skip
        images[...] = data
        read_s, _ = repeat(lambda: images[...])
        weights = rng.standard_normal((1, 64, 64, 3, 26))
        model = zarr.create_array(
            zarr.storage.MemoryStore(), shape=weights.shape, chunks=weights.shape,
            dtype=weights.dtype,
        )  # fmt: skip

        def write() -> None:
            model[...] = weights

        write_s, _ = repeat(write)
    return data.nbytes / read_s, weights.nbytes / write_s


def _count(value: float) -> str:
    return f"{value:,.0f}"


def _duration(seconds: float) -> str:
    """Seconds as ``1 h 02 min``, ``3 min 05 s`` or ``4.2 s``."""
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    if seconds >= 60:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{seconds:.1f} s"


def format_plan(plan: dict) -> str:
    """The plan of :func:`show_plan` as a readable table."""
    from dmask.core.planning import format_bytes

    image, tile, block = plan["image"], plan["tile"], plan["sample_block"]
    tasks, memory, rates = plan["tasks"], plan["memory_per_task"], plan["rates"]
    workers, seconds = plan["workers"], plan["estimate_seconds"]
    fit_tasks = ", ".join(f"{k} {_count(v)}" for k, v in tasks["fit"].items())
    bound_tasks = ", ".join(f"{k} {_count(v)}" for k, v in tasks["bounds"].items())
    lam = plan["lam"] if isinstance(plan["lam"], str) else f"{plan['lam']:g}"
    if plan["lam_grid"]:
        lam += f" (from {len(plan['lam_grid'])} penalties)"
    images_once = (
        image["height"] * image["width"] * image["channels"] * image["itemsize"]
        * plan["training_pairs"] * (1 + len(plan["targets"]))
    )  # fmt: skip
    flops = plan["flops"]
    lines = [
        (
            "dataset",
            f"{plan['dataset']} (metadata only: no image read, nothing "
            "written, no cluster started)",
        ),
        (
            "images",
            f"{image['height']} x {image['width']}, {image['channels']} "
            f"channel(s), {image['dtype']}, chunks {tuple(image['chunks'])}",
        ),
        (
            "training pairs",
            f"{_count(plan['training_pairs'])} ({plan['source']} -> "
            f"{', '.join(plan['targets'])}: "
            f"{len(plan['targets'])} target(s))",
        ),
        (
            "model",
            f"r {plan['field']}, lam {lam}, method {plan['method']}, "
            f"channels {plan['channels']}, weights {plan['weights_dtype']}",
        ),
        (
            "tiles",
            f"{tile['shape'][0]} x {tile['shape'][1]}: {tile['grid'][0]} x "
            f"{tile['grid'][1]} = {_count(tile['count'])} tiles",
        ),
        (
            "sample blocks",
            f"{block['size']} samples: {_count(block['count'])} block(s) per tile",
        ),
        ("tasks", f"{_count(tasks['total'])} in all"),
        ("  bounds pass", bound_tasks),
        ("  fit", fit_tasks),
        (
            "memory per task",
            f"{format_bytes(memory['peak'])} at the peak (a worker "
            f"thread has {format_bytes(memory['thread_memory'])})",
        ),
        (
            "  input block",
            f"{format_bytes(memory['input'])} (window with halo and "
            "targets, float64, read and rearranged)",
        ),
        (
            "  sums",
            f"{format_bytes(memory['statistics'])} per tile"
            + (
                f", {format_bytes(memory['combine'])} in a combine"
                if memory["combine"]
                else ""
            ),
        ),
        ("  Gram matrices", f"{format_bytes(memory['gram'])} per solve batch"),
        ("  weights", f"{format_bytes(memory['weights'])} per tile (float64)"),
        ("model store", f"{format_bytes(plan['model_store_bytes'])} uncompressed"),
        (
            "reads",
            f"{format_bytes(plan['read_bytes']['fit'])} decoded by the fit "
            f"(x{plan['read_bytes']['fit'] / max(1, images_once):.1f} the "
            f"pairs' pixels), {format_bytes(plan['read_bytes']['bounds'])} "
            "by the bounds pass",
        ),
        (
            "work",
            f"statistics {flops['statistics'] / 1e9:,.1f} GFLOP, combine "
            f"{flops['combine'] / 1e9:,.1f} GFLOP, solve "
            f"{flops['solve'] / 1e9:,.1f} GFLOP",
        ),
        (
            "workers",
            f"{workers['workers']} x {workers['threads_per_worker']} "
            f"thread(s), {format_bytes(workers['memory_limit'])} each",
        ),
        (
            "rates per thread",
            f"statistics {rates['statistics_flops'] / 1e9:.2f}, "
            f"combine {rates['combine_flops'] / 1e9:.2f}, solve "
            f"{rates['solve_flops'] / 1e9:.2f} GFLOP/s; read "
            f"{rates['read_bytes'] / 1e6:,.0f}, write "
            f"{rates['write_bytes'] / 1e6:,.0f} MB/s; "
            f"{rates['task_overhead'] * 1e3:.1f} ms per task "
            f"({rates['from']})",
        ),
        (
            "estimated time",
            f"{_duration(seconds['total'])}: bounds pass "
            f"{_duration(seconds['bounds_wall'])}, fit "
            f"{_duration(seconds['fit_wall'])} (scheduler alone "
            f"{_duration(seconds['scheduler'])}; cluster start-up "
            "not counted)",
        ),
        (
            "  thread time",
            ", ".join(
                f"{k} {_duration(seconds[k])}"
                for k in ("read", "statistics", "combine", "solve", "write", "bounds")
            ),
        ),
    ]
    width = max(len(name) for name, _ in lines)
    return "\n".join(f"{name:<{width}}  {text}" for name, text in lines)
