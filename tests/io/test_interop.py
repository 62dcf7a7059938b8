"""Export to and import from the reference implementation's CSR weight files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
from helpers import EXACT, TIGHT, assert_model_close, random_pairs
from reference import minmax

import dmask
from dmask import interop
from dmask.errors import InputError
from dmask.interop import export_reference, import_reference
from dmask.io import reference


def dense_reference(weight: np.ndarray, bias: np.ndarray, field: int) -> np.ndarray:
    """The reference's d x (d+1) matrix of one channel, with plain loops."""
    height, width = bias.shape
    d = height * width
    b = field // 2
    matrix = np.zeros((d, d + 1))
    for i in range(height):
        for j in range(width):
            row = i * width + j
            for dy in range(-b, b + 1):
                for dx in range(-b, b + 1):
                    y, x = i + dy, j + dx
                    if 0 <= y < height and 0 <= x < width:
                        slot = (dy + b) * field + (dx + b)
                        matrix[row, y * width + x] = weight[i, j, slot]
            matrix[row, d] = bias[i, j]
    return matrix


def clipped_window_size(height: int, width: int, field: int) -> int:
    """Number of in-image window entries over all pixels (loops)."""
    b = field // 2
    total = 0
    for i in range(height):
        for j in range(width):
            rows = min(i + b, height - 1) - max(i - b, 0) + 1
            cols = min(j + b, width - 1) - max(j - b, 0) + 1
            total += rows * cols
    return total


def fitted(rng, shape, field, n_targets, lam=0.4):
    height, width, channels = shape
    sources, happy = random_pairs(rng, 12, height, width, channels)
    if n_targets == 1:
        targets = happy
    else:
        targets = {"happy": happy, "sad": np.sqrt(happy) + sources[:, ::-1]}
    return dmask.fit(sources, targets, field=field, lam=lam), sources


def as_dict(model, predicted):
    return predicted if isinstance(predicted, dict) else {model.targets[0]: predicted}


CASES = [
    pytest.param(field, shape, n_targets, id=f"r{field}-{'x'.join(map(str, shape))}"
                 f"-t{n_targets}")
    for field in (1, 3, 5)
    for shape, n_targets in (((7, 10, 1), 1), ((6, 5, 3), 2))
]  # fmt: skip


@pytest.mark.parametrize(("field", "shape", "n_targets"), CASES)
def test_export_matches_dense_reference(rng, tmp_path, field, shape, n_targets):
    model, _ = fitted(rng, shape, field, n_targets)
    height, width, channels = shape
    d = height * width
    new = rng.random((3, *shape)) * 90 + 5
    files = export_reference(model, tmp_path / "ref")

    manifest = json.loads((tmp_path / "ref" / "manifest.json").read_text())
    assert files[-1] == tmp_path / "ref" / "manifest.json"
    assert files[:-1] == [
        tmp_path / "ref" / name / f"channel_{c}.npz"
        for name in model.targets
        for c in range(channels)
    ]
    assert manifest["height"] == height and manifest["width"] == width
    assert manifest["channels"] == channels
    assert manifest["targets"] == model.targets
    assert manifest["field"] == field and manifest["lam"] == 0.4
    assert manifest["normalize"] == "minmax"
    assert manifest["single_target"] is (n_targets == 1)
    assert manifest["files"] == {
        name: [f"{name}/channel_{c}.npz" for c in range(channels)]
        for name in model.targets
    }

    predicted = as_dict(model, model.predict(new))
    scaled = minmax(new).reshape(len(new), d, channels)
    for name in model.targets:
        weight = model.weights(name).values
        bias = model.bias(name).values
        out = np.empty((len(new), d, channels))
        for c in range(channels):
            matrix = sp.load_npz(tmp_path / "ref" / name / f"channel_{c}.npz")
            assert sp.issparse(matrix) and matrix.format == "csr"
            assert matrix.shape == (d, d + 1) and matrix.dtype == np.float64
            # every in-image window entry and the bias are stored, nothing else
            assert matrix.nnz == clipped_window_size(height, width, field) + d
            expected = dense_reference(weight[:, :, c], bias[:, :, c], field)
            np.testing.assert_array_equal(matrix.toarray(), expected)
            augmented = np.hstack([scaled[:, :, c], np.ones((len(new), 1))])
            out[:, :, c] = (matrix @ augmented.T).T
        np.testing.assert_allclose(
            out.reshape(new.shape), predicted[name], rtol=0, atol=EXACT
        )


@pytest.mark.parametrize(("field", "shape", "n_targets"), CASES)
def test_round_trip_directory(rng, tmp_path, field, shape, n_targets):
    model, sources = fitted(rng, shape, field, n_targets)
    export_reference(model, tmp_path / "ref")
    back = import_reference(tmp_path / "ref")
    assert back.targets == model.targets
    assert back.field == field and back.lam == 0.4 and back.normalize == "minmax"
    assert back.image_shape == model.image_shape and back.channels == model.channels
    assert back.dataset.attrs["single_target"] is (n_targets == 1)
    assert back.dataset.attrs["training_fingerprint"] == "reference-import"
    assert back.dataset.attrs["n_samples"] == 0
    assert back.tile_shape == (min(64, shape[0]), min(64, shape[1]))
    np.testing.assert_array_equal(
        back.dataset["weight"].values, model.dataset["weight"].values
    )
    np.testing.assert_array_equal(
        back.dataset["bias"].values, model.dataset["bias"].values
    )
    np.testing.assert_array_equal(
        back.dataset["offset_y"].values, model.dataset["offset_y"].values
    )
    expected = as_dict(model, model.predict(sources))
    got = as_dict(back, back.predict(sources))
    assert list(got) == list(expected)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])


@pytest.mark.parametrize("field", [1, 3, 5])
def test_round_trip_file_list(rng, tmp_path, field):
    model, sources = fitted(rng, (7, 10, 3), field, 2)
    files = export_reference(model, tmp_path / "ref", target="sad")
    assert [p.parent.name for p in files[:-1]] == ["sad"] * 3
    assert not (tmp_path / "ref" / "happy").exists()
    # field inferred from the non-zeros, shape given (70 is not a square)
    back = import_reference(files[:-1], image_shape=(7, 10))
    assert back.targets == ["target"] and back.field == field
    assert back.lam == reference.UNKNOWN_LAM and back.normalize == "minmax"
    assert_model_close(back, model, expected_target="sad", atol=0)
    predicted = back.predict(sources)
    assert isinstance(predicted, np.ndarray)
    np.testing.assert_allclose(
        predicted, model.predict(sources)["sad"], rtol=0, atol=TIGHT
    )
    # an unknown lam survives another export and import
    again = import_reference(export_reference(back, tmp_path / "again")[-1].parent)
    assert again.lam == reference.UNKNOWN_LAM and again.targets == ["target"]
    assert_model_close(again, back, atol=0, bias=False)
    named = import_reference(
        [str(p) for p in files[:-1]], image_shape=(7, 10), field=7, targets=["sad"],
        lam=2.5, normalize="none",
    )  # fmt: skip
    assert named.targets == ["sad"] and named.field == 7
    assert named.lam == 2.5 and named.normalize == "none"
    assert isinstance(named.predict(sources), dict)
    # a larger field pads the window with zero weights
    padded = named.weights("sad").values.reshape(7, 10, 3, 7, 7)
    inner = model.weights("sad").values.reshape(7, 10, 3, field, field)
    b = (7 - field) // 2
    np.testing.assert_array_equal(padded[..., b : b + field, b : b + field], inner)
    assert np.count_nonzero(padded) == np.count_nonzero(inner)


def test_square_images_and_directory_target_subset(rng, tmp_path):
    model, _ = fitted(rng, (6, 6, 1), 3, 2)
    files = export_reference(model, tmp_path / "ref")
    single = import_reference(files[0])
    assert single.image_shape == (6, 6) and single.field == 3
    assert_model_close(single, model, expected_target="happy", atol=0, bias=False)
    subset = import_reference(tmp_path / "ref", targets=["sad"])
    assert subset.targets == ["sad"] and subset.lam == 0.4
    np.testing.assert_array_equal(subset.bias("sad").values, model.bias("sad").values)
    with pytest.raises(InputError, match="'angry' is not in"):
        import_reference(tmp_path / "ref", targets=["angry"])
    with pytest.raises(InputError, match="differs from"):
        import_reference(tmp_path / "ref", image_shape=(4, 9))


def test_hand_made_reference_weights(tmp_path):
    height, width = 4, 5
    d = height * width
    matrix = sp.lil_matrix((d, d + 1))
    matrix[7, 7] = 2.0  # pixel (1, 2) reads itself
    matrix[7, 9] = -1.0  # and (1, 4): two columns right
    matrix[0, d] = 0.5
    path = tmp_path / "w.npz"
    sp.save_npz(path, matrix.tocsr())
    model = import_reference(
        [path], image_shape=(height, width), channels=1, kind="field"
    )
    assert model.field == 5
    weight = model.weights().values
    assert weight[1, 2, 0, 2 * 5 + 2] == 2.0 and weight[1, 2, 0, 2 * 5 + 4] == -1.0
    assert np.count_nonzero(weight) == 2
    bias = model.bias().values
    assert bias[0, 0, 0] == 0.5 and np.count_nonzero(bias) == 1
    image = np.arange(d, dtype=float).reshape(1, height, width, 1)
    predicted = model.predict(image)
    assert predicted[0, 1, 2, 0] == pytest.approx(2 * 7 / 19 - 9 / 19)
    assert predicted[0, 0, 0, 0] == 0.5


def test_entry_outside_the_field_names_first_pixel(rng, tmp_path):
    model, _ = fitted(rng, (7, 10, 3), 3, 1)
    files = export_reference(model, tmp_path / "ref")
    d = 70

    def add(path, entries):
        coo = sp.load_npz(path).tocoo()
        rows = [*coo.row, *(r for r, _, _ in entries)]
        cols = [*coo.col, *(q for _, q, _ in entries)]
        data = [*coo.data, *(v for _, _, v in entries)]
        sp.save_npz(path, sp.csr_matrix((data, (rows, cols)), shape=(d, d + 1)))

    # channel 0: an explicit zero far away at pixel (0, 0) is not a weight, and
    # a real one at (4, 0); channel 1: the first, output (2, 3) reads (2, 6)
    add(files[0], [(0, 69, 0.0), (40, 0, 1.5)])
    add(files[1], [(2 * 10 + 3, 2 * 10 + 6, -0.25)])
    assert sp.load_npz(files[0]).nnz == sp.load_npz(files[2]).nnz + 2
    with pytest.raises(InputError) as caught:
        import_reference(tmp_path / "ref")
    message = str(caught.value)
    assert "\n" not in message
    assert "(2, 3)" in message and "channel 1" in message and "(2, 6)" in message
    assert "channel_1.npz" in message and "3x3" in message
    # as a field inferred from them the same files are accepted, 9 x 9 (a
    # far reach and few weights: auto would make it sparse)
    assert import_reference(files[:-1]).kind == "sparse"
    wider = import_reference(files[:-1], image_shape=(7, 10), kind="field")
    assert wider.field == 9
    assert wider.weights().values[4, 0, 0, 0 * 9 + 4] == 1.5


def test_refuses_bad_files(rng, tmp_path):
    model, _ = fitted(rng, (4, 6, 2), 3, 1)
    files = export_reference(model, tmp_path / "ref")
    text = tmp_path / "notes.npz"
    text.write_text("not a zip file")
    with pytest.raises(InputError, match=r"cannot read reference weights .*notes\.npz"):
        import_reference([files[0], text], image_shape=(4, 6))
    dense = tmp_path / "dense.npz"
    np.savez(dense, weights=np.zeros((24, 25)))
    with pytest.raises(InputError, match=r"cannot read reference weights .*dense\.npz"):
        import_reference([dense], image_shape=(4, 6))
    with pytest.raises(InputError, match="cannot read reference weights"):
        import_reference([tmp_path / "missing.npz"], image_shape=(4, 6))

    wrong = tmp_path / "wrong.npz"
    sp.save_npz(wrong, sp.csr_matrix((24, 24)))
    with pytest.raises(InputError, match=r"wrong\.npz have shape \(24, 24\)"):
        import_reference([wrong], image_shape=(4, 6))
    with pytest.raises(InputError, match=r"wrong\.npz have shape \(24, 24\)"):
        import_reference([wrong])
    other = tmp_path / "other.npz"
    sp.save_npz(other, sp.csr_matrix((30, 31)))
    with pytest.raises(InputError, match=r"expected \(24, 25\) for 4x6"):
        import_reference([files[0], other], image_shape=(4, 6))
    with pytest.raises(InputError, match=r"other\.npz have shape \(30, 31\) but"):
        import_reference([files[0], other])
    bare = [tmp_path / f"bare_{i}.npz" for i in range(2)]  # no manifest beside
    for path, exported in zip(bare, files[:-1], strict=True):
        path.write_bytes(exported.read_bytes())
    with pytest.raises(InputError, match="not a square image: pass image_shape"):
        import_reference(bare)
    assert import_reference(files[:-1]).image_shape == (4, 6)  # its manifest's
    nan = tmp_path / "nan.npz"
    sp.save_npz(nan, sp.csr_matrix(([np.nan], ([0], [24])), shape=(24, 25)))
    with pytest.raises(InputError, match=r"nan\.npz contain NaN"):
        import_reference([nan], image_shape=(4, 6))

    with pytest.raises(InputError, match="field must be an odd"):
        import_reference(files[:-1], image_shape=(4, 6), field=2)
    with pytest.raises(InputError, match="lam must be a positive"):
        import_reference(files[:-1], image_shape=(4, 6), lam=0.0)
    with pytest.raises(InputError, match="normalize must be one of"):
        import_reference(files[:-1], image_shape=(4, 6), normalize="zscore")
    with pytest.raises(InputError, match="one target"):
        import_reference(files[:-1], image_shape=(4, 6), targets=["a", "b"])
    with pytest.raises(InputError, match=r"has no manifest\.json"):
        import_reference(tmp_path)
    with pytest.raises(InputError, match="no reference weight files"):
        import_reference([])
    manifest = tmp_path / "ref" / "manifest.json"
    listing = json.loads(manifest.read_text())
    listing["files"]["target"][1] = "../../dense.npz"
    manifest.write_text(json.dumps(listing))
    with pytest.raises(InputError, match=r"lists '\.\./\.\./dense\.npz', not a path"):
        import_reference(tmp_path / "ref")
    manifest.write_text("{not json")
    with pytest.raises(InputError, match=r"cannot read .*manifest\.json"):
        import_reference(tmp_path / "ref")


def test_existing_out_dir_and_failed_export(rng, tmp_path, monkeypatch):
    model, _ = fitted(rng, (5, 4, 2), 3, 2)
    out = tmp_path / "ref"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match=r"ref already exists"):
        export_reference(model, out)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    with pytest.raises(InputError, match="'angry' is not in the model"):
        export_reference(model, tmp_path / "other", target="angry")
    assert not (tmp_path / "other").exists()

    real_save = sp.save_npz
    calls = []

    def failing_save(path, matrix, **kwargs):
        calls.append(path)
        if len(calls) % 3 == 0:  # the third file of each export
            raise OSError("disk full")
        real_save(path, matrix, **kwargs)

    monkeypatch.setattr(interop.sp, "save_npz", failing_save)
    with pytest.raises(OSError, match="disk full"):
        export_reference(model, out, overwrite=True)
    with pytest.raises(OSError, match="disk full"):
        export_reference(model, tmp_path / "fresh")
    monkeypatch.undo()
    # nothing half-written: the old directory is untouched, no new or temporary one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref"]
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]

    files = export_reference(model, out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref"]
    assert not (out / "keep.txt").exists() and all(p.is_file() for p in files)
    assert len(files) == 5


def test_saved_import_predicts_the_same(rng, tmp_path):
    model, _ = fitted(rng, (7, 10, 3), 5, 2)
    model.save(tmp_path / "model.zarr")
    stored = dmask.open_model(tmp_path / "model.zarr")  # dask-backed export
    export_reference(stored, tmp_path / "ref")
    imported = import_reference(tmp_path / "ref")
    imported.save(tmp_path / "imported.zarr")
    reopened = dmask.open_model(tmp_path / "imported.zarr")
    assert reopened.targets == ["happy", "sad"] and reopened.field == 5
    assert reopened.dataset.attrs["training_fingerprint"] == "reference-import"
    assert reopened.lam == 0.4
    np.testing.assert_array_equal(
        reopened.dataset["weight"].values, model.dataset["weight"].values
    )
    new = rng.random((4, 7, 10, 3)) * 100
    expected = model.predict(new)
    got = reopened.predict(new)
    for name in ("happy", "sad"):
        np.testing.assert_array_equal(got[name], expected[name])
