"""Batch synthesis over folders: outputs, skips, resume, and a distributed run."""

from __future__ import annotations

import os

import dask
import numpy as np
import pytest
from PIL import Image
from reference import minmax, reference_predict

import dmask
from dmask.apply import folder
from dmask.datasets.drawing import render_face, subject_params
from dmask.errors import InputError
from dmask.io import face_crops, photographs


def _face(subject: int, expression: str, height: int, width: int) -> np.ndarray:
    image = render_face(subject_params(3, subject), expression, height, width)
    return np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def model_store(tmp_path_factory):
    """A small two-target model on 24 x 20 RGB faces, saved to a store."""
    subjects = range(12)
    sources = np.stack([_face(s, "neutral", 24, 20) for s in subjects])
    targets = {
        name: np.stack([_face(s, name, 24, 20) for s in subjects])
        for name in ("happy", "sad")
    }
    path = tmp_path_factory.mktemp("model") / "model.zarr"
    dmask.fit(sources, targets, field=3, store=path)
    return str(path)


@pytest.fixture
def photo_folder(tmp_path):
    """Faces of several sizes and aspects, nested, plus a corrupt and a text file."""
    folder = tmp_path / "photos"
    (folder / "nested" / "deeper").mkdir(parents=True)
    Image.fromarray(_face(20, "neutral", 60, 50)).save(folder / "a.png")
    Image.fromarray(_face(21, "neutral", 33, 47)).save(folder / "nested" / "b.jpg")
    gray = _face(22, "neutral", 40, 40).mean(axis=-1).astype(np.uint8)
    Image.fromarray(gray).save(folder / "nested" / "deeper" / "c.png")
    Image.fromarray(_face(23, "neutral", 24, 20)).save(folder / "d.PNG")
    data = (folder / "a.png").read_bytes()
    (folder / "broken.png").write_bytes(data[: len(data) // 2])
    (folder / "notes.png").write_text("not an image")
    (folder / "readme.txt").write_text("ignored: not an image name")
    return folder


GOOD = ["a.png", "d.PNG", "nested/b.jpg", "nested/deeper/c.png"]


def _expected(
    model, folder, relative: str, target: str, resize="lanczos", display="clip"
) -> np.ndarray:
    """The slow way: prepare, normalise and predict with the per-pixel loops."""
    image = photographs.read_image(os.path.join(folder, relative))
    face = face_crops.prepare_face(
        image, model.image_shape, crop="center", channels=3, resize=resize
    )
    weights = model.weights(target).values
    bias = model.bias(target).values
    predicted = reference_predict(minmax(face[None]), weights, bias, model.field)[0]
    if display == "stretch":
        low, high = predicted.min(), predicted.max()
        return np.rint((predicted - low) * (255 / (high - low))).astype(np.uint8)
    return np.rint(np.clip(predicted, 0, 1) * 255).astype(np.uint8)


def _outputs(out) -> dict[str, bytes]:
    found = {}
    for directory, _, files in os.walk(out):
        for name in files:
            if name.endswith(".png"):
                path = os.path.join(directory, name)
                with open(path, "rb") as handle:
                    found[os.path.relpath(path, out)] = handle.read()
    return found


def test_folder_synthesis_matches_reference(model_store, photo_folder, tmp_path):
    model = dmask.open_model(model_store)
    out = tmp_path / "out"
    report = folder.apply_to_folder(model, photo_folder, out, crop="center", block=2)
    assert report.scanned == 6 and report.written == 4 and report.already_done == 0
    assert sorted(p.split(":")[0] for p in report.problems) == [
        "broken.png",
        "notes.png",
    ]
    assert all("unreadable" in p for p in report.problems)
    for relative in GOOD:
        photo = photographs.read_image(photo_folder / relative)
        stem = os.path.splitext(relative)[0] + ".png"
        for target in ("happy", "sad"):
            written = photographs.read_image(out / "crops" / target / stem)
            assert written.shape == (24, 20, 3)
            expected = _expected(model, photo_folder, relative, target)
            assert np.abs(written.astype(int) - expected).max() <= 1
            # the photograph, full size, under the same name
            pasted = photographs.read_image(out / target / stem)
            assert pasted.shape[:2] == photo.shape[:2]
        aligned = photographs.read_image(out / "aligned" / stem)
        assert aligned.shape == (24, 20, 3)
    text = (out / "report.txt").read_text()
    assert "skipped broken.png" in text and "4 synthesised" in text


def test_in_memory_model_gives_the_same_files(model_store, photo_folder, tmp_path):
    stored = dmask.open_model(model_store)
    in_memory = dmask.Model(stored.dataset.load())
    in_memory.dataset.encoding.pop("dmask_path", None)
    folder.apply_to_folder(stored, photo_folder, tmp_path / "a", crop="center")
    folder.apply_to_folder(in_memory, photo_folder, tmp_path / "b", crop="center")
    assert _outputs(tmp_path / "a") == _outputs(tmp_path / "b")


def test_interrupted_run_resumes_to_the_same_output(
    model_store, photo_folder, tmp_path, monkeypatch
):
    model = dmask.open_model(model_store)
    whole = tmp_path / "whole"
    folder.apply_to_folder(model, photo_folder, whole, crop="center", block=1)

    calls = []
    real_write = folder._write_png

    def failing_write(path, *args):
        if len(calls) == 5:
            raise KeyboardInterrupt
        real_write(path, *args)
        calls.append(path)

    resumed = tmp_path / "resumed"
    monkeypatch.setattr(folder, "_write_png", failing_write)
    # One thread: the five writes before the interrupt finish a file (its
    # aligned crop, two synthesised crops, two photographs; with several
    # threads, each could be one of several files in flight).
    with pytest.raises(KeyboardInterrupt), dask.config.set(num_workers=1):
        folder.apply_to_folder(model, photo_folder, resumed, crop="center", block=1)
    monkeypatch.setattr(folder, "_write_png", real_write)
    partial = _outputs(resumed)
    assert 0 < len(partial) < len(_outputs(whole))
    assert not [n for n in os.listdir(resumed) if n.endswith(".partial")]
    report = folder.apply_to_folder(model, photo_folder, resumed, crop="center")
    assert report.already_done >= 1
    assert report.written + report.already_done == 4
    assert _outputs(resumed) == _outputs(whole)
    again = folder.apply_to_folder(model, photo_folder, resumed, crop="center")
    assert again.already_done == 4 and again.written == 0


def test_distributed_run_equals_local(
    model_store, photo_folder, tmp_path, cluster_client
):
    model = dmask.open_model(model_store)
    folder.apply_to_folder(model, photo_folder, tmp_path / "local", crop="center")
    with cluster_client.as_current():
        folder.apply_to_folder(model, photo_folder, tmp_path / "cluster", crop="center")
        in_memory = dmask.Model(model.dataset.load())
        in_memory.dataset.encoding.pop("dmask_path", None)
        folder.apply_to_folder(in_memory, photo_folder, tmp_path / "mem", crop="center")
    assert _outputs(tmp_path / "local") == _outputs(tmp_path / "cluster")
    assert _outputs(tmp_path / "local") == _outputs(tmp_path / "mem")


def test_auto_crop_falls_back_to_the_centre(model_store, photo_folder, tmp_path):
    model = dmask.open_model(model_store)
    report = folder.apply_to_folder(model, photo_folder, tmp_path / "o", crop="auto")
    assert report.written == 4
    # The 40 x 40 square (<= 2 x 24) is a face crop already: taken whole, and
    # grey: its channel is copied to the model's three.
    centred = [n.split(":")[0] for n in report.notes if "centre crop" in n]
    assert sorted(centred) == ["a.png", "d.PNG", "nested/b.jpg"]
    assert [n for n in report.notes if "centre crop" not in n] == [
        "nested/deeper/c.png: 1 channel(s): copied to 3"
    ]


def test_bilinear_resize_and_stretched_display(model_store, photo_folder, tmp_path):
    model = dmask.open_model(model_store)
    out = tmp_path / "out"
    options = {"crop": "center", "resize": "bilinear", "display": "stretch"}
    report = folder.apply_to_folder(model, photo_folder, out, **options)
    assert report.written == 4
    for relative in GOOD:
        path = out / "crops" / "happy" / (os.path.splitext(relative)[0] + ".png")
        written = photographs.read_image(path).astype(int)
        assert written.min() == 0 and written.max() == 255
        expected = _expected(
            model, photo_folder, relative, "happy", "bilinear", "stretch"
        )
        assert np.abs(written - expected).max() <= 1
    shown = folder.read_synthesised(model, photo_folder, out, resize="bilinear")
    face = face_crops.prepare_face(
        photographs.read_image(photo_folder / "nested/deeper/c.png"),
        model.image_shape,
        crop="auto",
        channels=3,
        resize="bilinear",
    )
    np.testing.assert_allclose(shown["nested/deeper/c"].crop, minmax(face[None])[0])
    for bad, match in (({"resize": "cubic"}, "resize"), ({"display": "x"}, "display")):
        with pytest.raises(InputError, match=match):
            folder.apply_to_folder(model, photo_folder, tmp_path / "o", **bad)


def test_bad_folders_are_refused(model_store, photo_folder, tmp_path):
    model = dmask.open_model(model_store)
    with pytest.raises(InputError, match="inside the input folder"):
        folder.apply_to_folder(model, photo_folder, photo_folder / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files"):
        folder.apply_to_folder(model, tmp_path / "empty", tmp_path / "o")
    with pytest.raises(InputError, match="does not exist"):
        folder.apply_to_folder(model, tmp_path / "missing", tmp_path / "o")
    with pytest.raises(InputError, match="crop must be"):
        folder.apply_to_folder(model, photo_folder, tmp_path / "o", crop="magic")
    with pytest.raises(InputError, match="not in the model"):
        folder.apply_to_folder(model, photo_folder, tmp_path / "o", targets=["angry"])


def test_a_run_of_some_targets_is_read_back(model_store, photo_folder, tmp_path):
    model = dmask.open_model(model_store)
    out = tmp_path / "out"
    folder.apply_to_folder(model, photo_folder, out, crop="center", targets=["sad"])
    shown = folder.read_synthesised(model, photo_folder, out, crop="center")
    assert sorted(shown) == sorted(os.path.splitext(g)[0] for g in GOOD)
    for entry in shown.values():
        assert list(entry.crops) == ["sad"] and list(entry.photos) == ["sad"]
        assert entry.photo.shape[:2] == entry.photos["sad"].shape[:2]
        assert entry.crop.shape == entry.crops["sad"].shape == (24, 20, 3)


def test_default_block_spreads_task_costs_over_small_faces():
    """About 64 MiB of float64 faces and predictions per task, 16 to 256 files."""
    assert folder.default_block((128, 128), 3, 1, "synthesised") == 85
    assert folder.default_block((128, 128), 3, 2, "crop") == 56
    assert folder.default_block((16, 16), 1, 1, "crop") == folder.MAX_BLOCK
    assert folder.default_block((1024, 1024), 3, 1, "crop") == folder.MIN_BLOCK
    # photographs are held by their task: as many as before
    assert folder.default_block((128, 128), 3, 1, "both") == folder.MIN_BLOCK
