"""Weight files as the reference code and its sibling sparse methods write them.

Every file here is built in the reference's own format (scipy.sparse CSR
``d x (d + 1)``, bias last, saved with ``save_npz``) and applied the way the
reference applies it: the image as OpenCV reads it (blue, green, red), min-max
scaled over all its channels, then ``W_c @ [x_c; 1]`` for the file of channel
``c`` (or one file for every channel). dmask's predictions must agree.
"""

from __future__ import annotations

import datetime
import itertools
import logging
import os

import numpy as np
import pytest
import scipy.sparse as sp
from helpers import TIGHT, cli_error, random_pairs
from PIL import Image

import dmask
from dmask.cli import main
from dmask.errors import InputError
from dmask.graph import runtime
from dmask.interop import export_reference, import_reference


def reference_apply(matrices, bgr):
    """The reference's prediction of one BGR image ``(H, W, C)``, in BGR.

    ``matrices`` holds one CSR per BGR channel, or one for every channel.
    """
    height, width, channels = bgr.shape
    x = bgr.astype(np.float64)
    x = (x - x.min()) / (x.max() - x.min())
    out = np.empty_like(x)
    for c in range(channels):
        matrix = matrices[c] if len(matrices) > 1 else matrices[0]
        column = np.append(x[..., c].reshape(-1), 1.0)
        out[..., c] = (matrix @ column).reshape(height, width)
    return out


def window_matrix(rng, height, width, field):
    """A random CSR with every weight inside the ``field x field`` window."""
    d = height * width
    b = field // 2
    rows, cols, values = [], [], []
    for y in range(height):
        for x in range(width):
            for dy in range(-b, b + 1):
                for dx in range(-b, b + 1):
                    if 0 <= y + dy < height and 0 <= x + dx < width:
                        rows.append(y * width + x)
                        cols.append((y + dy) * width + x + dx)
                        values.append(rng.normal() / field)
            rows.append(y * width + x)
            cols.append(d)
            values.append(rng.normal())
    return sp.csr_matrix((values, (rows, cols)), shape=(d, d + 1))


def scattered_matrix(rng, side, nonzeros):
    """Like OMP's: ``nonzeros`` weights per output pixel anywhere in the image."""
    d = side * side
    cols = np.stack([rng.choice(d, nonzeros, replace=False) for _ in range(d)])
    rows = np.repeat(np.arange(d), nonzeros + 1)
    cols = np.hstack([cols, np.full((d, 1), d)])
    values = rng.normal(size=cols.shape) / nonzeros
    return sp.csr_matrix((values.ravel(), (rows, cols.ravel())), shape=(d, d + 1))


def save(folder, matrices, stem="mr_weights_20200101"):
    os.makedirs(folder, exist_ok=True)
    paths = []
    for c, matrix in enumerate(matrices, start=1):
        path = os.path.join(folder, f"{stem}_{c}.npz")
        sp.save_npz(path, matrix)
        paths.append(path)
    return paths


def predict_rgb(model, rgb):
    return np.asarray(model.predict(rgb[None]))[0]


@pytest.mark.parametrize("shape, field", [((9, 7), 3), ((6, 10), 5)])
def test_bgr_files_import_and_apply_like_the_reference(
    rng, tmp_path, caplog, shape, field
):
    height, width = shape
    matrices = [window_matrix(rng, height, width, field) for _ in range(3)]  # B, G, R
    paths = save(tmp_path / "ref", matrices)
    with caplog.at_level(logging.WARNING, logger="dmask.interop"):
        model = import_reference(paths, image_shape=shape)
    assert "B, G, R" in caplog.text
    assert model.kind == "field" and model.field == field and model.channels == 3
    rgb = rng.random((height, width, 3))
    expected = reference_apply(matrices, rgb[..., ::-1])[..., ::-1]
    np.testing.assert_allclose(predict_rgb(model, rgb), expected, rtol=0, atol=TIGHT)
    # the trap the option names: the files read as R, G, B predict otherwise
    wrong = import_reference(paths, image_shape=shape, channel_order="rgb")
    assert np.abs(predict_rgb(wrong, rgb) - expected).max() > 0.01


def test_one_file_for_every_channel(rng, tmp_path, caplog):
    matrix = window_matrix(rng, 8, 8, 3)
    path = tmp_path / "lsrf.npz"
    sp.save_npz(path, matrix)
    with caplog.at_level(logging.WARNING, logger="dmask.interop"):
        model = import_reference([path])
    assert "each of R, G and B" in caplog.text
    assert model.channels == 3 and model.dataset.attrs["shared_channels"] is True
    rgb = rng.random((8, 8, 3))
    expected = reference_apply([matrix], rgb[..., ::-1])[..., ::-1]
    np.testing.assert_allclose(predict_rgb(model, rgb), expected, rtol=0, atol=TIGHT)
    files = export_reference(model, tmp_path / "out")
    assert [p.name for p in files] == ["weights.npz", "manifest.json"]
    assert (sp.load_npz(files[0]) != matrix).nnz == 0
    grey = import_reference([path], channels=1)
    assert grey.channels == 1 and "shared_channels" not in grey.dataset.attrs


@pytest.mark.parametrize(
    "side, nonzeros, shared", [(80, 5, False), (128, 1, True), (128, 5, False)]
)
def test_scattered_sparse_weights(rng, tmp_path, side, nonzeros, shared):
    count = 1 if shared else 3
    matrices = [scattered_matrix(rng, side, nonzeros) for _ in range(count)]
    paths = save(tmp_path / "omp", matrices)
    model = import_reference(paths)
    assert model.kind == "sparse" and model.slots == nonzeros
    assert model.field > 15  # the window these weights span
    rgb = rng.random((2, side, side, 3))
    got = np.asarray(model.predict(rgb))
    for s in range(2):
        expected = reference_apply(matrices, rgb[s, ..., ::-1])[..., ::-1]
        np.testing.assert_allclose(got[s], expected, rtol=0, atol=TIGHT)
    model.save(tmp_path / "omp.zarr")
    stored = dmask.open_model(tmp_path / "omp.zarr")
    assert stored.kind == "sparse"
    np.testing.assert_array_equal(np.asarray(stored.predict(rgb)), got)
    # exported back exactly, in the reference's names and channel order
    files = export_reference(stored, tmp_path / "back", naming="reference")
    date = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d")
    names = (
        [f"mr_weights_{date}.npz"]
        if shared
        else [f"mr_weights_{date}_{c}.npz" for c in (1, 2, 3)]
    )
    assert [p.name for p in files[:-1]] == names
    for written, original in zip(files[:-1], matrices, strict=True):
        back = sp.load_npz(written)
        assert back.shape == original.shape and (back != original).nnz == 0
    again = import_reference(tmp_path / "back")
    assert again.kind == "sparse"
    np.testing.assert_array_equal(np.asarray(again.predict(rgb)), got)


def test_kind_can_be_forced(rng, tmp_path):
    matrix = scattered_matrix(rng, 10, 2)
    paths = save(tmp_path / "w", [matrix])
    assert import_reference(paths).kind == "sparse"
    forced = import_reference(paths, kind="field")
    assert forced.kind == "field" and forced.field == 19
    local = save(tmp_path / "local", [window_matrix(rng, 10, 10, 3)])
    as_sparse = import_reference(local, kind="sparse")
    assert as_sparse.kind == "sparse" and as_sparse.slots == 9
    rgb = rng.random((10, 10, 3))
    np.testing.assert_allclose(
        predict_rgb(as_sparse, rgb),
        predict_rgb(import_reference(local), rgb),
        rtol=0,
        atol=TIGHT,
    )


def test_export_loaded_the_reference_way(rng, tmp_path):
    """dmask's MR model, exported, then loaded and applied as the reference does."""
    sources, targets = random_pairs(rng, 10, 7, 9, 3)
    model = dmask.fit(sources, targets, field=3, lam=0.4)
    files = export_reference(model, tmp_path / "ref", naming="reference")
    matrices = [sp.load_npz(p) for p in sorted(files[:-1])]  # _1, _2, _3
    rgb = rng.random((7, 9, 3))
    expected = reference_apply(matrices, rgb[..., ::-1])[..., ::-1]
    np.testing.assert_allclose(predict_rgb(model, rgb), expected, rtol=0, atol=TIGHT)


def test_export_read_by_opencv(rng, tmp_path):
    """A photograph read by cv2.imread (BGR) through the exported files."""
    cv2 = pytest.importorskip("cv2")
    sources, targets = random_pairs(rng, 10, 12, 10, 3)
    model = dmask.fit(sources, targets, field=5, lam=0.4)
    files = export_reference(model, tmp_path / "ref", naming="reference")
    matrices = [sp.load_npz(p) for p in sorted(files[:-1])]
    pixels = rng.integers(0, 256, size=(12, 10, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "face.png")
    bgr = cv2.imread(str(tmp_path / "face.png"))
    reference = reference_apply(matrices, bgr)
    ours = predict_rgb(model, pixels.astype(np.float64))
    np.testing.assert_allclose(ours[..., ::-1], reference, rtol=0, atol=TIGHT)


def test_cross_channel_sparse_model_is_not_exported(rng, tmp_path):
    paths = save(tmp_path / "w", [scattered_matrix(rng, 6, 2)])
    model = import_reference(paths, kind="sparse")
    source = model.dataset["source"].values.copy()
    source[0, 2, 3, 1, 0] = 3 * 7 + 2  # output channel 1 reads input channel 2
    model.dataset["source"].values[...] = source
    with pytest.raises(InputError, match=r"\(2, 3\) channel 1 reads input channel 2"):
        export_reference(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_memory_is_estimated_before_import(rng, tmp_path, monkeypatch, capsys):
    paths = save(tmp_path / "w", [window_matrix(rng, 8, 8, 3) for _ in range(3)])
    monkeypatch.setattr(runtime, "available_memory", lambda: 10_000)
    with pytest.raises(InputError, match=r"needs about .* of memory, 10\.0 kB is free"):
        import_reference(paths, channel_order="bgr")
    out = tmp_path / "m.zarr"
    line = cli_error(capsys, "import", *paths, "--channel-order", "bgr", "--out", out)
    assert "of memory" in line and "is free" in line
    assert not out.exists() and not list(tmp_path.glob(".m.zarr*"))


def test_failed_save_leaves_no_store(rng, tmp_path, monkeypatch, capsys):
    from dmask.io import model_store

    paths = save(tmp_path / "w", [scattered_matrix(rng, 8, 3)])

    def broken(path, **attrs):
        raise OSError("disk full")

    monkeypatch.setattr(model_store, "finalize_store", broken)
    out = tmp_path / "m.zarr"
    line = cli_error(capsys, "import", *paths, "--channels", "1", "--out", out, code=1)
    assert "disk full" in line
    assert not out.exists()


def test_cli_import_export_options(rng, tmp_path, capsys, caplog):
    matrices = [scattered_matrix(rng, 20, 3) for _ in range(3)]
    paths = save(tmp_path / "w", matrices)
    out = tmp_path / "m.zarr"
    assert main(["import", *paths, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "kind='sparse'" in captured.out and "B, G, R" in caplog.text
    exported = tmp_path / "exp"
    assert (
        main(["export", str(out), "--out", str(exported), "--naming", "reference"]) == 0
    )
    date = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d")
    for c, original in enumerate(matrices, start=1):
        back = sp.load_npz(exported / "target" / f"mr_weights_{date}_{c}.npz")
        assert (back != original).nnz == 0
    rgb_out = tmp_path / "rgb"
    args = ["export", str(out), "--out", str(rgb_out), "--channel-order", "rgb"]
    assert main(args) == 0
    assert (sp.load_npz(rgb_out / "target" / "channel_0.npz") != matrices[2]).nnz == 0
    shared = tmp_path / "s.zarr"
    assert main(["import", paths[0], "--shared-channels", "--out", str(shared)]) == 0
    assert dmask.open_model(shared).dataset.attrs["shared_channels"] is True
    capsys.readouterr()
    line = cli_error(
        capsys, "import", *paths, "--shared-channels", "--out", tmp_path / "x.zarr",
        code=2,
    )  # fmt: skip
    assert "--shared-channels takes one weight file" in line


def test_channel_count_mismatch_is_refused(rng, tmp_path):
    from dmask.apply.folder import apply_to_folder

    paths = save(tmp_path / "w", [window_matrix(rng, 8, 8, 3)])
    grey = import_reference(paths, channels=1)
    with pytest.raises(InputError, match="8x8x3 but the model applies to 8x8x1"):
        grey.predict(rng.random((2, 8, 8, 3)))
    photos = tmp_path / "photos"
    photos.mkdir()
    pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(photos / "colour.png")
    report = apply_to_folder(grey, photos, tmp_path / "out", crop="none")
    assert report.written == 0
    assert report.problems == [
        "colour.png: 3 channels but the model applies to 1 "
        "(convert_channels / --convert-channels makes it grey)"
    ]
    converted = apply_to_folder(
        grey, photos, tmp_path / "out", crop="none", convert_channels=True
    )
    assert converted.written == 1


def test_sparse_model_on_a_folder_and_on_a_cluster(rng, tmp_path, cluster_client):
    from dmask.apply.folder import apply_to_folder

    matrices = [scattered_matrix(rng, 16, 4) for _ in range(3)]
    model = import_reference(save(tmp_path / "w", matrices))
    model.save(tmp_path / "m.zarr")
    stored = dmask.open_model(tmp_path / "m.zarr")
    photos = tmp_path / "photos"
    photos.mkdir()
    faces = rng.integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
    for i, face in enumerate(faces):
        Image.fromarray(face).save(photos / f"f{i}.png")
    report = apply_to_folder(stored, photos, tmp_path / "out", crop="none")
    assert report.written == 3
    for i, face in enumerate(faces):
        expected = reference_apply(matrices, face[..., ::-1])[..., ::-1]
        want = np.rint(np.clip(expected, 0, 1) * 255).astype(np.uint8)
        got = np.asarray(
            Image.open(tmp_path / "out" / "crops" / "target" / f"f{i}.png")
        )
        assert np.abs(got.astype(int) - want).max() <= 1
    local = np.asarray(stored.predict(faces.astype(np.float64), sample_block=2))
    with cluster_client.as_current():
        remote = np.asarray(stored.predict(faces.astype(np.float64), sample_block=2))
        on_folder = apply_to_folder(stored, photos, tmp_path / "remote", crop="none")
    np.testing.assert_array_equal(remote, local)
    assert on_folder.written == 3
    for i, kind in itertools.product(range(3), (("crops", "target"), ("target",))):
        name = os.path.join(*kind, f"f{i}.png")  # the crop and the photograph
        with (
            open(tmp_path / "out" / name, "rb") as a,
            open(tmp_path / "remote" / name, "rb") as b,
        ):
            assert a.read() == b.read()


def test_files_of_an_export_in_any_order(rng, tmp_path, caplog):
    matrices = [scattered_matrix(rng, 12, 3) for _ in range(3)]
    model = import_reference(save(tmp_path / "w", matrices))
    files = export_reference(model, tmp_path / "exp")[:-1]  # channel_0..2, RGB
    rgb = rng.random((12, 12, 3))
    expected = predict_rgb(model, rgb)
    for listed in (files, files[::-1], [files[1], files[0], files[2]]):
        again = import_reference(listed)
        np.testing.assert_array_equal(predict_rgb(again, rgb), expected)
    with pytest.raises(InputError, match="says they are 'rgb'"):
        import_reference(files, channel_order="bgr")
    # one file of the three is not the export's target: a bare shared file
    with caplog.at_level(logging.WARNING, logger="dmask.interop"):
        alone = import_reference(files[:1])
    assert "each of R, G and B" in caplog.text
    assert alone.dataset.attrs["shared_channels"] is True
    with pytest.raises(InputError, match="says its files are 'rgb'"):
        import_reference(tmp_path / "exp", channel_order="bgr")


def test_prediction_memory_is_checked_first(rng, tmp_path, monkeypatch):
    from dmask.apply.folder import apply_to_folder

    field = import_reference(save(tmp_path / "f", [window_matrix(rng, 8, 8, 5)]))
    slots = import_reference(save(tmp_path / "s", [scattered_matrix(rng, 8, 2)]))
    monkeypatch.setattr(runtime, "memory_per_thread", lambda: 1000)
    with pytest.raises(InputError, match=r"predicting with a 5x5 field needs about"):
        field.predict(rng.random((2, 8, 8, 3)))
    with pytest.raises(InputError, match="predicting with a sparse model of 2 slots"):
        slots.predict(rng.random((2, 8, 8, 3)))
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
        photos / "a.png"
    )
    with pytest.raises(InputError, match="each worker holds the model"):
        apply_to_folder(slots, photos, tmp_path / "out", crop="none")
    assert not (tmp_path / "out").exists()
