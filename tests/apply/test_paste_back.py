"""Photographs in, photographs out: alignment, paste-back and the output kinds."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

import dmask
from dmask.apply import folder
from dmask.core import alignment
from dmask.datasets import samples
from dmask.datasets.synthetic import make_synthetic_dataset
from dmask.errors import InputError
from dmask.io import face_crops, landmarks, model_store, photographs
from dmask.model import Model

CANONICAL = np.array(
    [[0.394, 0.485], [0.607, 0.485], [0.501, 0.589], [0.407, 0.66], [0.595, 0.66]]
)


def _identity_model(size=(64, 64), channels=3) -> Model:
    """A model whose every output pixel is its input pixel (centre tap 1)."""
    height, width = size
    weight = np.zeros((1, height, width, channels, 9))
    weight[..., 4] = 1.0  # the centre of the row-major 3 x 3 window
    attrs = model_store.ModelAttrs(
        field=3, lam=0.0, normalize="minmax", height=height, width=width,
        channels=channels, n_samples=1, single_target=False,
        training_fingerprint="identity", tile_shape=(height, width),
        landmarks=alignment.landmarks_attribute(CANONICAL, 1, "drawn"),
    ).to_dict()  # fmt: skip
    ds = model_store.model_dataset(
        weight, np.zeros((1, height, width, channels)), ["same"], 3, attrs
    )
    return Model(ds)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Photographs as people have them: colour, grey, 16-bit, JPEG, a cat, nested."""
    found = samples.sample_photographs()
    if "astronaut" not in found:
        pytest.skip("scikit-image's astronaut is not available")
    root = tmp_path_factory.mktemp("mixed")
    (root / "album").mkdir()
    astronaut = found["astronaut"]
    Image.fromarray(astronaut).save(root / "astronaut.png")
    grey = samples.sketch(astronaut)[..., 0]
    Image.fromarray(grey).save(root / "album" / "sketch.png")
    Image.fromarray(astronaut[:400, 60:460]).save(
        root / "album" / "crop.jpg", quality=95
    )
    deep = astronaut[::2, ::2, 0].astype(np.uint16) * 257
    Image.fromarray(deep).save(root / "deep.png")
    if "chelsea" in found:
        Image.fromarray(found["chelsea"]).save(root / "cat.png")
    return root


def _band_free(photo_shape, taken: face_crops.AlignedFace, size) -> np.ndarray:
    """Photograph pixels the pasted mask does not reach (its value is 0)."""
    mask = alignment.face_mask(size, taken.points)
    jj, ii = np.meshgrid(np.arange(photo_shape[1]), np.arange(photo_shape[0]))
    xs = taken.matrix[0, 0] * jj + taken.matrix[0, 1] * ii + taken.matrix[0, 2]
    ys = taken.matrix[1, 0] * jj + taken.matrix[1, 1] * ii + taken.matrix[1, 2]
    alpha = ndimage.map_coordinates(mask, [ys, xs], order=1, mode="constant")
    return alpha == 0


def test_identity_model_pasted_back_is_the_photograph(mixed, tmp_path):
    model = _identity_model()
    out = tmp_path / "out"
    report = folder.apply_to_folder(model, mixed, out)
    names = sorted(folder.scan_images(mixed))
    assert report.written == len(names) and not report.problems
    if landmarks.available():
        assert report.methods["landmarks"] >= 3
    for relative in names:
        original = photographs.read_image(mixed / relative)
        stem = os.path.splitext(relative)[0] + ".png"
        pasted = photographs.read_image(out / "same" / stem)
        # full size, same name; grey stays grey
        assert pasted.shape[:2] == original.shape[:2]
        peak = photographs.dtype_peak(original.dtype)
        want = face_crops.convert_channels(original, 3).astype(float) / peak
        got = face_crops.convert_channels(pasted, 3).astype(float) / 255
        taken = face_crops.align_face(
            face_crops.convert_channels(original, 3), (64, 64), "auto", CANONICAL
        )
        free = _band_free(original.shape, taken, (64, 64))
        assert free.mean() > 0.3
        outside = np.abs(got - want)[free]
        assert outside.max() <= 1 / 255 + 1e-9, relative  # untouched
        inside = np.abs(got - want)[~free]
        # inside: the face went through a 64 x 64 crop and back
        assert inside.mean() <= 0.05, (relative, inside.mean())
        assert (out / "crops" / "same" / stem).exists()
        assert (out / "aligned" / stem).exists()
    text = (out / "report.txt").read_text()
    assert "taken by:" in text
    if "cat.png" in names and landmarks.available():
        assert "note cat.png: no face found: centre crop" in text


def test_output_kinds_and_resume(mixed, tmp_path):
    model = _identity_model((32, 32))
    only = tmp_path / "photo"
    folder.apply_to_folder(model, mixed, only, output="photo", crop="center")
    written = sorted(
        os.path.relpath(os.path.join(d, f), only)
        for d, _, files in os.walk(only)
        for f in files
    )
    # besides the photographs: the report, and the records of finished batches
    meta = ("report.txt", ".dmask-progress/")
    assert all(w.startswith("same/") for w in written if not w.startswith(meta))
    crops = tmp_path / "crop"
    folder.apply_to_folder(model, mixed, crops, output="crop", crop="center")
    assert not (crops / "same").exists() and (crops / "crops" / "same").is_dir()
    again = folder.apply_to_folder(model, mixed, crops, output="crop", crop="center")
    assert again.written == 0 and again.already_done == again.scanned
    # asking for photographs too redoes the files that lack them
    both = folder.apply_to_folder(model, mixed, crops, output="both", crop="center")
    assert both.written == both.scanned
    with pytest.raises(InputError, match="output must be"):
        folder.apply_to_folder(model, mixed, tmp_path / "x", output="poster")


def test_synthesised_writes_only_the_synthesised_crops(mixed, tmp_path):
    """One PNG per input and target: the crops ``crop`` writes, no aligned copy."""
    model = _identity_model((32, 32))
    crops = tmp_path / "crop"
    folder.apply_to_folder(model, mixed, crops, output="crop", crop="center")
    only = tmp_path / "synthesised"
    report = folder.apply_to_folder(
        model, mixed, only, output="synthesised", crop="center"
    )
    written = sorted(
        os.path.relpath(os.path.join(d, f), only)
        for d, _, files in os.walk(only)
        for f in files
        if not d.startswith(str(only / ".dmask-progress"))
    )
    assert written == sorted(
        ["report.txt"]
        + [os.path.join("crops", "same", r) for r in _pngs(crops / "crops" / "same")]
    )
    assert len(written) == report.written + 1
    for relative in _pngs(only / "crops" / "same"):
        got = photographs.read_image(only / "crops" / "same" / relative)
        want = photographs.read_image(crops / "crops" / "same" / relative)
        np.testing.assert_array_equal(got, want)
    again = folder.apply_to_folder(
        model, mixed, only, output="synthesised", crop="center"
    )
    assert again.written == 0 and again.already_done == again.scanned
    # the aligned copies are missing: a run asking for them redoes every file
    more = folder.apply_to_folder(model, mixed, only, output="crop", crop="center")
    assert more.written == more.scanned


def _pngs(root) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(d, f), root)
        for d, _, files in os.walk(root)
        for f in files
    )


def test_a_run_reports_its_stages(mixed, tmp_path):
    model = _identity_model((32, 32))
    report = folder.apply_to_folder(model, mixed, tmp_path / "out", crop="center")
    assert set(report.stages) == set(folder.STAGES)
    assert all(seconds >= 0 for seconds in report.stages.values())
    for stage in ("decode", "crop", "predict", "paste", "encode"):
        assert report.stages[stage] > 0, stage


def test_a_model_records_its_training_faces_landmarks(tmp_path):
    ds = make_synthetic_dataset(tmp_path / "faces.zarr", 6, (32, 32))
    recorded = alignment.read_landmarks(ds.attrs)
    assert recorded is not None and ds.attrs["landmarks"]["measured"] == "drawn"
    sources = ds["images"].isel(sample=slice(0, 6)).values
    targets = ds["images"].isel(sample=slice(6, 12)).values
    model = dmask.fit(sources, targets, landmarks=ds.attrs["landmarks"])
    np.testing.assert_allclose(model.landmarks, recorded)
    stored = dmask.fit(
        sources, targets, landmarks=ds.attrs["landmarks"], store=tmp_path / "m.zarr"
    )
    np.testing.assert_allclose(
        dmask.open_model(tmp_path / "m.zarr").landmarks, recorded
    )
    assert stored.landmarks is not None
    # from an xarray input's attributes
    images = ds["images"].copy()
    images.attrs["landmarks"] = ds.attrs["landmarks"]
    from_attrs = dmask.fit(
        images.isel(sample=slice(0, 6)), images.isel(sample=slice(6, 12))
    )
    np.testing.assert_allclose(from_attrs.landmarks, recorded)
    assert dmask.fit(sources, targets).landmarks is None
    with pytest.raises(InputError, match="landmarks"):
        dmask.fit(sources, targets, landmarks={"points": ["nose"], "xy": [[0, 0]]})


def test_large_photographs_are_read_again_and_errors_stay_per_file(
    mixed, tmp_path, monkeypatch
):
    model = _identity_model((32, 32))
    held = folder.apply_to_folder(model, mixed, tmp_path / "held", output="photo")
    monkeypatch.setattr(folder, "HOLD_BYTES", 0)  # every photograph read again
    again = folder.apply_to_folder(model, mixed, tmp_path / "again", output="photo")
    assert held.written == again.written == held.scanned
    for relative in folder.scan_images(mixed):
        stem = os.path.splitext(relative)[0] + ".png"
        a = photographs.read_image(tmp_path / "held" / "same" / stem)
        b = photographs.read_image(tmp_path / "again" / "same" / stem)
        np.testing.assert_array_equal(a, b)
    # read back for reports, shrunk
    shown = folder.read_synthesised(model, mixed, tmp_path / "held", max_side=100)
    assert max(shown["astronaut"].photo.shape[:2]) == 100
    assert max(shown["astronaut"].photos["same"].shape[:2]) == 100
    real = face_crops.align_face

    def failing(image, *args, **kwargs):
        colour = not np.array_equal(image[..., 0], image[..., 1])
        if image.shape[:2] == (512, 512) and colour:  # astronaut.png
            raise ValueError("source points all coincide")
        return real(image, *args, **kwargs)

    monkeypatch.setattr(face_crops, "align_face", failing)
    report = folder.apply_to_folder(model, mixed, tmp_path / "bad", output="photo")
    assert report.problems == [
        "astronaut.png: cannot take the face: source points all coincide"
    ]
    assert report.written == report.scanned - 1


def test_a_cluster_aligns_and_pastes_as_one_process(mixed, tmp_path, cluster_client):
    """Worker processes load the landmark model themselves: the same files."""
    model = _identity_model((48, 48))
    local = folder.apply_to_folder(model, mixed, tmp_path / "local", block=2)
    with cluster_client.as_current():
        remote = folder.apply_to_folder(model, mixed, tmp_path / "remote", block=2)
    assert remote.methods == local.methods and remote.written == local.written
    for relative in folder.scan_images(mixed):
        stem = os.path.splitext(relative)[0] + ".png"
        for part in ("same", "crops/same", "aligned"):
            a = (tmp_path / "local" / part / stem).read_bytes()
            assert a == (tmp_path / "remote" / part / stem).read_bytes(), stem
