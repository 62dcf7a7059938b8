"""dmask apply: synthesise faces from a dataset store or a folder of photographs."""

from __future__ import annotations

import argparse
import os
import time

from dmask.cli.common import (
    _add_cluster_options,
    _add_crop_option,
    _add_overwrite_option,
    _add_resize_option,
    _check_output_folder,
    _cluster,
    _every,
    _images_bytes,
    _is_store,
    _positive_int,
    _summary,
    add_command,
    every_option,
    names_option,
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    apply = add_command(
        sub,
        "apply",
        "synthesise faces with a stored model",
        [
            "dmask apply model.zarr faces.zarr --out out.zarr --split test --png pngs/",
            "dmask apply model.zarr photos/ --out synthesised/ --targets happy "
            "--strength 1.5",
        ],
        description="Synthesise faces with a stored model: from a dataset store "
        "into a store (and PNG files), or from a folder of photographs into a "
        "folder (each face aligned, synthesised and pasted back).",
    )
    apply.add_argument("model", help="model store")
    apply.add_argument(
        "dataset", help="dataset store of source faces, or a folder of photographs"
    )
    apply.add_argument(
        "--out",
        required=True,
        help="output store (from a store) or output folder of PNGs (from a folder)",
    )
    every_option(
        apply, "--source", "neutral", "stores: source expression, or all (every sample)"
    )
    every_option(apply, "--split", "all", "stores: only this split, or all")
    names_option(
        apply, "--targets", "subset of the model's targets (default: all of them)"
    )
    apply.add_argument(
        "--png", metavar="FOLDER", help="stores: also write PNG files to this folder"
    )
    apply.add_argument(
        "--sample-block",
        type=_positive_int,
        metavar="N",
        help="stores: samples per task (default: from the workers' memory)",
    )
    _add_crop_option(
        apply,
        "folders: how faces are taken (auto: a face crop whole, else align: "
        "by landmarks, else the face box, else the centre)",
    )
    apply.add_argument(
        "--output",
        default="both",
        choices=["photo", "crop", "both", "synthesised"],
        help="folders: write the photographs with the face pasted back "
        "(OUT/<target>/), the crops (OUT/crops/<target>/, OUT/aligned/), both, "
        "or only the synthesised crops (OUT/crops/<target>/: for inputs that "
        "are aligned face crops already)",
    )
    apply.add_argument(
        "--margin",
        type=float,
        default=0.25,
        metavar="FRACTION",
        help="folders: margin around a found face box, a fraction of its size",
    )
    _add_resize_option(
        apply, "folders: how faces are resized (bilinear, area: as OpenCV's)"
    )
    apply.add_argument(
        "--display",
        default="clip",
        choices=["clip", "stretch"],
        help="PNG files: clip to [0, 1], or stretch each image's range to 0-255",
    )
    apply.add_argument(
        "--strength",
        type=float,
        default=1.0,
        metavar="ALPHA",
        help="expression strength: 0 keeps the input, 1 is the model, "
        "in between interpolates, above 1 exaggerates",
    )
    apply.add_argument(
        "--convert-channels",
        action="store_true",
        help="folders: turn colour photographs grey for a one-channel model "
        "(without it: skip them, a report line each)",
    )
    apply.add_argument(
        "--files-per-task",
        type=_positive_int,
        default=None,
        metavar="N",
        help="folders: image files per task (a batch; a finished batch is "
        "recorded in OUT/.dmask-progress/ and skipped whole by a re-run); "
        "default: about 64 MiB of faces in float64, 16 to 256 files (16 where "
        "photographs are written)",
    )
    apply.add_argument(
        "--manifest",
        metavar="FILE",
        help="folders: do the files this lists (paths relative to the folder, "
        "one per line, or the first column of a .csv) instead of listing the "
        "folder",
    )
    _add_overwrite_option(
        apply, "replace the output store; for folders, redo files already done"
    )
    _add_cluster_options(apply)


def run(args: argparse.Namespace) -> None:

    from dmask.apply.store import apply_to_store, write_pngs
    from dmask.io.dataset_store import open_dataset
    from dmask.io.stores import prepare_output
    from dmask.model import open_model

    if _is_folder(args.dataset) or args.manifest:
        _run_folder(args)
        return
    _check_output_folder(args.png)
    prepare_output(args.out, args.overwrite, inputs=[args.model, args.dataset])
    model = open_model(args.model)
    ds = open_dataset(args.dataset)
    with _cluster(args, _images_bytes(ds)) as client:
        started = time.perf_counter()
        out = apply_to_store(
            model,
            ds,
            args.out,
            source=_every(args.source),
            split=_every(args.split),
            targets=args.targets or None,
            overwrite=True,
            sample_block=args.sample_block,
            strength=args.strength,
        )
        count = out.sizes["sample"]
        if args.png:
            write_pngs(out, args.png, display=args.display)
            print(f"PNG files: {args.png}")
        wall = time.perf_counter() - started
        _summary(
            client,
            started,
            images_synthesised=count,
            throughput=f"{count / max(wall, 1e-9):.1f} images/s",
        )
    print(f"synthesised faces: {args.out}")


def _is_folder(path: str) -> bool:
    """Whether ``path`` is a folder of photographs (not a Zarr store): local or URL."""
    if "://" not in path:
        return os.path.isdir(path) and not _is_store(path)
    from fsspec.core import url_to_fs

    fs, where = url_to_fs(path)
    where = where.rstrip("/")
    return bool(fs.isdir(where)) and not fs.isfile(f"{where}/zarr.json")


def _run_folder(args: argparse.Namespace) -> None:
    from dmask.apply.folder import apply_to_folder
    from dmask.model import open_model

    model = open_model(args.model)
    with _cluster(args) as client:
        started = time.perf_counter()
        report = apply_to_folder(
            model,
            args.dataset,
            args.out,
            targets=args.targets or None,
            crop=args.crop,
            margin=args.margin,
            block=args.files_per_task,
            resume=not args.overwrite,
            convert_channels=args.convert_channels,
            strength=args.strength,
            resize=args.resize,
            display=args.display,
            output=args.output,
            manifest=args.manifest,
        )
        for line in report.problems[:20]:
            print(f"  skipped {line}")
        for line in report.notes[:20]:
            print(f"  note {line}")
        wall = time.perf_counter() - started
        _summary(
            client,
            started,
            image_files=report.scanned,
            already_done=report.already_done,
            images_synthesised=report.written,
            skipped=report.problem_count,
            taken_by=report.alignment().removeprefix("; taken by: ") or "-",
            throughput=f"{report.written / max(wall, 1e-9):.1f} images/s",
        )
    report_file = f"{args.out.rstrip('/')}/report.txt"
    print(f"synthesised faces: {args.out} (report: {report_file})")
