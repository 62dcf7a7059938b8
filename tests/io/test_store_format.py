"""Format 2 stores describe themselves; format 1 stores still open.

Format 2: text as zarr v3's variable-length ``string`` (never zarr-python's
``fixed_length_utf32``, which has no v3 specification), CF-style attributes on
every data variable, ``provenance`` (versions, UTC time, command, inputs), and
the tile bookkeeping in the ``progress`` subgroup, out of the data variables a
user sees with ``xarray.open_zarr``. Format 1 stores (what dmask wrote before)
are made here the old way: fixed-width text, ``tile_complete`` at the root.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

import dmask
from dmask.core.planning import plan_tiles
from dmask.datasets.synthetic import make_synthetic_dataset
from dmask.errors import InputError, StoreError
from dmask.io import dataset_store, integrity, model_store, stores
from dmask.io.statistics_store import open_statistics_store
from dmask.io.stores import FORMAT_VERSION, quiet_zarr
from dmask.statistics import keep_statistics, solve

TARGETS = ["happy", "sad"]


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, Path]:
    """A dataset, a model trained from it, and a statistics store with its model."""
    root = tmp_path_factory.mktemp("format")
    faces = root / "faces.zarr"
    make_synthetic_dataset(faces, 6, (24, 20), seed=3, test_fraction=0.34)
    ds = dataset_store.open_dataset(faces)
    src, tgt = dataset_store.stored_pairs(ds, "neutral", TARGETS, "train")
    dmask.fit(src, tgt, field=3, store=root / "model.zarr", tile_shape=(12, 10))
    info = keep_statistics(
        ds, root / "statistics.zarr", source="neutral", targets=TARGETS, field=3,
        tile_shape=(12, 10),
    )  # fmt: skip
    solve(info, 3, 0.4, store=root / "solved.zarr")
    names = ("faces", "model", "statistics", "solved")
    return {name: root / f"{name}.zarr" for name in names}


def _arrays(store: Path) -> Iterator[tuple[str, dict]]:
    """Every array's name (relative to the store) and its zarr.json."""
    for path in sorted(store.rglob("zarr.json")):
        meta = json.loads(path.read_text())
        if meta.get("node_type") == "array":
            yield path.parent.relative_to(store).as_posix(), meta


@contextlib.contextmanager
def warnings_are_errors() -> Iterator[None]:
    """``python -W error``, but for zarr's note that consolidated metadata (which
    dmask writes for fast opening) is not in the v3 specification."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        yield


@pytest.mark.parametrize("kind", ["faces", "model", "statistics", "solved"])
def test_text_is_variable_length_strings(written, kind):
    store = written[kind]
    types = {name: meta["data_type"] for name, meta in _arrays(store)}
    assert "fixed_length_utf32" not in json.dumps(types)
    text = {name for name, kind in types.items() if kind == "string"}
    assert "channel" in text
    assert (
        text
        >= {
            "faces": {"subject", "expression", "split"},
            "model": {"target"},
            "solved": {"target"},
            "statistics": {"target", "subject", "fingerprint"},
        }[kind]
    )
    for name in text:
        codecs = [c["name"] for c in dict(_arrays(store))[name]["codecs"]]
        assert codecs[0] == "vlen-utf8"
    with warnings_are_errors():  # what a user sees, without dmask's quiet_zarr
        opened = xr.open_zarr(store, zarr_format=3)
        assert opened["channel"].values.tolist() == ["R", "G", "B"]


def test_names_round_trip(written):
    faces = dataset_store.open_dataset(written["faces"])
    expected = make_synthetic_dataset(
        written["faces"].parent / "again.zarr", 6, (24, 20), seed=3,
        test_fraction=0.34,
    )  # fmt: skip
    for name in ("subject", "expression", "split", "channel"):
        values = faces[name].values
        assert values.dtype.kind == "U"  # dmask reads text as numpy's <U
        assert values.tolist() == expected[name].values.tolist()
    assert "neutral" in faces["expression"].values.tolist()
    model = dmask.open_model(written["model"])
    assert model.targets == TARGETS
    assert model.dataset.sel(target="sad")["weight"].shape[0] == 24
    with warnings_are_errors():
        raw = xr.open_zarr(written["model"], zarr_format=3)
        assert [str(t) for t in raw["target"].values] == TARGETS


@pytest.mark.parametrize("kind", ["faces", "model", "statistics"])
def test_every_data_variable_is_described(written, kind):
    with warnings_are_errors():
        ds = xr.open_zarr(written[kind], zarr_format=3)
    assert ds.data_vars
    for name, variable in ds.data_vars.items():
        assert variable.attrs.get("long_name"), name
        assert "units" in variable.attrs, name
    if kind == "faces":
        images = ds["images"].attrs
        assert (images["units"], images["valid_min"], images["valid_max"]) == (
            "1",
            0,
            255,
        )
        assert ds.attrs["value_range"] == [0, 255]
    if kind == "model":
        assert ds["weight"].attrs["units"] == "1"
        assert ds["offset_y"].attrs["units"] == "pixel"


def test_valid_range_does_not_mask_values(written, tmp_path):
    """Weights outside any range and predictions past white read back as written."""
    model = dmask.open_model(written["model"])
    weights = model.dataset["weight"].values
    assert weights.max() > 0 > weights.min()
    with warnings_are_errors():
        raw = xr.open_zarr(written["model"], zarr_format=3)
    np.testing.assert_array_equal(raw["weight"].values, weights)


def test_tile_bookkeeping_is_not_a_data_variable(written):
    with warnings_are_errors():
        model = xr.open_zarr(written["model"], zarr_format=3)
        statistics = xr.open_zarr(written["statistics"], zarr_format=3)
    assert set(model.data_vars) == {"weight", "bias"}
    assert "tile_y" not in model.dims
    assert set(statistics.data_vars) == {
        "pair_sums", "sums", "cross_sums", "target_sums", "target_squares", "count",
    }  # fmt: skip
    progress = model_store.read_model_progress(written["model"])
    assert progress.complete and progress.tile_complete.shape == (2, 2)
    assert progress.tile_complete.all()
    group = zarr.open_group(str(written["statistics"]), mode="r")
    assert np.asarray(group["progress/tile_complete"][...]).all()
    assert "tile_complete" not in dmask.open_model(written["model"]).dataset
    assert "tile_complete" not in open_statistics_store(written["statistics"])


def test_verify_decodes_the_bookkeeping_too(written):
    report = integrity.verify(written["model"])
    assert report.arrays == 7  # weight, bias, target, channel, 2 offsets, progress
    assert report.recorded > 0


def test_model_provenance(written):
    attrs = dmask.open_model(written["model"]).dataset.attrs
    assert attrs["format_version"] == FORMAT_VERSION == 2
    record = attrs["provenance"]
    json.dumps(record)
    assert set(record["versions"]) >= {
        "dmask", "dask", "distributed", "zarr", "xarray", "numpy",
    }  # fmt: skip
    assert record["versions"]["zarr"] == zarr.__version__
    assert record["versions"]["dmask"] == dmask.__version__
    created = datetime.datetime.fromisoformat(record["created"])
    assert record["created"].endswith("Z")
    assert created.utcoffset() == datetime.timedelta(0)
    age = datetime.datetime.now(datetime.UTC) - created
    assert datetime.timedelta(0) <= age < datetime.timedelta(hours=1)
    assert record["command"] is None  # the Python API
    assert record["dataset"] == {
        "path": str(written["faces"]),
        "fingerprint": attrs["training_fingerprint"],
    }
    solved = dmask.open_model(written["solved"]).dataset.attrs["provenance"]
    assert solved["statistics"] == str(written["statistics"])
    assert [d["path"] for d in solved["datasets"]] == [str(written["faces"])]
    for kind in ("faces", "statistics"):
        with warnings_are_errors():
            other = xr.open_zarr(written[kind], zarr_format=3).attrs["provenance"]
        assert other["versions"]["xarray"] == xr.__version__


def test_command_line_is_recorded(monkeypatch):
    assert stores.command_line() is None
    with stores.recording_command(["dmask", "train", "faces.zarr"]):
        assert stores.provenance()["command"] == ["dmask", "train", "faces.zarr"]
    monkeypatch.setattr(sys, "argv", ["/opt/venv/bin/dmask", "train", "x.zarr"])
    assert stores.command_line() == ["/opt/venv/bin/dmask", "train", "x.zarr"]


def test_a_saved_copy_keeps_where_it_came_from(written, tmp_path):
    model = dmask.open_model(written["model"])
    model.save(tmp_path / "copy.zarr")
    before = model.dataset.attrs["provenance"]
    after = dmask.open_model(tmp_path / "copy.zarr").dataset.attrs["provenance"]
    assert after["copied_from"] == str(written["model"])
    assert after["trained"] == before["created"]
    assert after["dataset"] == before["dataset"]


def test_weights_are_compressed_with_byte_shuffle(written):
    meta = dict(_arrays(written["model"]))["weight"]
    (codec,) = [c for c in meta["codecs"] if c["name"] == "blosc"]
    assert codec["configuration"]["cname"] == "lz4"
    assert codec["configuration"]["shuffle"] == "shuffle"
    assert codec["configuration"]["typesize"] == 8
    assert meta["data_type"] == "float64"  # exact weights stay the default


def test_float32_model_predicts_within_float32_rounding(written, tmp_path):
    model = dmask.open_model(written["model"])
    model.save(tmp_path / "f32.zarr", dtype="float32")
    small = dmask.open_model(tmp_path / "f32.zarr")
    assert small.dataset["weight"].dtype == np.float32
    assert small.dataset["bias"].dtype == np.float32
    meta = dict(_arrays(tmp_path / "f32.zarr"))["weight"]
    (codec,) = [c for c in meta["codecs"] if c["name"] == "blosc"]
    assert codec["configuration"]["typesize"] == 4

    def size(path: Path) -> int:
        return sum(
            f.stat().st_size for f in (path / "weight").rglob("*") if f.is_file()
        )

    assert size(tmp_path / "f32.zarr") < 0.7 * size(written["model"])
    faces = dataset_store.open_dataset(written["faces"])
    images = faces["images"].values[:4]
    exact, rounded = model.predict(images), small.predict(images)
    for name in TARGETS:
        assert rounded[name].dtype == np.float64
        np.testing.assert_allclose(rounded[name], exact[name], rtol=0, atol=1e-5)
        assert not np.array_equal(rounded[name], exact[name])
    out = dmask.fit(
        images, {"t": images[::-1]}, field=3, store=None, tile_shape=(12, 10)
    )
    out.save(tmp_path / "memory32.zarr", dtype=np.float32)
    assert dmask.open_model(tmp_path / "memory32.zarr").dataset["weight"].dtype == (
        np.float32
    )


def test_a_float32_template_takes_float64_tiles(tmp_path):
    path = model_store.create_model_template(
        tmp_path / "m.zarr", ["a"], (4, 6), 1, 1, (4, 3), {"field": 1},
        weights_dtype="float32",
    )  # fmt: skip
    tiles = plan_tiles((4, 6), (4, 3))
    weight = np.full((1, 4, 3, 1, 1), 1 / 3)
    model_store.write_model_tile(path, tiles[1], weight, weight[..., 0])
    with quiet_zarr():
        stored = zarr.open_group(str(path), mode="r")["weight"][...]
    assert stored.dtype == np.float32
    assert stored[0, 0, 4, 0, 0] == np.float32(1 / 3)
    progress = model_store.read_model_progress(path)
    assert progress.tile_complete.tolist() == [[False, True]]


def test_other_weight_dtypes_are_refused(written, tmp_path):
    model = dmask.open_model(written["model"])
    with pytest.raises(InputError, match="weights dtype must be one of"):
        model.save(tmp_path / "f16.zarr", dtype="float16")
    assert not (tmp_path / "f16.zarr").exists()


# -- format 1 ---------------------------------------------------------------


def _as_format_1(store: Path, old: Path) -> Path:
    """Copy a format 2 store as dmask wrote it before format 2.

    Text as numpy's fixed-width ``<U`` (zarr's ``fixed_length_utf32``),
    ``tile_complete`` a root array beside the data (all 1: written by a
    finished run), no CF attributes, no ``provenance``, ``format_version`` 1.
    """
    with quiet_zarr():
        ds = xr.open_zarr(store, zarr_format=3).load()
        group = zarr.open_group(str(store), mode="r")
        progress = (
            np.asarray(group["progress/tile_complete"][...])
            if "progress" in group
            else None
        )
    for name in list(ds.variables):
        chunks = ds[name].encoding.get("chunks")
        ds[name].attrs = {}
        ds[name].encoding = {"chunks": chunks} if chunks else {}
        if ds[name].dtype.kind in "OT":  # StringDType, as xarray reads text
            values = np.asarray(ds[name].values).astype(object).astype(str)
            if name in ds.indexes:
                ds = ds.assign_coords({name: values})
            else:
                ds[name] = ds[name].copy(data=values)
    if progress is not None:
        dims = (
            ("tile_y", "tile_x") if progress.ndim == 2 else ("fold", "tile_y", "tile_x")
        )
        ds["tile_complete"] = (dims, progress)
    attrs = {
        k: v for k, v in ds.attrs.items() if k not in ("provenance", "chunk_manifest")
    }
    ds.attrs = {**attrs, "format_version": 1}
    with quiet_zarr():
        ds.to_zarr(old, mode="w", zarr_format=3, consolidated=True)
    stores.finalize_store(old)
    return old


def test_format_1_fixture_is_written_the_old_way(written, tmp_path):
    old = _as_format_1(written["model"], tmp_path / "old.zarr")
    types = {name: meta["data_type"] for name, meta in _arrays(old)}
    assert types["target"]["name"] == "fixed_length_utf32"
    assert types["tile_complete"] == "uint8"
    assert not (old / "progress").exists()
    with quiet_zarr():
        assert "tile_complete" in xr.open_zarr(old, zarr_format=3).data_vars


def test_format_1_model_opens_predicts_and_converts(written, tmp_path):
    old = _as_format_1(written["model"], tmp_path / "old.zarr")
    model = dmask.open_model(old)
    assert model.dataset.attrs["format_version"] == 1
    assert model.targets == TARGETS
    assert set(model.dataset.data_vars) == {"weight", "bias"}
    new = dmask.open_model(written["model"])
    images = dataset_store.open_dataset(written["faces"])["images"].values[:3]
    a, b = model.predict(images), new.predict(images)
    for name in TARGETS:
        np.testing.assert_array_equal(a[name], b[name])
    progress = model_store.read_model_progress(old)
    assert progress.complete and progress.tile_complete.all()
    assert integrity.verify(old).recorded > 0
    model.save(tmp_path / "converted.zarr")  # how to convert: open, save
    converted = dmask.open_model(tmp_path / "converted.zarr")
    assert converted.dataset.attrs["format_version"] == 2
    assert "provenance" in converted.dataset.attrs
    types = {n: m["data_type"] for n, m in _arrays(tmp_path / "converted.zarr")}
    assert "fixed_length_utf32" not in json.dumps(types)
    assert "progress/tile_complete" in types


def test_format_1_dataset_and_statistics_open(written, tmp_path):
    faces = dataset_store.open_dataset(
        _as_format_1(written["faces"], tmp_path / "f.zarr")
    )
    assert faces.attrs["format_version"] == 1
    src, _ = dataset_store.pair_indices(faces, "neutral", TARGETS)
    assert len(src) == 4
    statistics = open_statistics_store(
        _as_format_1(written["statistics"], tmp_path / "s.zarr")
    )
    assert "tile_complete" not in statistics
    assert statistics["subject"].values.dtype.kind == "U"


def test_an_unfinished_format_1_model_resumes(written, tmp_path):
    old = _as_format_1(written["model"], tmp_path / "old.zarr")
    with quiet_zarr():
        group = zarr.open_group(str(old), mode="r+")
        group["tile_complete"][1, 1] = 0
        group.attrs["complete"] = False
        zarr.consolidate_metadata(str(old))
    progress = model_store.read_model_progress(old)
    assert progress.tile_complete.sum() == 3 and not progress.complete
    tile = plan_tiles((24, 20), (12, 10))[3]
    weight = np.zeros((2, 12, 10, 3, 9))
    model_store.write_model_tile(old, tile, weight, weight[..., 0])
    assert model_store.read_model_progress(old).tile_complete.all()


def test_a_newer_format_is_refused_naming_the_store(written, tmp_path):
    newer = tmp_path / "newer.zarr"
    shutil.copytree(written["model"], newer)
    with quiet_zarr():
        group = zarr.open_group(str(newer), mode="r+")
        group.attrs["format_version"] = 3
        zarr.consolidate_metadata(str(newer))
    with pytest.raises(StoreError) as caught:
        dmask.open_model(newer)
    message = str(caught.value)
    assert str(newer) in message and "format_version 3" in message
    assert "upgrade dmask" in message and "\n" not in message


def test_a_float32_model_applied_to_a_store(written, tmp_path):
    from dmask.apply.store import apply_to_store

    model = dmask.open_model(written["model"])
    model.save(tmp_path / "f32.zarr", dtype="float32")
    faces = dataset_store.open_dataset(written["faces"])
    exact = apply_to_store(model, faces, tmp_path / "exact.zarr")
    rounded = apply_to_store(
        dmask.open_model(tmp_path / "f32.zarr"), faces, tmp_path / "rounded.zarr"
    )
    np.testing.assert_allclose(
        rounded["images"].values, exact["images"].values, rtol=0, atol=1e-5
    )
    images = rounded["images"].attrs
    assert images["long_name"] and images["units"] == "1"
    assert "valid_max" not in images  # predictions may pass white: no valid range
    assert rounded["expression"].values.tolist()[0] == "happy"


def test_train_writes_float32_weights_when_asked(written, tmp_path):
    from helpers import LOCAL_CLUSTER

    from dmask.cli import main

    out = tmp_path / "m32.zarr"
    argv = ["train", str(written["faces"]), "--out", str(out), "--targets", "happy",
            "--weights-dtype", "float32", *LOCAL_CLUSTER]  # fmt: skip
    assert main(argv) == 0
    small = dmask.open_model(out)
    assert small.dataset["weight"].dtype == np.float32
    recorded = small.dataset.attrs["provenance"]  # main() says what ran it
    assert recorded["command"] == ["dmask", *argv]
    assert recorded["working_directory"] == os.getcwd()
    exact = dmask.fit(
        *dataset_store.select_pairs(
            dataset_store.open_dataset(written["faces"]), "neutral", ["happy"]
        ),
        field=3,
    )
    np.testing.assert_allclose(
        small.weights("happy"), exact.weights("happy"), rtol=1e-6, atol=1e-6
    )
    with pytest.raises(InputError, match="weights_dtype is for a model written"):
        dmask.fit(np.ones((3, 8, 8, 1)), np.ones((3, 8, 8, 1)), weights_dtype="float32")
