"""Photographs per second at 1024 x 1024: detect, align, synthesise, paste back.

A model is trained as the demo's (synthetic faces at ``--size``, ``r = 3``,
every expression but neutral), then:

- ``detectors``: hit rate and median time per image of the landmark detector
  dmask uses (dlib's HOG face detector and 68-point model), of the LBP face
  cascade dmask used before (a face box, no landmarks), and of MediaPipe's
  face mesh and OpenCV's Haar eye cascades where they are importable, on the
  shipped photographs and their pencil sketches;
- ``stages``: the median time per 1024 x 1024 photograph of each stage, in
  this process on one thread (read, detect, align, synthesise every target,
  paste back every target, write the PNG files);
- ``folder``: :func:`dmask.apply.folder.apply_to_folder` over ``--photos``
  photographs of 1024 x 1024 (the shipped portraits turned, scaled and shifted
  into variants, and their sketches) on a LocalCluster of two one-thread
  worker processes, writing the pasted-back photographs and the crops
  (``both``), against the same run writing the crops only (``crop``, the
  former output), in the same process; medians of ``--repeats``.

    python pipelines/bench_photos.py [--photos 64] [--size 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
from benchlib import machine, timed
from PIL import Image

import dmask
from dmask.apply import folder
from dmask.cluster.clients import ClusterOptions, connect
from dmask.core import alignment, forward, minmax
from dmask.datasets import samples
from dmask.datasets.drawing import EXPRESSIONS
from dmask.datasets.synthetic import make_synthetic_dataset
from dmask.io import dataset_store, face_crops, landmarks, photographs

SIDE = 1024


def variants(count: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``count`` 1024 x 1024 photographs: the portraits moved, and sketches."""
    rng = np.random.default_rng(seed)
    shipped = samples.sample_photographs()
    people = [shipped[n] for n in ("astronaut", "grace_hopper") if n in shipped]
    out = {}
    for i in range(count):
        photo = people[i % len(people)]
        angle, scale = rng.uniform(-0.25, 0.25), rng.uniform(1.4, 1.9)
        c, s = scale * np.cos(angle), scale * np.sin(angle)
        shift = rng.uniform(-150, 100, size=2)
        moved = np.array([[c, -s, shift[0]], [s, c, shift[1]]])
        image = alignment.warp_to_crop(photo, moved, (SIDE, SIDE))
        image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        if i % 4 == 3:
            image = np.repeat(samples.sketch(image), 3, axis=2)
        out[f"photo_{i:03d}"] = image
    return out


def detectors(images: dict[str, np.ndarray]) -> dict[str, dict]:
    """Hit rate and median milliseconds of each detector over ``images``."""
    rows: dict[str, dict] = {}

    def run(name: str, detect) -> None:
        hits, walls = [], []
        for label, image in images.items():
            started = time.perf_counter()
            found = detect(image)
            walls.append(1000 * (time.perf_counter() - started))
            if found:
                hits.append(label)
        rows[name] = {
            "hits": f"{len(hits)}/{len(images)}",
            "found": hits,
            "median_ms": round(statistics.median(walls), 1),
        }

    if landmarks.available():
        landmarks.detect_landmarks(images[next(iter(images))])  # loads the model
        run("dlib HOG + 68 points (dmask)", landmarks.detect_landmarks)
    else:
        rows["dlib HOG + 68 points (dmask)"] = {"error": landmarks.missing_reason()}
    run("LBP face cascade (box only)", face_crops.detect_face)
    if importlib.util.find_spec("mediapipe") is not None:
        try:
            import mediapipe as mp

            mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True)
            run(
                "MediaPipe face mesh",
                lambda im: mesh.process(im).multi_face_landmarks,
            )
        except (AttributeError, ImportError) as exc:
            rows["MediaPipe face mesh"] = {"error": f"no shipped model: {exc}"}
    else:
        rows["MediaPipe face mesh"] = {"error": "not installed"}
    cv2 = None
    if importlib.util.find_spec("cv2") is not None:
        import cv2
    if cv2 is not None and hasattr(cv2, "CascadeClassifier"):
        eyes = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_eye.xml")
        run(
            "OpenCV Haar eyes (2 found)",
            lambda im: len(eyes.detectMultiScale(im[..., 0], 1.1, 5)) >= 2,
        )
    else:
        version = getattr(cv2, "__version__", "not installed")
        rows["OpenCV Haar eyes (2 found)"] = {
            "error": f"OpenCV {version} ships no cascades"
        }
    return rows


def stages(model, images: dict[str, np.ndarray], out: str) -> dict[str, float]:
    """Median milliseconds per photograph of each stage, on one thread."""
    arrays = folder._model_arrays(model.dataset)
    size, canonical = model.image_shape, model.landmarks
    times: dict[str, list[float]] = {
        k: [] for k in ("read", "detect", "align", "synthesise", "paste", "write")
    }
    paths = {}
    for label, image in images.items():
        paths[label] = os.path.join(out, f"{label}.png")
        Image.fromarray(image).save(paths[label])
    for label, path in paths.items():
        t0 = time.perf_counter()
        image = photographs.read_image(path)
        t1 = time.perf_counter()
        found = landmarks.detect_landmarks(image)
        t2 = time.perf_counter()
        if found is None:
            continue
        matrix = alignment.similarity(
            found[0], alignment.from_fractions(canonical, size)
        )
        raw = alignment.warp_to_crop(image, matrix, size)
        points = alignment.apply_transform(matrix, found[0])
        t3 = time.perf_counter()
        low, scale = minmax.minmax_parameters(raw[None])
        x = minmax.normalize_block(raw[None], low, scale)
        predicted = forward.blend(folder._predict_faces(x, arrays, model.field), x, 1.0)
        t4 = time.perf_counter()
        taken = face_crops.AlignedFace(raw, matrix, "landmarks", points)
        units = [folder._in_units(p[0], low[0], scale[0]) for p in predicted]
        pasted = folder.paste_faces(image, units, raw, taken)
        t5 = time.perf_counter()
        for i, values in enumerate(pasted):
            photographs.write_png(os.path.join(out, f"w{i}_{label}.png"), values, 255)
        t6 = time.perf_counter()
        for key, a, b in zip(
            times, (t0, t1, t2, t3, t4, t5), (t1, t2, t3, t4, t5, t6), strict=True
        ):
            times[key].append(1000 * (b - a))
    medians = {k: round(statistics.median(v), 1) for k, v in times.items() if v}
    medians["total"] = round(sum(medians.values()), 1)
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=64)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--subjects", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-limit", default="4GiB")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="bench_photos_")
    figures: dict[str, object] = {"machine": machine(), "side": SIDE}
    try:
        shipped = samples.sample_photographs()
        shown = {}
        for name, photo in shipped.items():
            shown[name] = photo
            shown[f"{name}_sketch"] = samples.sketch(photo)
        figures["detectors"] = detectors(shown)
        print(json.dumps({"detectors": figures["detectors"]}, indent=1), flush=True)

        targets = [e for e in EXPRESSIONS if e != "neutral"]
        options = ClusterOptions(
            n_workers=2, threads_per_worker=1, memory_limit=args.memory_limit
        )
        with connect(options):
            ds = make_synthetic_dataset(
                os.path.join(root, "faces.zarr"), args.subjects, (args.size, args.size)
            )
            sources, target_arrays = dataset_store.stored_pairs(
                ds, "neutral", targets, "train"
            )
            model = dmask.fit(
                sources, target_arrays, field=3, lam=0.4,
                store=os.path.join(root, "model.zarr"),
                landmarks=ds.attrs["landmarks"],
            )  # fmt: skip
            photos = variants(args.photos)
            inputs = os.path.join(root, "photos")
            os.makedirs(inputs)
            for label, image in photos.items():
                Image.fromarray(image).save(os.path.join(inputs, f"{label}.png"))
            scratch = os.path.join(root, "stages")
            os.makedirs(scratch)
            figures["stages_ms"] = stages(
                model, dict(list(photos.items())[:12]), scratch
            )
            print(json.dumps({"stages_ms": figures["stages_ms"]}), flush=True)
            runs = {}
            for output in ("crop", "both"):

                def step(output=output):
                    out = os.path.join(root, f"out_{output}")
                    shutil.rmtree(out, ignore_errors=True)
                    return folder.apply_to_folder(
                        model, inputs, out, resume=False, output=output
                    )

                wall, report = timed(step, args.repeats)
                runs[output] = {
                    "photos_per_s": round(report.written / wall, 2),
                    "wall_s": round(wall, 2),
                    "taken_by": report.alignment(),
                }
                print(json.dumps({output: runs[output]}), flush=True)
            runs["ratio_both_vs_crop"] = round(
                runs["both"]["photos_per_s"] / runs["crop"]["photos_per_s"], 2
            )
            figures["folder"] = runs
            figures["targets"] = len(targets)
            figures["photos"] = args.photos
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(figures, indent=1))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=1)


if __name__ == "__main__":
    sys.exit(main())
