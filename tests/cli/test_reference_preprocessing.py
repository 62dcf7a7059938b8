"""The reference implementation's preprocessing from the command line.

Its nested tree, OpenCV's bilinear resize (``--resize bilinear``) and its
min-max stretch of each output for display (``--display stretch``).
"""

from __future__ import annotations

import argparse

import numpy as np
from helpers import error_lines
from PIL import Image

import dmask
from dmask.apply import folder
from dmask.cli import main
from dmask.core import minmax
from dmask.datasets.drawing import render_face, subject_params
from dmask.io import dataset_store, face_crops, photographs

LOCAL = ["--workers", "1", "--in-process", "--dashboard-address", ":0", "--no-progress"]


def _crop(subject: int, expression: str) -> np.ndarray:
    image = render_face(subject_params(13, subject), expression, 40, 40)
    return np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)


def _tree(root) -> None:
    for split, indices in (("train", range(1, 9)), ("test", (9, 10))):
        for i in indices:
            for side, expression in (("A", "neutral"), ("B", "happy")):
                folder = root / split / f"{split}{side}"
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(_crop(i, expression)).save(folder / f"f_{i}.png")
    Image.fromarray(_crop(11, "neutral")).save(root / "train" / "trainA" / "f_11.png")


def test_reference_tree_bilinear_and_stretch(tmp_path, capsys):
    root, faces, model = tmp_path / "dataset", tmp_path / "f.zarr", tmp_path / "m.zarr"
    _tree(root)
    assert main(["ingest", str(root), "--out", str(faces), "--size", "24",
                 "--resize", "bilinear", *LOCAL]) == 0  # fmt: skip
    printed = capsys.readouterr()
    assert "face crops taken whole 21" in printed.out
    assert "subject train00011 left out: only a neutral image" in printed.err
    assert f"left out: subjects without a pair 1 (report: {faces}.report.txt)" in (
        printed.err
    )
    ds = dataset_store.open_dataset(faces)
    assert ds.attrs["resize"] == "bilinear" and ds.attrs["crop"] == "auto"
    assert (ds["split"].values.astype(str) == "test").sum() == 4
    assert main(["train", str(faces), "--out", str(model), *LOCAL]) == 0
    trained = dmask.open_model(model)

    # A folder: inputs resized as at ingest, outputs stretched.
    out = tmp_path / "synthesised"
    assert main(["apply", str(model), str(root / "test" / "testA"), "--out",
                 str(out), "--resize", "bilinear", "--display", "stretch",
                 *LOCAL]) == 0  # fmt: skip
    for i in (9, 10):
        image = photographs.read_image(root / "test" / "testA" / f"f_{i}.png")
        face = face_crops.prepare_face(image, (24, 24), crop="auto", resize="bilinear")
        stored = ds["images"].values[ds["file"].values == f"test/testA/f_{i}.png"]
        np.testing.assert_array_equal(face, stored[0])
        predicted = trained.predict(minmax.normalize_images(face[None]))["happy"][0]
        written = photographs.read_image(out / "crops" / "happy" / f"f_{i}.png")
        expected = photographs.stretch_uint8(predicted)
        assert np.abs(written.astype(int) - expected).max() <= 1
        assert written.min() == 0 and written.max() == 255

    # A store: --png with --display stretch, each image stretched on its own.
    synthesised, pngs = tmp_path / "o.zarr", tmp_path / "png"
    assert main(["apply", str(model), str(faces), "--out", str(synthesised),
                 "--split", "test", "--png", str(pngs), "--display", "stretch",
                 *LOCAL]) == 0  # fmt: skip
    stored = dataset_store.open_dataset(synthesised)
    for image, subject in zip(
        stored["images"].values, stored["subject"].values.astype(str), strict=True
    ):
        written = photographs.read_image(pngs / f"{subject}_happy.png")
        np.testing.assert_array_equal(written, photographs.stretch_uint8(image))
    clipped = tmp_path / "clipped"
    assert main(["apply", str(model), str(faces), "--out", str(tmp_path / "c.zarr"),
                 "--split", "test", "--png", str(clipped), *LOCAL]) == 0  # fmt: skip
    name = f"{stored['subject'].values[0]}_happy.png"
    np.testing.assert_array_equal(
        photographs.read_image(clipped / name),
        photographs.to_uint8(stored["images"].values[0]),
    )


def test_a_failed_ingest_names_its_report(tmp_path, capsys):
    root = tmp_path / "dataset"
    for side in "AB":
        (root / "train" / f"train{side}").mkdir(parents=True)
    Image.fromarray(_crop(1, "neutral")).save(root / "train" / "trainA" / "f_1.png")
    (root / "train" / "trainB" / "f_1.png").write_text("not an image")
    out = tmp_path / "f.zarr"
    assert main(["ingest", str(root), "--out", str(out), *LOCAL]) == 1
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1
    assert lines[0].startswith("dmask ingest: error: no subject in ")
    assert lines[0].endswith(
        f"left out: unreadable 1, subjects without a pair 1; see {out}.report.txt"
    )
    report = (tmp_path / "f.zarr.report.txt").read_text()
    assert "unreadable: train/trainB/f_1.png: not an image file Pillow can read" in (
        report
    )


def test_option_choices_are_the_library_s():
    from dmask.cli.app import _build_parser

    commands = next(
        a for a in _build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    ).choices
    choices = {
        (name, action.dest): tuple(action.choices)
        for name in ("ingest", "apply", "report")
        for action in commands[name]._actions
        if action.dest in ("resize", "display", "crop", "output")
    }
    assert choices == {
        ("ingest", "resize"): face_crops.RESIZE_METHODS,
        ("ingest", "crop"): face_crops.CROP_MODES,
        ("apply", "resize"): face_crops.RESIZE_METHODS,
        ("apply", "crop"): face_crops.CROP_MODES,
        ("apply", "display"): photographs.DISPLAY_MODES,
        ("apply", "output"): folder.OUTPUT_KINDS,
        ("report", "resize"): face_crops.RESIZE_METHODS,
        ("report", "crop"): face_crops.CROP_MODES,
    }
