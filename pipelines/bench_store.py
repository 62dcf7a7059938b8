"""Compression of a trained model's weights: zstd with and without byte shuffle.

The weights and bias of a real model (by default a 128 x 128 RGB model at
r = 3 on 6 targets, trained here from ``dmask synth`` faces) are written to a
fresh Zarr store with the model's own chunks (one per target and tile) under
each codec chain, then read back whole: the bytes on disk, the median write and
read times of ``--repeats`` runs, and whether the values come back bit for bit.
The float32 rows show what the opt-in float32 model (``Model.save(...,
dtype="float32")``) costs on disk, for comparison.

    python pipelines/bench_store.py [MODEL] [--subjects 40] [--size 128]
                                    [--repeats 5] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import zarr
from benchlib import machine, timed
from zarr.codecs import BloscCodec, ZstdCodec
from zarr.codecs.numcodecs import Shuffle

import dmask
from dmask.datasets.synthetic import make_synthetic_dataset
from dmask.io import dataset_store


def codecs(itemsize: int) -> dict[str, Callable[[], list[Any] | None]]:
    """Codec chains (zarr 3's bytes-to-bytes codecs after the ``bytes`` codec).

    ``shuffle + zstd`` is numcodecs' ``numcodecs.shuffle``, which is not in the
    zarr v3 specification (zarr warns so, and other implementations may not
    read it); blosc, zstd and ``bytes`` are.
    """
    return {
        "none": lambda: None,
        "zstd": lambda: [ZstdCodec(level=3)],
        "shuffle + zstd": lambda: [Shuffle(elementsize=itemsize), ZstdCodec(level=3)],
        "blosc zstd, shuffle": lambda: [
            BloscCodec(cname="zstd", clevel=3, shuffle="shuffle", typesize=itemsize)
        ],
        "blosc zstd, bitshuffle": lambda: [
            BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle", typesize=itemsize)
        ],
        "blosc lz4, shuffle": lambda: [
            BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=itemsize)
        ],
        "blosc lz4 level 1, shuffle": lambda: [
            BloscCodec(cname="lz4", clevel=1, shuffle="shuffle", typesize=itemsize)
        ],
        "blosc zstd level 1, shuffle": lambda: [
            BloscCodec(cname="zstd", clevel=1, shuffle="shuffle", typesize=itemsize)
        ],
    }


def folder_bytes(path: str) -> int:
    """Bytes of every chunk file under ``path`` (metadata left out)."""
    total = 0
    for root, _, files in os.walk(path):
        total += sum(
            os.path.getsize(os.path.join(root, f)) for f in files if f != "zarr.json"
        )
    return total


def train_model(folder: str, subjects: int, size: int) -> str:
    """A model (r = 3, every target) trained on synthetic faces; its path."""
    data, model = os.path.join(folder, "faces.zarr"), os.path.join(folder, "m.zarr")
    ds = make_synthetic_dataset(data, subjects, (size, size))
    targets = dataset_store.other_expressions(ds, "neutral")
    sources, pairs = dataset_store.stored_pairs(ds, "neutral", targets)
    dmask.fit(sources, pairs, field=3, store=model)
    return model


def measure(
    arrays: dict[str, tuple[np.ndarray, tuple[int, ...]]],
    chain: Callable[[], list[Any] | None],
    folder: str,
    repeats: int,
) -> dict[str, Any]:
    """Write ``arrays`` (name -> values, chunks) with ``chain``; read them back."""
    path = os.path.join(folder, "bench.zarr")

    def write() -> None:
        shutil.rmtree(path, ignore_errors=True)
        group = zarr.open_group(path, mode="w", zarr_format=3)
        for name, (values, chunks) in arrays.items():
            array = group.create_array(
                name,
                shape=values.shape,
                chunks=chunks,
                dtype=values.dtype,
                compressors=chain(),
                fill_value=0,
            )
            array[...] = values

    def read() -> dict[str, np.ndarray]:
        group = zarr.open_group(path, mode="r")
        return {name: np.asarray(group[name][...]) for name in arrays}

    write_s, _ = timed(write, repeats)
    read_s, back = timed(read, repeats)
    exact = all(
        np.array_equal(back[name], values)  # type: ignore[index]
        for name, (values, _) in arrays.items()
    )
    size = folder_bytes(path)
    shutil.rmtree(path)
    return {"bytes": size, "write_s": write_s, "read_s": read_s, "exact": exact}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="a model store (default: train one)")
    parser.add_argument("--subjects", type=int, default=40)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*Numcodecs codecs are not in the Zarr")

    folder = tempfile.mkdtemp(prefix="dmask-bench-store-")
    try:
        path = args.model or train_model(folder, args.subjects, args.size)
        model = dmask.open_model(path)
        ds = model.dataset
        th, tw = model.tile_shape
        weight = np.asarray(ds["weight"].values, dtype=np.float64)
        bias = np.asarray(ds["bias"].values, dtype=np.float64)
        shape = weight.shape
        rows = []
        for dtype in (np.float64, np.float32):
            arrays = {
                "weight": (weight.astype(dtype), (1, th, tw, shape[3], shape[4])),
                "bias": (bias.astype(dtype), (1, th, tw, shape[3])),
            }
            raw = sum(values.nbytes for values, _ in arrays.values())
            for name, chain in codecs(np.dtype(dtype).itemsize).items():
                figures = measure(arrays, chain, folder, args.repeats)
                rows.append(
                    {"dtype": np.dtype(dtype).name, "codecs": name, "raw": raw,
                     **figures}
                )  # fmt: skip
        print(f"model {path}: weight {shape}, tiles {th}x{tw}")
        print(
            f"{'dtype':8} {'codecs':24} {'MB':>7} {'of raw':>7} {'write s':>8} "
            f"{'read s':>7} exact"
        )
        for row in rows:
            print(
                f"{row['dtype']:8} {row['codecs']:24} {row['bytes'] / 1e6:7.2f} "
                f"{row['bytes'] / row['raw']:7.1%} {row['write_s']:8.3f} "
                f"{row['read_s']:7.3f} {row['exact']}"
            )
        info = machine()
        info["zarr"] = zarr.__version__
        print("machine:", json.dumps(info))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"machine": info, "model": path, "rows": rows}, f, indent=1)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
