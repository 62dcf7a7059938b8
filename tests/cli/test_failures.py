"""Failures that used to end in a traceback, a hang or silence: one line each."""

from __future__ import annotations

import dask
import numpy as np
import pytest
from helpers import LOCAL_CLUSTER, cli_error, usage_error
from PIL import Image

import dmask
from dmask.cli import main
from dmask.cluster.clients import ClusterOptions
from dmask.datasets.synthetic import make_synthetic_dataset
from dmask.graph import fit_tasks
from dmask.io import dataset_store


@pytest.fixture(scope="module")
def model_path(faces, tmp_path_factory):
    ds = dataset_store.open_dataset(faces)
    src, tgt = dataset_store.select_pairs(ds, "neutral", ["happy"], "train")
    path = tmp_path_factory.mktemp("model") / "model.zarr"
    dmask.fit(src, tgt, field=3, store=path)
    return path


def test_a_damaged_image_chunk_names_the_store(capsys, faces, tmp_path):
    damaged = tmp_path / "damaged.zarr"
    make_synthetic_dataset(damaged, 6, (24, 20), seed=3, test_fraction=0.34)
    chunks = (damaged / "images").rglob("*")
    chunk = sorted(p for p in chunks if p.is_file() and p.name != "zarr.json")[0]
    data = bytearray(chunk.read_bytes())
    data[8:] = bytes(len(data) - 8)  # the same size: only decoding finds it
    chunk.write_bytes(bytes(data))
    message = cli_error(
        capsys, "train", damaged, "--out", tmp_path / "m.zarr", "--targets", "happy",
        *LOCAL_CLUSTER,
    )  # fmt: skip
    assert str(damaged) in message and "verify" in message


def test_a_scheduler_file_without_an_address(capsys, faces, tmp_path):
    empty = tmp_path / "s.json"
    empty.write_text("{}")
    message = cli_error(
        capsys, "train", faces, "--out", tmp_path / "m.zarr", "--scheduler-file", empty
    )
    assert str(empty) in message and "no scheduler address" in message


def test_images_too_large_for_memory_are_refused_at_once(capsys, tmp_path):
    message = cli_error(
        capsys, "synth", "--out", tmp_path / "f.zarr", "--subjects", "2", "--size",
        "100000", *LOCAL_CLUSTER, seconds=20,
    )  # fmt: skip
    assert "100000x100000" in message and "needs about" in message
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(photos / "AF01NES.JPG")
    message = cli_error(
        capsys, "ingest", photos, "--out", tmp_path / "i.zarr", "--size", "100000",
        *LOCAL_CLUSTER, seconds=20,
    )  # fmt: skip
    assert "100000x100000" in message and "needs about" in message


def test_open_model_of_nothing():
    with pytest.raises(dmask.InputError, match="path of a model store, got None"):
        dmask.open_model(None)


def test_a_failing_task_is_one_line_without_worker_logs(capsys, faces, tmp_path):
    message = cli_error(
        capsys, "train", faces, "--out", tmp_path / "m.zarr", "--lam", "1e-300",
        "--field", "5", "--targets", "happy", *LOCAL_CLUSTER,
    )  # fmt: skip
    assert "singular" in message


def test_an_unexpected_failure_is_one_line_with_exit_1(
    capsys, faces, model_path, monkeypatch
):
    def broken(*args, **kwargs):
        raise RuntimeError("something unforeseen")

    monkeypatch.setattr("dmask.evaluation.evaluate.evaluate", broken)
    message = cli_error(capsys, "evaluate", model_path, faces, *LOCAL_CLUSTER, code=1)
    assert "RuntimeError: something unforeseen" in message


def test_a_full_disk_names_the_store(faces, tmp_path, monkeypatch):
    ds = dataset_store.open_dataset(faces)
    src, tgt = dataset_store.select_pairs(ds, "neutral", ["happy"], "train")

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fit_tasks, "write_model_tile", full)
    with pytest.raises(
        OSError, match=r"No space left on device, writing tile .* of .*m\.zarr"
    ):
        dmask.fit(src, tgt, store=tmp_path / "m.zarr")


def test_outputs_and_inputs_checked_before_the_work(
    capsys, faces, model_path, tmp_path
):
    nowhere = tmp_path / "no" / "such" / "folder"
    message = cli_error(
        capsys,
        "evaluate",
        model_path,
        faces,
        "--csv",
        nowhere / "e.csv",
        *LOCAL_CLUSTER,
    )
    assert "does not exist" in message and "e.csv" in message
    message = cli_error(
        capsys, "train", faces, "--out", tmp_path / "m.zarr", "--performance-report",
        nowhere / "r.html", *LOCAL_CLUSTER,
    )  # fmt: skip
    assert "r.html" in message and not (tmp_path / "m.zarr").exists()
    message = usage_error(capsys, "tune", faces, "--sizes", "0", *LOCAL_CLUSTER)
    assert "--sizes" in message
    message = cli_error(
        capsys, "report", model_path, faces, "--out", tmp_path / "r.html",
        "--photographs", nowhere, tmp_path, *LOCAL_CLUSTER,
    )  # fmt: skip
    assert str(nowhere) in message


def test_a_configuration_section_that_is_not_a_mapping():
    with (
        dask.config.set({"dmask.cluster": 5}),
        pytest.raises(dmask.DmaskError, match=r"dmask\.cluster must be a mapping"),
    ):
        ClusterOptions.from_config()


def test_a_text_file_given_as_weights(capsys, tmp_path):
    text = tmp_path / "weights.npz"
    text.write_text("a note, not weights")
    message = cli_error(
        capsys, "import", text, "--out", tmp_path / "m.zarr", "--size", "24", "20"
    )
    assert "not a scipy.sparse .npz file" in message


def test_pngs_are_never_written_inside_a_store(capsys, model_path, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.zeros((24, 20, 3), np.uint8)).save(photos / "a.png")
    message = cli_error(
        capsys,
        "apply",
        model_path,
        photos,
        "--out",
        model_path / "pngs",
        *LOCAL_CLUSTER,
    )
    assert "inside the Zarr store" in message


def _interrupted_fit(monkeypatch, src, tgt, out, **kwargs) -> None:
    """A fit to ``out`` that fails after writing two of its four tiles."""
    real = fit_tasks.write_model_tile
    calls = []

    def flaky(*args, **kw):
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("interrupted")
        return real(*args, **kw)

    monkeypatch.setattr(fit_tasks, "write_model_tile", flaky)
    # one thread: no tile is still being written when the failure comes back
    with (
        dask.config.set(num_workers=1),
        pytest.raises(RuntimeError, match="interrupted"),
    ):
        dmask.fit(src, tgt, store=out, tile_shape=(12, 10), **kwargs)
    monkeypatch.undo()


def test_a_resumed_run_counts_the_problems_it_solved(
    capsys, faces, tmp_path, monkeypatch
):
    from dmask.io.model_store import read_model_progress

    ds = dataset_store.open_dataset(faces)
    src, tgt = dataset_store.stored_pairs(ds, "neutral", ["happy"], "train")
    out = tmp_path / "m.zarr"
    _interrupted_fit(monkeypatch, src, tgt, out)
    done = int(read_model_progress(out).tile_complete.sum())
    assert 0 < done < 4
    argv = [
        "train",
        faces,
        "--out",
        out,
        "--targets",
        "happy",
        "--resume",
        *LOCAL_CLUSTER,
    ]
    assert main([str(a) for a in argv]) == 0
    summary = next(x for x in capsys.readouterr().out.splitlines() if "summary" in x)
    assert f"problems solved {(4 - done) * 12 * 10 * 3}," in summary, summary


def test_a_configuration_file_with_a_section_that_is_not_a_mapping(
    capsys, faces, tmp_path
):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dmask:\n  cluster: 5\n")
    try:
        message = cli_error(
            capsys, "train", faces, "--out", tmp_path / "m.zarr", "--config", bad,
            *LOCAL_CLUSTER,
        )  # fmt: skip
    finally:
        dask.config.refresh()  # the file was merged into this process's config
    assert "dmask.cluster must be a mapping" in message


def test_a_resume_keeps_the_weights_dtype_of_its_store(faces, tmp_path, monkeypatch):
    ds = dataset_store.open_dataset(faces)
    src, tgt = dataset_store.stored_pairs(ds, "neutral", ["happy"], "train")
    out = tmp_path / "m32.zarr"
    _interrupted_fit(monkeypatch, src, tgt, out, weights_dtype="float32")
    with pytest.raises(dmask.InputError, match="holds float32 weights"):
        dmask.fit(src, tgt, store=out, tile_shape=(12, 10), resume=True)
    model = dmask.fit(src, tgt, store=out, resume=True, weights_dtype="float32")
    assert model.dataset["weight"].dtype == np.float32
    whole = dmask.fit(src, tgt, tile_shape=(12, 10))
    np.testing.assert_allclose(model.weights(), whole.weights(), rtol=1e-6, atol=1e-6)
