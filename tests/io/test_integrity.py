"""A missing or damaged chunk is an error naming the store and the chunk.

Zarr reads a missing chunk as its fill value, so without a manifest a model
that lost a weight chunk predicts NaN, and a dataset that lost an image chunk
trains on black faces, both with exit code 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import LOCAL_CLUSTER, cli_error

import dmask
from dmask.cli import main
from dmask.datasets.synthetic import make_synthetic_dataset
from dmask.io import dataset_store, integrity
from dmask.io.stores import quiet_zarr


@pytest.fixture
def faces(tmp_path):
    path = tmp_path / "faces.zarr"
    make_synthetic_dataset(path, 6, (24, 20), seed=3, test_fraction=0.34)
    return path


@pytest.fixture
def model_path(faces, tmp_path):
    ds = dataset_store.open_dataset(faces)
    src, tgt = dataset_store.select_pairs(ds, "neutral", ["happy", "sad"], "train")
    path = tmp_path / "model.zarr"
    dmask.fit(src, tgt, field=3, store=path, tile_shape=(12, 10))
    return path


def _chunks(store: Path, array: str) -> list[Path]:
    return sorted(
        p for p in (store / array).rglob("*") if p.is_file() and p.name != "zarr.json"
    )


def test_finished_stores_record_their_chunks(faces, model_path):
    for store in (faces, model_path):
        manifest = json.loads((store / integrity.MANIFEST).read_text())
        recorded = manifest["chunks"]
        assert recorded and all(size > 0 for size in recorded.values())
        for key, size in recorded.items():
            assert (store / key).stat().st_size == size
    assert integrity.check_manifest(model_path) == len(
        json.loads((model_path / integrity.MANIFEST).read_text())["chunks"]
    )


def test_a_missing_weight_chunk_is_refused_before_anything_is_written(
    capsys, faces, model_path, tmp_path
):
    lost = _chunks(model_path, "weight")[-1]
    lost.unlink()
    key = lost.relative_to(model_path).as_posix()
    with pytest.raises(dmask.StoreError, match=f"missing chunk {key}"):
        dmask.open_model(model_path)
    out = tmp_path / "out.zarr"
    message = cli_error(
        capsys, "apply", model_path, faces, "--out", out, *LOCAL_CLUSTER
    )
    assert str(model_path) in message and key in message
    assert not out.exists()
    message = cli_error(capsys, "evaluate", model_path, faces, *LOCAL_CLUSTER)
    assert "missing chunk" in message


def test_a_missing_image_chunk_is_refused_before_training(capsys, faces, tmp_path):
    lost = _chunks(faces, "images")[0]
    lost.unlink()
    out = tmp_path / "m.zarr"
    message = cli_error(capsys, "train", faces, "--out", out, *LOCAL_CLUSTER)
    assert "missing chunk" in message and str(faces) in message
    assert not out.exists()


def test_verify_decodes_every_chunk(capsys, model_path):
    assert main(["verify", str(model_path)]) == 0
    assert "ok" in capsys.readouterr().out
    damaged = _chunks(model_path, "bias")[0]
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2 :] = bytes(len(data) - len(data) // 2)  # same size, garbled
    damaged.write_bytes(bytes(data))
    message = cli_error(capsys, "verify", model_path)
    assert "bias" in message and "cannot be read" in message
    truncated = _chunks(model_path, "weight")[0]
    truncated.write_bytes(truncated.read_bytes()[:10])
    message = cli_error(capsys, "verify", model_path)
    assert "damaged chunk" in message


def test_stores_written_before_manifests_still_open(model_path):
    import zarr

    (model_path / integrity.MANIFEST).unlink()
    with pytest.raises(dmask.StoreError, match="lost its chunk manifest"):
        dmask.open_model(model_path)
    with quiet_zarr():  # as a store written before manifests
        group = zarr.open_group(str(model_path), mode="r+")
        del group.attrs["chunk_manifest"]
        zarr.consolidate_metadata(str(model_path))
    model = dmask.open_model(model_path)
    assert np.isfinite(model.weights("happy").values).all()
