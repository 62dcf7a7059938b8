"""The reference implementation's dataset trees and preprocessing, ingested.

Its tree is ``dataset/train/trainA``, ``dataset/train/trainB``,
``dataset/test/testA``, ``dataset/test/testB`` of aligned face crops named
``name_<index>.png``, paired by index; it reads them with OpenCV and resizes
with ``INTER_LINEAR``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import save_image as save

from dmask.datasets.drawing import render_face, subject_params
from dmask.datasets.ingest import ingest
from dmask.datasets.layouts import detect_layout, scan
from dmask.errors import InputError
from dmask.io import dataset_store
from dmask.io.face_crops import resize_image
from dmask.io.photographs import read_image

#: Side of the drawn face crops (square, already "cropped and aligned").
SIDE = 48
SIZE = (24, 24)
#: Pair indices per split.
INDICES = {"train": [1, 2, 3, 5], "test": [4, 7]}


def crop(subject: int, expression: str, side: int = SIDE) -> np.ndarray:
    image = render_face(subject_params(11, subject), expression, side, side)
    return np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)


def reference_tree(root: Path, nested: bool = True, side: int = SIDE) -> Path:
    """``root/train/trainA/face_<i>.png`` ... (or ``root/trainA/...`` flat)."""
    for split, indices in INDICES.items():
        base = root / split if nested else root
        for i in indices:
            save(base / f"{split}A" / f"face_{i}.png", crop(i, "neutral", side))
            save(base / f"{split}B" / f"face_{i}.png", crop(i, "happy", side))
    return root


def pairs(ds) -> list[tuple[str, str, str, str]]:
    return sorted(
        zip(
            ds["subject"].values.astype(str),
            ds["expression"].values.astype(str),
            ds["split"].values.astype(str),
            ds["file"].values.astype(str),
            strict=True,
        )
    )


def expected_pairs(prefix: str = "", splits=("train", "test")):
    rows = []
    for split in splits:
        for i in INDICES[split]:
            for side, expression in (("A", "neutral"), ("B", "happy")):
                rows.append(
                    (
                        f"{split}{i:05d}",
                        expression,
                        split,
                        f"{prefix.format(split=split)}{split}{side}/face_{i}.png",
                    )
                )
    return sorted(rows)


def test_nested_reference_tree_with_default_options(tmp_path):
    root = reference_tree(tmp_path / "dataset")
    assert detect_layout(root) == "pairs"
    report = ingest(root, tmp_path / "faces.zarr", size=SIZE)
    assert report.layout == "pairs" and report.no_face == 0
    assert report.precropped == 12 and report.taken == 12
    assert report.train == 8 and report.test == 4
    ds = dataset_store.open_dataset(report.store)
    assert pairs(ds) == expected_pairs("{split}/")
    assert ds.attrs["crop"] == "auto" and ds.attrs["resize"] == "lanczos"
    first = ds["file"].values.astype(str).tolist().index("train/trainA/face_1.png")
    whole = resize_image(read_image(root / "train/trainA/face_1.png"), SIZE)
    np.testing.assert_array_equal(ds["images"].values[first], whole)


def test_either_half_alone_and_the_flat_tree(tmp_path):
    root = reference_tree(tmp_path / "dataset")
    train = ingest(root / "train", tmp_path / "train.zarr", size=SIZE)
    ds = dataset_store.open_dataset(train.store)
    assert pairs(ds) == expected_pairs(splits=("train",))
    assert train.test == 0 and train.train == 8
    test = ingest(root / "test", tmp_path / "test.zarr", size=SIZE)
    assert pairs(dataset_store.open_dataset(test.store)) == expected_pairs(
        splits=("test",)
    )
    flat = reference_tree(tmp_path / "flat", nested=False)
    report = ingest(flat, tmp_path / "flat.zarr", size=SIZE)
    assert pairs(dataset_store.open_dataset(report.store)) == expected_pairs()


def test_missing_halves_and_mixed_trees_are_refused(tmp_path):
    root = tmp_path / "dataset"
    save(root / "train" / "trainA" / "face_1.png", crop(1, "neutral"))
    with pytest.raises(InputError, match=r"dataset/train has trainA/ but no trainB/"):
        scan(root)
    save(root / "train" / "trainB" / "face_1.png", crop(1, "happy"))
    save(root / "test" / "testB" / "face_2.png", crop(2, "happy"))
    with pytest.raises(InputError, match=r"dataset/test has testB/ but no testA/"):
        ingest(root, tmp_path / "x.zarr")
    save(root / "test" / "testA" / "face_2.png", crop(2, "neutral"))
    save(root / "trainA" / "face_9.png", crop(9, "neutral"))
    with pytest.raises(InputError, match="both trainA/-style folders and train/"):
        scan(root)
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    with pytest.raises(InputError, match="cannot tell the layout"):
        scan(empty)
    with pytest.raises(InputError, match="neither at its top nor under train/"):
        scan(empty, layout="pairs")


def test_precropped_faces_with_every_default(tmp_path):
    """The user's case: ``dataset/train`` of aligned crops, no option given."""
    root = tmp_path / "dataset"
    for i in (1, 2, 3):
        save(root / "train" / "trainA" / f"x_{i}.png", crop(i, "neutral", 128))
        save(root / "train" / "trainB" / f"x_{i}.png", crop(i, "happy", 128))
    report = ingest(root / "train", tmp_path / "faces.zarr")
    assert report.taken == 6 and report.precropped == 6 and report.no_face == 0
    assert "face crops taken whole 6" in report.summary()
    ds = dataset_store.open_dataset(report.store)
    assert ds["images"].shape == (6, 128, 128, 3)
    np.testing.assert_array_equal(
        ds["images"].values[0], read_image(root / "train" / "trainA" / "x_1.png")
    )
    # Detection asked for explicitly still finds no drawn face.
    with pytest.raises(InputError, match="no subject"):
        ingest(root / "train", tmp_path / "detect.zarr", crop="detect")


def test_every_dropped_file_is_reported_even_when_ingest_fails(tmp_path):
    root = tmp_path / "dataset"
    a, b = root / "train" / "trainA", root / "train" / "trainB"
    save(a / "x_1.png", crop(1, "neutral"))  # its partner is unreadable
    broken = save(b / "x_1.png", crop(1, "happy"))
    broken.write_bytes(broken.read_bytes()[:100])
    save(a / "x_2.png", crop(2, "neutral"))  # no partner at all
    save(b / "x_3.png", crop(3, "happy"))  # no partner at all
    (a / "x_4.png").write_text("not a picture")
    save(b / "x_4.png", crop(4, "happy"))
    save(b / "smile.png", crop(5, "happy"))  # no index
    save(b / "x_6.png", np.full((200, 150, 3), 128, np.uint8))  # not a crop, no face
    save(a / "x_6.png", crop(6, "neutral"))
    out = tmp_path / "faces.zarr"
    with pytest.raises(InputError) as info:
        ingest(root, out, size=SIZE)
    message = str(info.value)
    report_path = f"{out}.report.txt"
    assert message.startswith(f"no subject in {root} has a neutral image")
    assert message.endswith(f"; see {report_path}") and "\n" not in message
    assert "unmatched names 1, unreadable 2, no face 1" in message
    assert not out.exists()
    text = Path(report_path).read_text()
    for line in [
        "no pair number in file name: train/trainB/smile.png",
        "unreadable: train/trainB/x_1.png: ",
        "unreadable: train/trainA/x_4.png: not an image file Pillow can read",
        "no face found: train/trainB/x_6.png",
        "subject train00001 left out: only a neutral image (train/trainA/x_1.png)",
        "subject train00002 left out: only a neutral image (train/trainA/x_2.png)",
        "subject train00003 left out: no neutral image (train/trainB/x_3.png)",
        "subject train00004 left out: no neutral image (train/trainB/x_4.png)",
        "subject train00006 left out: only a neutral image (train/trainA/x_6.png)",
    ]:
        assert line in text, line
    assert text.splitlines()[-1].startswith("ingest failed: no subject in")

    # Fixed, the same output works and the report is the new run's.
    save(b / "x_1.png", crop(1, "happy"))
    report = ingest(root, out, size=SIZE)
    assert report.subjects_kept == 1 and report.taken == 2
    assert Path(report_path).read_text().splitlines()[-1] == report.summary()


def test_unusable_tree_is_reported(tmp_path):
    root = tmp_path / "dataset"
    save(root / "train" / "trainA" / "front.png", crop(1, "neutral"))
    save(root / "train" / "trainB" / "side.png", crop(1, "happy"))
    with pytest.raises(InputError, match=r"no usable image .* unmatched names 2"):
        ingest(root, tmp_path / "faces.zarr")
    text = Path(f"{tmp_path / 'faces.zarr'}.report.txt").read_text()
    assert "no pair number in file name: train/trainA/front.png" in text


def test_jpeg_with_bilinear_resize_is_opencv(tmp_path):
    """cv2.imread -> BGR to RGB -> cv2.resize (INTER_LINEAR) within 1/255."""
    cv2 = pytest.importorskip("cv2")
    from skimage.data import astronaut

    root = tmp_path / "dataset"
    portrait = astronaut()[:480, 16:496]  # square
    for i in (1, 2):
        shifted = np.roll(portrait, 7 * i, axis=1)
        save(root / "trainA" / f"p_{i}.jpg", shifted, quality=85)
        save(root / "trainB" / f"p_{i}.jpg", shifted[:, ::-1], quality=85)
    for size, method, flag in [
        ((128, 128), "bilinear", cv2.INTER_LINEAR),
        ((200, 160), "bilinear", cv2.INTER_LINEAR),
        ((100, 100), "area", cv2.INTER_AREA),
    ]:
        out = tmp_path / f"{method}{size[0]}.zarr"
        report = ingest(root, out, size=size, resize=method, crop="none")
        ds = dataset_store.open_dataset(report.store)
        assert ds.attrs["resize"] == method
        for i, name in enumerate(ds["file"].values.astype(str)):
            bgr = cv2.imread(str(root / name))
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            theirs = cv2.resize(rgb, size[::-1], interpolation=flag).astype(int)
            difference = np.abs(ds["images"].values[i].astype(int) - theirs)
            assert difference.max() <= 1, (name, size, method)
    # Default crop (auto: at 240 pixels the 480-pixel square is a face crop).
    report = ingest(root, tmp_path / "auto.zarr", size=(240, 240), resize="bilinear")
    assert report.precropped == 4
    ds = dataset_store.open_dataset(report.store)
    rgb = cv2.cvtColor(cv2.imread(str(root / ds["file"].values[0])), cv2.COLOR_BGR2RGB)
    theirs = cv2.resize(rgb, (240, 240), interpolation=cv2.INTER_LINEAR)
    assert np.abs(ds["images"].values[0].astype(int) - theirs).max() <= 1
