"""Folders of face photographs -> dataset stores."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from helpers import save_image as save
from PIL import Image

import dmask
from dmask.datasets import ingest as ingest_module
from dmask.datasets.drawing import render_face, subject_params
from dmask.datasets.ingest import ingest
from dmask.datasets.layouts import scan
from dmask.errors import InputError, StoreError
from dmask.io import dataset_store
from dmask.io.face_crops import prepare_face
from dmask.io.photographs import read_image

SIZE = (24, 24)
KDEF = {"neutral": "NE", "happy": "HA", "sad": "SA"}


def face(subject: int, expression: str, height: int = 36, width: int = 30):
    """A synthetic face as uint8 RGB."""
    image = render_face(subject_params(7, subject), expression, height, width)
    return np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)


def check_pixels(ds, folder: Path, size=SIZE, crop="center", channels=None) -> None:
    """Every stored sample equals prepare_face on its file."""
    channels = channels or ds.sizes["channel"]
    images = ds["images"].values
    for i, name in enumerate(ds["file"].values):
        expected = prepare_face(
            read_image(folder / str(name)), size, crop=crop, channels=channels
        )
        if images.dtype == np.uint16 and expected.dtype == np.uint8:
            expected = expected.astype(np.uint16) * 257
        np.testing.assert_array_equal(images[i], expected, err_msg=str(name))


def check_splits(ds) -> None:
    persons = ds["person"].values.astype(str)
    splits = ds["split"].values.astype(str)
    for person in set(persons):
        assert len(set(splits[persons == person])) == 1, person
    assert set(splits) <= {"train", "test"}


def report_text(out: Path) -> str:
    return Path(f"{out}.report.txt").read_text()


@pytest.fixture
def kdef_folder(tmp_path) -> Path:
    """KDEF names, one folder per subject, with every kind of problem."""
    root = tmp_path / "KDEF"
    subjects = ["AF01", "BF01", "AM02", "AF03", "AM04"]
    for number, subject in enumerate(subjects):
        for expression, code in KDEF.items():
            image = face(number, expression)
            save(root / subject / f"{subject}{code}S.JPG", image, quality=92)
            save(root / subject / f"{subject}{code}HL.JPG", image[:, ::-1])
    save(root / "AF01" / "AF01NEFR.JPG", face(0, "neutral"))
    # A subject missing its neutral face.
    save(root / "AM05" / "AM05HAS.JPG", face(5, "happy"))
    save(root / "AM05" / "AM05SAS.JPG", face(5, "sad"))
    # A duplicate (AF03 happy, second copy in another folder, sorts after).
    save(root / "extra" / "AF03HAS.png", face(3, "happy"))
    # A corrupt image, a non-image file with an image name, a stray text file.
    good = save(root / "AM04" / "AM04SUS.JPG", face(4, "surprised"))
    good.write_bytes(good.read_bytes()[:300])
    (root / "AF03" / "AF03AFS.JPG").write_text("not a picture")
    (root / "notes.txt").write_text("KDEF notes")
    save(root / "readme.png", face(9, "neutral"))  # image, not a KDEF name
    return root


def test_kdef_folder(tmp_path, kdef_folder):
    out = tmp_path / "kdef.zarr"
    report = ingest(kdef_folder, out, size=SIZE, crop="center", seed=3)
    text = report_text(out)
    assert report.layout == "kdef"
    assert report.skipped_views == 16  # 15 half-left and one full-right
    assert report.unreadable == 2 and report.duplicates == 1
    assert report.subjects_kept == 5 and report.subjects_left_out == 1
    assert report.taken == 15 and report.train + report.test == 15
    assert "subject AM05 left out: no neutral image" in text
    assert "duplicate: extra/AF03HAS.png (subject AF03, happy; keeping" in text
    assert "not a KDEF file name: readme.png" in text
    assert "unreadable: AM04/AM04SUS.JPG: " in text
    assert "unreadable: AF03/AF03AFS.JPG: not an image file Pillow can read" in text
    assert "subject AF01 lacks" not in text
    assert text.strip().splitlines()[-1] == report.summary()
    assert report.lines[-1] == report.summary()

    ds = dataset_store.open_dataset(out)
    assert ds.sizes["sample"] == 15 and ds["images"].dtype == np.uint8
    assert ds["images"].shape[1:] == (*SIZE, 3)
    expressions = ds["expression"].values.astype(str).tolist()
    assert expressions == ["neutral"] * 5 + ["happy"] * 5 + ["sad"] * 5
    subjects = ds["subject"].values.astype(str).tolist()
    assert subjects[:5] == sorted(["AF01", "BF01", "AM02", "AF03", "AM04"])
    persons = dict(zip(subjects, ds["person"].values.astype(str), strict=True))
    assert persons["AF01"] == persons["BF01"] == "F01"
    assert ds["file"].values[0] == "AF01/AF01NES.JPG"
    assert ds.attrs["origin"] == "dmask ingest" and ds.attrs["layout"] == "kdef"
    assert ds.attrs["seed"] == 3 and ds.attrs["test_fraction"] == 0.25
    assert ds.attrs["value_range"] == [0, 255] and ds.attrs["size"] == list(SIZE)
    assert dataset_store.value_peak(ds) == 255.0
    check_splits(ds)
    check_pixels(ds, kdef_folder)

    # Same seed, same split; the split is per person (F01 in one split).
    again = tmp_path / "again.zarr"
    ingest(kdef_folder, again, size=SIZE, crop="center", seed=3)
    np.testing.assert_array_equal(
        dataset_store.open_dataset(again)["split"].values, ds["split"].values
    )

    # The store trains with the existing pipeline.
    sources, targets = dataset_store.select_pairs(
        ds, "neutral", ["happy", "sad"], "train"
    )
    model = dmask.fit(sources, targets, field=3, lam=0.4)
    predicted = model.predict(sources.values[:2])
    assert set(predicted) == {"happy", "sad"}
    assert predicted["happy"].shape == (2, *SIZE, 3)
    assert np.all(np.isfinite(predicted["happy"]))


def test_rafd_folder(tmp_path):
    root = tmp_path / "rafd"
    names = {"neutral": "neutral", "happy": "happy", "afraid": "fearful"}
    for ident in (1, 2, 3, 4):
        for expression, word in names.items():
            image = face(ident, expression)
            stem = f"Rafd090_{ident:02d}_Caucasian_female_{word}"
            save(root / f"{stem}_frontal.jpg", image)
            save(root / f"{stem}_left.jpg", image)
            save(root / f"Rafd045_{ident:02d}_Moroccan_male_{word}_frontal.jpg", image)
    save(root / "Rafd090_05_Kid_male_bored_frontal.jpg", face(5, "neutral"))
    out = tmp_path / "rafd.zarr"
    report = ingest(root, out, size=SIZE, crop="none", test_fraction=0.5, seed=1)
    assert report.layout == "rafd" and report.skipped_views == 24
    assert "unknown RaFD expression 'bored'" in report_text(out)
    ds = dataset_store.open_dataset(out)
    assert ds.sizes["sample"] == 12
    assert sorted(set(ds["expression"].values.astype(str))) == [
        "afraid",
        "happy",
        "neutral",
    ]
    assert ds["expression"].values.astype(str).tolist()[:4] == ["neutral"] * 4
    assert ds["subject"].values.astype(str).tolist()[:4] == [
        "rafd01",
        "rafd02",
        "rafd03",
        "rafd04",
    ]
    assert (ds["split"].values.astype(str) == "test").sum() == 6  # 2 of 4 persons
    check_splits(ds)
    check_pixels(ds, root, crop="none")


def test_pairs_folder_with_16_bit_and_gray(tmp_path):
    root = tmp_path / "pairs"
    for i in range(1, 5):
        save(root / "trainA" / f"face_{i}.png", face(i, "neutral"))
        if i < 4:
            save(root / "trainB" / f"face_{i}.png", face(i, "sad"))
    gray16 = (face(9, "sad")[..., 1].astype(np.uint16) * 257) + 3
    save(root / "trainB" / "face_2.png", gray16)  # replaces face_2 as 16-bit gray
    save(root / "trainB" / "smile.png", face(5, "sad"))  # no pair number
    for i in (1, 2):
        save(root / "testA" / f"x_{i}.png", face(10 + i, "neutral"))
        save(root / "testB" / f"x_{i}.png", face(10 + i, "sad"))
    out = tmp_path / "pairs.zarr"
    report = ingest(root, out, size=SIZE, crop="center", target_expression="sad")
    text = report_text(out)
    assert report.layout == "pairs" and report.subjects_kept == 5
    assert "subject train00004 left out: only a neutral image" in text
    assert "no pair number in file name: trainB/smile.png" in text
    ds = dataset_store.open_dataset(out)
    assert ds["images"].dtype == np.uint16 and ds.attrs["value_range"] == [0, 65535]
    assert dataset_store.value_peak(ds) == 65535.0
    subjects = ds["subject"].values.astype(str)
    splits = ds["split"].values.astype(str)
    assert set(splits[np.char.startswith(subjects, "test")]) == {"test"}
    assert set(splits[np.char.startswith(subjects, "train")]) == {"train"}
    check_pixels(ds, root, channels=3)
    stored = ds["images"].values[ds["file"].values.astype(str) == "trainB/face_2.png"]
    assert stored.shape == (1, *SIZE, 3) and np.all(
        stored[0, ..., 0] == stored[0, ..., 2]
    )


def test_manifest(tmp_path):
    photos = tmp_path / "photos"
    rows = ["path,subject,expression,split"]
    for s in range(4):
        for expression in ("neutral", "happy"):
            save(photos / f"p{s}_{expression}.png", face(s, expression, 30, 30))
            split = "test" if s == 3 else ""
            rows.append(f"p{s}_{expression}.png,s{s},{expression},{split}")
    save(photos / "abs.png", face(0, "sad", 30, 30))
    rows += [
        f"{photos / 'abs.png'},s0,Sadness,",
        "p0_neutral.png,s9",
        "gone.png,s8,neutral,",
        "p1_happy.png,s1,happy,validation",
        "p2_happy.png,,happy,",
        "",
    ]
    manifest = photos / "faces.csv"
    manifest.write_text("\n".join(rows) + "\n")
    out = tmp_path / "manifest.zarr"
    report = ingest(photos, out, manifest=manifest, size=SIZE, crop="none")
    text = report_text(out)
    assert report.layout == "manifest" and report.unmatched == 4
    assert f"manifest {manifest} line 11: expected 4 fields, got 2" in text
    assert "line 12: file not found: gone.png" in text
    assert "line 13: unknown split 'validation' (train or test)" in text
    assert "line 14: empty subject" in text
    assert "subject s1 lacks sad" in text
    ds = dataset_store.open_dataset(out)
    assert ds.sizes["sample"] == 9
    expressions = ds["expression"].values.astype(str).tolist()
    assert expressions == ["neutral"] * 4 + ["happy"] * 4 + ["sad"]
    subjects = ds["subject"].values.astype(str)
    splits = dict(zip(subjects, ds["split"].values.astype(str), strict=True))
    assert splits["s3"] == "test"  # explicit split wins
    assert list(splits.values()).count("test") >= 2  # one more drawn by the seed
    check_splits(ds)
    check_pixels(ds, photos, crop="none")

    bad = photos / "bad.csv"
    bad.write_text("path,subject,expression\ngone.png,s1,happy\nx,y\n")
    with pytest.raises(InputError, match=f"manifest {bad} has no usable row"):
        ingest(photos, tmp_path / "bad.zarr", manifest=bad, size=SIZE)
    bad.write_text("file,who,what\n")
    with pytest.raises(InputError, match="header"):
        ingest(photos, tmp_path / "bad.zarr", manifest=bad, size=SIZE)


def test_detect_keeps_a_real_face(tmp_path):
    from skimage.data import astronaut

    photos = tmp_path / "real"
    portrait = np.asarray(Image.fromarray(astronaut()).resize((256, 256)))
    save(photos / "astronaut_neutral.png", portrait)
    save(photos / "astronaut_happy.png", portrait[:, ::-1])
    save(photos / "wall_neutral.png", np.full((128, 128, 3), 120, np.uint8))
    save(photos / "wall_happy.png", np.full((128, 128, 3), 140, np.uint8))
    manifest = photos / "m.csv"
    manifest.write_text(
        "path,subject,expression\n"
        "astronaut_neutral.png,eileen,neutral\nastronaut_happy.png,eileen,happy\n"
        "wall_neutral.png,wall,neutral\nwall_happy.png,wall,happy\n"
    )
    out = tmp_path / "real.zarr"
    options = {"manifest": manifest, "size": (48, 48), "test_fraction": 0}
    report = ingest(photos, out, crop="detect", **options)
    assert report.no_face == 2 and report.subjects_kept == 1
    assert "no face found: wall_neutral.png" in report_text(out)
    ds = dataset_store.open_dataset(out)
    assert ds["subject"].values.astype(str).tolist() == ["eileen", "eileen"]
    assert set(ds["split"].values.astype(str)) == {"train"}
    check_pixels(ds, photos, size=(48, 48), crop="detect")

    # The default: at 64 pixels the 128-pixel squares (<= 2 x 64) are face
    # crops, taken whole; the 256-pixel portrait is larger: its face is found.
    auto = tmp_path / "auto.zarr"
    options["size"] = (64, 64)
    report = ingest(photos, auto, **options)
    assert report.no_face == 0 and report.precropped == 2
    assert report.subjects_kept == 2
    ds = dataset_store.open_dataset(auto)
    assert ds.attrs["crop"] == "auto"
    check_pixels(ds, photos, size=(64, 64), crop="auto")
    portrait_face = ds["images"].values[
        ds["file"].values.astype(str) == "astronaut_neutral.png"
    ]
    np.testing.assert_array_equal(
        portrait_face[0],
        prepare_face(portrait, (64, 64), crop="detect"),
    )


def test_split_is_per_person_and_seeded(tmp_path):
    root = tmp_path / "sessions"
    for ident in range(1, 9):
        for session in "AB":
            for expression in ("neutral", "happy"):
                code = KDEF[expression]
                save(
                    root / f"{session}M{ident:02d}{code}S.png", face(ident, expression)
                )
    splits = {}
    for seed in range(4):
        out = tmp_path / f"s{seed}.zarr"
        ingest(root, out, size=(16, 16), crop="none", test_fraction=0.5, seed=seed)
        ds = dataset_store.open_dataset(out)
        check_splits(ds)
        persons = ds["person"].values.astype(str)
        test = set(persons[ds["split"].values.astype(str) == "test"])
        assert len(test) == 4 and len(set(persons)) == 8
        assert len(set(ds["subject"].values.astype(str))) == 16
        splits[seed] = frozenset(test)
    assert len(set(splits.values())) > 1  # the seed decides


def test_scan_auto_layouts(tmp_path, kdef_folder):
    assert scan(kdef_folder).layout == "kdef"
    records = scan(kdef_folder, layout="kdef").records
    assert all(r.path.endswith("S.JPG") or r.path.endswith("S.png") for r in records)
    pairs = tmp_path / "p"
    save(pairs / "trainA" / "a_1.png", face(1, "neutral"))
    save(pairs / "trainB" / "a_1.png", face(1, "happy"))
    assert scan(pairs).layout == "pairs"
    with pytest.raises(InputError, match="cannot tell the layout"):
        scan(pairs / "trainA")
    with pytest.raises(InputError, match="layout"):
        scan(pairs, layout="cfee")
    with pytest.raises(InputError, match="both 'happy'"):
        scan(pairs, source="happy")


def test_bad_input(tmp_path, kdef_folder):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=f"{empty} has no image files"):
        ingest(empty, tmp_path / "e.zarr")
    with pytest.raises(InputError, match="does not exist"):
        ingest(tmp_path / "nowhere", tmp_path / "e.zarr")

    lonely = tmp_path / "lonely"
    for s in (1, 2):
        save(lonely / f"AF0{s}NES.JPG", face(s, "neutral"))
    with pytest.raises(InputError, match=r"no subject in .* has a neutral image"):
        ingest(lonely, tmp_path / "l.zarr", crop="center", size=SIZE)

    with pytest.raises(InputError, match="inside the input folder"):
        ingest(kdef_folder, kdef_folder / "out.zarr", crop="center")
    assert not (kdef_folder / "out.zarr").exists()

    mixed = tmp_path / "mixed"
    save(mixed / "AF01NES.png", face(1, "neutral", 36, 30))
    save(mixed / "AF01HAS.png", face(1, "happy", 40, 30))
    with pytest.raises(InputError) as info:
        ingest(mixed, tmp_path / "m.zarr", crop="none", size=None)
    message = str(info.value)
    assert "AF01NES.png is 36x30" in message and "AF01HAS.png is 40x30" in message
    assert not (tmp_path / "m.zarr").exists()
    report = ingest(mixed, tmp_path / "m.zarr", crop="center", size=None)
    assert dataset_store.open_dataset(report.store)["images"].shape[1:3] == (30, 30)

    with pytest.raises(StoreError, match="already exists"):
        ingest(mixed, tmp_path / "m.zarr", crop="center")
    ingest(mixed, tmp_path / "m.zarr", crop="center", size=(16, 16), overwrite=True)
    assert dataset_store.open_dataset(tmp_path / "m.zarr")["images"].shape[1:3] == (
        16,
        16,
    )

    for bad in (
        {"crop": "eyes"},
        {"size": (0, 10)},
        {"channels": 2},
        {"test_fraction": 1.0},
        {"margin": -0.1},
        {"layout": "cfee"},
        {"block": 0},
    ):
        with pytest.raises(InputError):
            ingest(mixed, tmp_path / "x.zarr", **bad)


def test_interrupted_ingest_is_incomplete(tmp_path, kdef_folder, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ingest_module, "write_samples", broken)
    out = tmp_path / "broken.zarr"
    with pytest.raises(RuntimeError, match="disk full"):
        ingest(kdef_folder, out, size=SIZE, crop="center")
    assert os.path.isdir(out) and not os.path.exists(f"{out}.report.txt")
    with pytest.raises(StoreError, match="incomplete"):
        dataset_store.open_dataset(out)


def test_blocks_and_gray_channels(tmp_path, kdef_folder):
    out = tmp_path / "gray.zarr"
    report = ingest(kdef_folder, out, size=SIZE, crop="center", channels=1, block=2)
    ds = dataset_store.open_dataset(out)
    assert ds["images"].shape == (report.taken, *SIZE, 1)
    check_pixels(ds, kdef_folder, channels=1)


def test_ingest_on_cluster_equals_threaded(tmp_path, cluster_client):
    from skimage.data import astronaut

    photos = tmp_path / "pairs"
    portrait = np.asarray(Image.fromarray(astronaut()).resize((200, 200)))
    for i in range(1, 4):
        shifted = np.roll(portrait, 4 * i, axis=1)
        save(photos / "trainA" / f"p_{i}.png", shifted)
        save(photos / "trainB" / f"p_{i}.jpg", shifted[:, ::-1], quality=90)
    local = ingest(photos, tmp_path / "local.zarr", size=(32, 32), block=2)
    with cluster_client.as_current():
        remote = ingest(photos, tmp_path / "remote.zarr", size=(32, 32), block=2)
    assert remote.taken == local.taken == 6 and remote.no_face == 0
    a = dataset_store.open_dataset(local.store)
    b = dataset_store.open_dataset(remote.store)
    np.testing.assert_array_equal(a["images"].values, b["images"].values)
    np.testing.assert_array_equal(a["split"].values, b["split"].values)
    check_pixels(b, photos, size=(32, 32), crop="detect")
