"""End-to-end demo on a local Dask cluster.

Generates a synthetic paired-face dataset, trains masked ridge regression for
every expression on the training subjects, synthesises the held-out subjects'
expressions into a Zarr store, evaluates them against two baselines and writes
a comparison grid; then synthesises real photographs that installed packages
ship (two portraits and a cat) and pencil sketches of them, as a batch over a
folder, into ``out_of_dataset.png``; compares MR with the paper's baselines on
the held-out subjects and writes everything into one HTML report.

    python pipelines/demo.py [--out data/demo] [--subjects 160] [--size 128]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from dmask import fit
from dmask.apply.folder import apply_to_folder, read_synthesised
from dmask.apply.store import apply_to_store
from dmask.cluster.clients import ClusterOptions, connect, peak_worker_memory
from dmask.core import minmax
from dmask.datasets import samples
from dmask.datasets.synthetic import EXPRESSIONS, make_synthetic_dataset
from dmask.evaluation.compare import compare, format_comparison
from dmask.evaluation.evaluate import evaluate, format_evaluation
from dmask.evaluation.metrics import write_results
from dmask.graph.runtime import compute
from dmask.io import dataset_store
from dmask.options import set_options
from dmask.report.figures import comparison_grid, photograph_grid
from dmask.report.page import write_report


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/demo", help="output folder")
    parser.add_argument("--subjects", type=int, default=160)
    parser.add_argument(
        "--size",
        type=int,
        nargs="+",
        default=[128],
        metavar=("H", "W"),
        help="image height and width (W: H by default), as dmask synth --size",
    )
    parser.add_argument("--field", type=int, default=3)
    parser.add_argument("--lam", type=float, default=0.4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads-per-worker", type=int, default=1)
    parser.add_argument("--memory-limit", default="auto")
    parser.add_argument("--grid-subjects", type=int, default=3)
    args = parser.parse_args(argv)
    if len(args.size) > 2:
        parser.error("--size takes H or H W")
    return args


def _normalized(images: np.ndarray) -> np.ndarray:
    return minmax.normalize_block(images, *minmax.minmax_parameters(images))


def _out_of_dataset(model, out: str):
    """Synthesise the shipped photographs and sketches of them; draw a grid."""
    from PIL import Image

    folder = os.path.join(out, "photographs")
    synthesised = os.path.join(out, "photographs_synthesised")
    os.makedirs(folder, exist_ok=True)
    for name, photo in samples.sample_photographs().items():
        for label, image in (
            (name, photo),
            (f"{name}_sketch", samples.sketch(photo)),
        ):
            pixels = image[..., 0] if image.shape[-1] == 1 else image
            Image.fromarray(pixels).save(os.path.join(folder, f"{label}.png"))
    report = apply_to_folder(model, folder, synthesised, crop="auto", resume=False)
    pairs = read_synthesised(model, folder, synthesised)
    photograph_grid(pairs, os.path.join(out, "out_of_dataset.png"))
    return report, pairs


def main(argv: list[str] | None = None) -> int:
    """Run the demo; return the exit code."""
    args = _parse(argv)
    os.makedirs(args.out, exist_ok=True)
    paths = {
        name: os.path.join(args.out, name)
        for name in ("faces.zarr", "model.zarr", "synthesised.zarr")
    }
    targets = [e for e in EXPRESSIONS if e != "neutral"]
    options = ClusterOptions(
        n_workers=args.workers,
        threads_per_worker=args.threads_per_worker,
        memory_limit=args.memory_limit,
    )
    started = time.perf_counter()
    # progress on stderr: a bar on a terminal, plain lines in a log file
    with connect(options) as client, set_options(progress=True):
        print(f"dashboard: {client.dashboard_link}", file=sys.stderr, flush=True)
        shape = (args.size[0], args.size[-1])
        print(f"[1/7] synthesising {args.subjects} subjects x 7 faces at {shape}")
        t0 = time.perf_counter()
        ds = make_synthetic_dataset(
            paths["faces.zarr"], args.subjects, shape, args.seed, overwrite=True
        )
        print(f"      {ds.sizes['sample']} images in {time.perf_counter() - t0:.1f} s")

        sources, target_arrays = dataset_store.stored_pairs(
            ds, "neutral", targets, "train"
        )
        n_train = sources.shape[0]
        print(f"[2/7] training r={args.field} lambda={args.lam} on {n_train} subjects")
        t0 = time.perf_counter()
        model = fit(
            sources,
            target_arrays,
            field=args.field,
            lam=args.lam,
            store=paths["model.zarr"],
            overwrite=True,
            landmarks=ds.attrs.get("landmarks"),
        )
        train_s = time.perf_counter() - t0
        print(f"      {model} in {train_s:.1f} s")

        print("[3/7] synthesising the held-out subjects' expressions")
        t0 = time.perf_counter()
        out = apply_to_store(
            model, ds, paths["synthesised.zarr"], split="test", overwrite=True
        )
        print(f"      {out.sizes['sample']} faces in {time.perf_counter() - t0:.1f} s")

        print("[4/7] evaluating on held-out subjects")
        rows = evaluate(model, ds, split="test")
        print(format_evaluation(rows))
        write_results(
            rows,
            os.path.join(args.out, "evaluation.csv"),
            os.path.join(args.out, "evaluation.json"),
        )

        print("[5/7] drawing the comparison grid")
        src_test, tgt_test = dataset_store.select_pairs(ds, "neutral", targets, "test")
        count = min(args.grid_subjects, src_test.sizes["sample"])
        src_test = src_test.isel(sample=slice(0, count))
        predicted = model.predict(src_test.data[:count])
        truths = compute(*[tgt_test[t].data[:count] for t in targets])
        sources_np = compute(src_test.data)[0]
        grid_path = os.path.join(args.out, "comparison.png")
        comparison_grid(
            _normalized(sources_np),
            {t: compute(predicted[t])[0] for t in targets},
            {t: _normalized(v) for t, v in zip(targets, truths, strict=True)},
            grid_path,
            subjects=[str(s) for s in src_test["subject"].values],
        )
        print("[6/7] out-of-dataset faces: photographs, pencil sketches, a cat")
        t0 = time.perf_counter()
        photo_report, photographs = _out_of_dataset(model, args.out)
        print(
            f"      {photo_report.written} images synthesised and pasted back in "
            f"{time.perf_counter() - t0:.1f} s{photo_report.alignment()}"
        )
        print("[7/7] MR against the paper's baselines, and the HTML report")
        t0 = time.perf_counter()
        comparison = compare(ds, source="neutral", targets=targets, lam=args.lam)
        print(format_comparison(comparison, means_only=True))
        write_results(comparison, None, os.path.join(args.out, "comparison.json"))
        report_path = write_report(
            os.path.join(args.out, "report.html"),
            model,
            ds,
            comparison=comparison,
            photographs=photographs,
            overwrite=True,
        )
        print(f"      {report_path} in {time.perf_counter() - t0:.1f} s")
        peak = peak_worker_memory(client)
    mean = rows[-1]
    print(
        f"done in {time.perf_counter() - started:.1f} s (training {train_s:.1f} s, "
        f"peak worker memory {peak / 2**20:.0f} MiB); held-out PSNR: "
        f"MR {mean['psnr_mr']:.2f} dB, identity {mean['psnr_identity']:.2f} dB, "
        f"mean difference {mean['psnr_mean_difference']:.2f} dB"
    )
    print(f"outputs in {args.out}: faces.zarr model.zarr synthesised.zarr")
    print("  evaluation.csv evaluation.json comparison.png")
    print("  photographs/ photographs_synthesised/ out_of_dataset.png")
    print("  comparison.json report.html (open it in a browser)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
