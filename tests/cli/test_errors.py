"""Bad input: one-line errors, non-zero exits, nothing half-written as complete."""

from __future__ import annotations

import os

import numpy as np
import pytest
from helpers import error_lines, random_pairs

import dmask
from dmask.cli import main
from dmask.datasets.synthetic import make_synthetic_dataset
from dmask.graph import fit_tasks
from dmask.io import dataset_store, stores

LOCAL = ["--workers", "1", "--in-process", "--dashboard-address", ":0", "--no-progress"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *words: str) -> None:
    """A failure of the run: exit 1, one line naming ``words``."""
    assert code == 1, err
    lines = error_lines(err)
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture(scope="module")
def model_path(faces, tmp_path_factory):
    ds = dataset_store.open_dataset(faces)
    src, tgt = dataset_store.select_pairs(ds, "neutral", ["happy", "sad"], "train")
    path = tmp_path_factory.mktemp("model") / "model.zarr"
    dmask.fit(src, tgt, field=3, store=path)
    return path


# --------------------------------------------------------------------- Python API


def test_api_rejects_bad_settings(rng):
    sources, targets = random_pairs(rng, 4, 5, 5, 1)
    for field in (0, -3, 2, 4, 3.0, True):
        with pytest.raises(dmask.InputError, match="field"):
            dmask.fit(sources, targets, field=field)
    for lam in (0, -1, float("nan"), float("inf"), "x"):
        with pytest.raises(dmask.InputError, match="lam"):
            dmask.fit(sources, targets, lam=lam)
    with pytest.raises(dmask.InputError, match="normalize"):
        dmask.fit(sources, targets, normalize="zscore")
    with pytest.raises(dmask.InputError, match="method"):
        dmask.fit(sources, targets, method="magic")


def test_api_rejects_bad_arrays(rng):
    sources, targets = random_pairs(rng, 4, 5, 5, 3)
    with pytest.raises(dmask.InputError, match=r"targets has shape .* but sources"):
        dmask.fit(sources, targets[:, :4])
    with pytest.raises(dmask.InputError, match=r"targets\['b'\] has shape"):
        dmask.fit(sources, {"a": targets, "b": targets[:3]})
    with pytest.raises(dmask.InputError, match="sources must be 4-D"):
        dmask.fit(sources[0], targets[0])
    with pytest.raises(dmask.InputError, match="sources is empty"):
        dmask.fit(sources[:0], targets[:0])
    with pytest.raises(dmask.InputError, match="empty mapping"):
        dmask.fit(sources, {})
    bad = targets.copy()
    bad[2, 1, 1, 0] = np.nan
    with pytest.raises(
        dmask.InputError, match=r"targets has NaN or infinite.*sample 2"
    ):
        dmask.fit(sources, bad)
    bad = sources.copy()
    bad[1, 0, 0, 2] = np.inf
    with pytest.raises(
        dmask.InputError, match=r"sources has NaN or infinite.*sample 1"
    ):
        dmask.fit(bad, targets)


def test_api_rejects_images_of_another_size(rng):
    sources, targets = random_pairs(rng, 4, 6, 5, 3)
    model = dmask.fit(sources, targets)
    with pytest.raises(dmask.InputError, match="6x5x3"):
        model.predict(sources[:, :5])
    with pytest.raises(dmask.InputError, match="6x5x3"):
        model.predict(sources[..., :1])
    bad = sources.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(dmask.InputError, match="non-finite"):
        model.predict(bad)


def test_api_store_errors(rng, tmp_path):
    sources, targets = random_pairs(rng, 4, 6, 5, 3)
    model = dmask.fit(sources, targets)
    model.save(tmp_path / "m.zarr")
    with pytest.raises(dmask.StoreError, match="already exists"):
        model.save(tmp_path / "m.zarr")
    model.save(tmp_path / "m.zarr", overwrite=True)
    with pytest.raises(dmask.StoreError, match="does not exist"):
        dmask.open_model(tmp_path / "missing.zarr")
    os.makedirs(tmp_path / "junk.zarr")
    (tmp_path / "junk.zarr" / "zarr.json").write_text("{not json")
    with pytest.raises(dmask.StoreError, match="cannot read model store"):
        dmask.open_model(tmp_path / "junk.zarr")


def test_failed_training_leaves_an_incomplete_store(rng, tmp_path, monkeypatch):
    from dmask.io import model_store

    sources, targets = random_pairs(rng, 5, 8, 8, 1)
    calls = []
    real = model_store.write_model_tile

    def flaky(path, tile, weight, bias):
        calls.append(tile.index)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real(path, tile, weight, bias)

    monkeypatch.setattr(fit_tasks, "write_model_tile", flaky)
    with pytest.raises(RuntimeError, match="disk full"):
        dmask.fit(sources, targets, tile_shape=(4, 4), store=tmp_path / "m.zarr")
    with pytest.raises(dmask.StoreError, match="incomplete"):
        dmask.open_model(tmp_path / "m.zarr")


# ------------------------------------------------------------------ command line


def assert_usage_error(code: int, err: str, *words: str) -> None:
    """A usage error: exit 2, argparse's usage and a last line naming ``words``."""
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[0].startswith("usage: dmask"), err
    for word in words:
        assert word in lines[-1], lines[-1]


def test_cli_bad_settings(capsys, faces, tmp_path):
    out = tmp_path / "m.zarr"
    code, _, err = run_cli(capsys, "train", faces, "--out", out, "--field", "4", *LOCAL)
    assert_usage_error(code, err, "--field", "4")
    code, _, err = run_cli(capsys, "train", faces, "--out", out, "--lam", "0", *LOCAL)
    assert_usage_error(code, err, "--lam")
    code, _, err = run_cli(capsys, "train", faces, "--out", out, "--lam", "-2", *LOCAL)
    assert_usage_error(code, err, "--lam")
    assert not out.exists()


def test_cli_missing_and_unreadable_stores(capsys, tmp_path, model_path):
    missing = tmp_path / "nope.zarr"
    code, _, err = run_cli(capsys, "train", missing, "--out", tmp_path / "m", *LOCAL)
    assert_one_line_error(code, err, str(missing), "does not exist")
    junk = tmp_path / "junk.zarr"
    junk.mkdir()
    (junk / "zarr.json").write_text("garbage")
    code, _, err = run_cli(capsys, "train", junk, "--out", tmp_path / "m", *LOCAL)
    assert_one_line_error(code, err, str(junk))
    code, _, err = run_cli(
        capsys, "apply", model_path, model_path, "--out", tmp_path / "o", *LOCAL
    )
    assert_one_line_error(code, err, "not a dataset store")


def test_cli_existing_output(capsys, faces, model_path):
    code, _, err = run_cli(capsys, "train", faces, "--out", model_path, *LOCAL)
    assert_one_line_error(code, err, "already exists", "--overwrite")
    assert dmask.open_model(model_path).targets == ["happy", "sad"]


def test_cli_model_on_other_image_size(capsys, tmp_path, model_path):
    other = tmp_path / "other.zarr"
    make_synthetic_dataset(other, 2, (32, 20), test_fraction=0)
    code, _, err = run_cli(
        capsys, "apply", model_path, other, "--out", tmp_path / "o.zarr", *LOCAL
    )
    assert_one_line_error(code, err, "32x20x3", "24x20x3")
    assert not (tmp_path / "o.zarr").exists()


def _float_dataset(path, images, expressions, subjects):
    dataset_store.create_dataset_template(
        path,
        images.shape,
        (max(1, images.shape[0]), *images.shape[1:]),
        {
            "subject": subjects,
            "expression": expressions,
            "split": ["train"] * len(subjects),
        },
        {},
        dtype="float32",
    )
    if images.shape[0]:
        dataset_store.write_dataset_block(path, 0, images)
    stores.finalize_store(path)


def test_cli_nan_pixels(capsys, rng, tmp_path):
    images = rng.random((4, 8, 8, 3)).astype("float32")
    images[3, 2, 2, 1] = np.nan
    path = tmp_path / "nan.zarr"
    _float_dataset(path, images, ["neutral", "happy"] * 2, ["a", "a", "b", "b"])
    out = tmp_path / "m.zarr"
    code, _, err = run_cli(capsys, "train", path, "--out", out, *LOCAL)
    assert_one_line_error(code, err, "NaN")
    with pytest.raises(dmask.StoreError):
        dmask.open_model(out)


def test_cli_empty_dataset(capsys, tmp_path):
    path = tmp_path / "empty.zarr"
    _float_dataset(path, np.zeros((0, 8, 8, 3), "float32"), [], [])
    code, _, err = run_cli(capsys, "train", path, "--out", tmp_path / "m", *LOCAL)
    assert_one_line_error(code, err, "empty")


def test_cli_unknown_expression(capsys, faces, tmp_path):
    code, _, err = run_cli(
        capsys, "train", faces, "--out", tmp_path / "m", "--targets", "bored", *LOCAL
    )
    assert_one_line_error(code, err, "bored")


def test_cli_unwritable_output(capsys, faces, tmp_path):
    not_a_folder = tmp_path / "plain-file"
    not_a_folder.write_text("x")
    code, _, err = run_cli(
        capsys, "train", faces, "--out", not_a_folder / "m.zarr", *LOCAL
    )
    assert_one_line_error(code, err, "plain-file")


def test_a_store_is_never_overwritten_by_its_own_output(rng, tmp_path, capsys, faces):
    sources, targets = random_pairs(rng, 5, 8, 8, 3)
    model = dmask.fit(sources, targets, store=tmp_path / "m.zarr")
    with pytest.raises(dmask.StoreError, match="also an input"):
        model.save(tmp_path / "m.zarr", overwrite=True)
    assert np.isfinite(dmask.open_model(tmp_path / "m.zarr").weights().values).all()
    code, _, err = run_cli(
        capsys, "train", faces, "--out", faces, "--overwrite", *LOCAL
    )
    assert_one_line_error(code, err, "also an input")
    assert dataset_store.open_dataset(faces).sizes["sample"] == 42


def test_api_rejects_bad_tiles_and_blocks(rng):
    sources, targets = random_pairs(rng, 4, 6, 5, 1)
    with pytest.raises(dmask.InputError, match="tile_shape"):
        dmask.fit(sources, targets, tile_shape=(0, 4))
    with pytest.raises(dmask.InputError, match="sample_block"):
        dmask.fit(sources, targets, sample_block=0)
    model = dmask.fit(sources, targets)
    with pytest.raises(dmask.InputError, match="sample_block"):
        model.predict(sources, sample_block=0)


def test_cli_bad_memory_limit(capsys, faces, tmp_path):
    code, _, err = run_cli(
        capsys, "train", faces, "--out", tmp_path / "m.zarr", "--memory-limit",
        "bogus", "--workers", "1", "--dashboard-address", ":0",
    )  # fmt: skip
    assert_usage_error(code, err, "--memory-limit", "bogus")
