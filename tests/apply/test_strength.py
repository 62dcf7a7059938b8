"""Expression strength: 0 is the input, 1 the model, in between a blend."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import TIGHT, random_pairs
from PIL import Image
from reference import minmax

import dmask
from dmask.apply.folder import apply_to_folder
from dmask.errors import InputError
from dmask.interop import import_reference


def _sparse_model(rng, tmp_path, shape):
    import scipy.sparse as sp

    height, width = shape
    d = height * width
    cols = rng.integers(0, d, size=(d, 3))
    rows = np.repeat(np.arange(d), 4)
    cols = np.hstack([cols, np.full((d, 1), d)])
    matrix = sp.csr_matrix(
        (rng.normal(size=cols.size) / 3, (rows, cols.ravel())), shape=(d, d + 1)
    )
    path = tmp_path / "w.npz"
    sp.save_npz(path, matrix)
    return import_reference([path], image_shape=shape, kind="sparse")


@pytest.mark.parametrize("kind", ["field", "sparse"])
@pytest.mark.parametrize("normalize", ["minmax", "none"])
def test_strength_blends_input_and_model(rng, tmp_path, kind, normalize):
    shape = (9, 7)
    sources, targets = random_pairs(rng, 10, *shape, 3)
    if kind == "field":
        model = dmask.fit(
            sources, targets, field=3, normalize=normalize, tile_shape=(4, 4)
        )
    else:
        model = _sparse_model(rng, tmp_path, shape)
        model.dataset.attrs["normalize"] = normalize
    x = sources[:4]
    seen = minmax(x) if normalize == "minmax" else x
    full = np.asarray(model.predict(x))
    np.testing.assert_array_equal(np.asarray(model.predict(x, strength=1)), full)
    zero = np.asarray(model.predict(x, strength=0))
    np.testing.assert_allclose(zero, seen, rtol=0, atol=TIGHT)
    for alpha in (0.5, 1.7):
        got = np.asarray(model.predict(x, strength=alpha, sample_block=3))
        want = seen + alpha * (full - seen)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)


def test_strength_in_folder_apply_and_refusals(rng, tmp_path):
    sources, targets = random_pairs(rng, 10, 8, 8, 3)
    model = dmask.fit(sources, targets, field=3)
    photos = tmp_path / "photos"
    photos.mkdir()
    face = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    Image.fromarray(face).save(photos / "a.png")
    report = apply_to_folder(model, photos, tmp_path / "zero", crop="none", strength=0)
    assert report.written == 1
    written = np.asarray(Image.open(tmp_path / "zero" / "crops" / "target" / "a.png"))
    shown = np.rint(minmax(face[None].astype(float))[0] * 255)
    assert np.abs(written.astype(int) - shown).max() <= 1
    # strength 0 pasted back: the photograph itself
    pasted = np.asarray(Image.open(tmp_path / "zero" / "target" / "a.png"))
    assert np.abs(pasted.astype(int) - face).max() <= 1
    half = apply_to_folder(model, photos, tmp_path / "half", crop="none", strength=0.5)
    assert half.written == 1
    predicted = np.asarray(model.predict(face[None].astype(float), strength=0.5))[0]
    want = np.rint(np.clip(predicted, 0, 1) * 255)
    got = np.asarray(Image.open(tmp_path / "half" / "crops" / "target" / "a.png"))
    got = got.astype(int)
    assert np.abs(got - want).max() <= 1
    for bad in (-0.5, float("nan"), "strong", True):
        with pytest.raises(InputError, match="strength must be"):
            model.predict(sources[:1], strength=bad)
    with pytest.raises(InputError, match="strength must be"):
        apply_to_folder(model, photos, tmp_path / "bad", crop="none", strength=-1)
    assert not (tmp_path / "bad").exists()


def test_cli_strength_on_a_store(tmp_path):
    from helpers import LOCAL_CLUSTER

    from dmask.cli import main
    from dmask.datasets.synthetic import make_synthetic_dataset
    from dmask.io import dataset_store

    faces = tmp_path / "f.zarr"
    make_synthetic_dataset(faces, 6, (16, 20), seed=2)
    model = tmp_path / "m.zarr"
    assert main(["train", str(faces), "--out", str(model), "--targets", "happy",
                 *LOCAL_CLUSTER]) == 0  # fmt: skip
    outputs = {}
    for alpha in ("0", "1", "0.5"):
        out = tmp_path / f"o{alpha}.zarr"
        assert main(["apply", str(model), str(faces), "--out", str(out),
                     "--strength", alpha, *LOCAL_CLUSTER]) == 0  # fmt: skip
        stored = dataset_store.open_dataset(out)
        assert stored.attrs["strength"] == float(alpha)
        outputs[alpha] = stored["images"].values.astype(np.float64)
    ds = dataset_store.open_dataset(faces)
    neutral = ds["images"].values[ds["expression"].values.astype(str) == "neutral"]
    np.testing.assert_allclose(outputs["0"], minmax(neutral), rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        outputs["0.5"], (outputs["0"] + outputs["1"]) / 2, rtol=0, atol=1e-6
    )
