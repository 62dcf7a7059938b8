"""dmask.fit / Model.predict against the per-pixel reference, and tiling invariance."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from helpers import (
    EXACT,
    REFERENCE,
    REORDERED,
    CountingScheduler,
    assert_model_close,
    random_pairs,
)
from reference import minmax, reference_fit, reference_predict

import dmask
from dmask.io.model_store import read_model_progress


@pytest.mark.parametrize("method", ["covariance", "displacement"])
@pytest.mark.parametrize("field", [1, 3, 5, 7])
@pytest.mark.parametrize("shape", [(7, 10, 1), (9, 6, 3)])
@pytest.mark.parametrize("lam", [0.4, 5.0])
def test_fit_predict_match_reference(rng, field, shape, lam, method, backend):
    sources, targets = random_pairs(rng, 14, *shape)
    new = rng.random((3, *shape)) * 100
    model = dmask.fit(
        sources, targets, field=field, lam=lam, tile_shape=(4, 4), method=method
    )
    ref_w, ref_b = reference_fit(minmax(sources), minmax(targets), field, lam)
    assert_model_close(model, (ref_w, ref_b), atol=REFERENCE)
    predicted = model.predict(new)
    assert isinstance(predicted, np.ndarray) and predicted.shape == new.shape
    expected = reference_predict(minmax(new), ref_w, ref_b, field)
    np.testing.assert_allclose(predicted, expected, rtol=0, atol=REFERENCE)


def test_normalize_none_matches_reference(rng):
    sources, targets = random_pairs(rng, 9, 6, 7, 2)
    sources, targets = sources / 255, targets / 255
    model = dmask.fit(sources, targets, field=3, lam=0.4, normalize="none")
    ref_w, ref_b = reference_fit(sources, targets, 3, 0.4)
    assert_model_close(model, (ref_w, ref_b), atol=REFERENCE)
    np.testing.assert_allclose(
        model.predict(sources),
        reference_predict(sources, ref_w, ref_b, 3),
        atol=REFERENCE,
    )


@pytest.mark.parametrize("method", ["covariance", "displacement"])
@pytest.mark.parametrize(
    ("tile_shape", "sample_block"),
    [((1, 1), 1), ((2, 3), 4), ((5, 7), 3), ((64, 64), 100), ((3, 16), 2)],
)
def test_tiled_equals_untiled(rng, tile_shape, sample_block, method):
    sources, targets = random_pairs(rng, 11, 8, 13, 3)
    whole = dmask.fit(
        sources, targets, field=5, tile_shape=(8, 13), sample_block=11,
        method="displacement",
    )  # fmt: skip
    tiled = dmask.fit(
        sources, targets, field=5, tile_shape=tile_shape, sample_block=sample_block,
        method=method,
    )  # fmt: skip
    assert_model_close(tiled, whole, atol=REORDERED)
    np.testing.assert_allclose(
        tiled.predict(sources, sample_block=2), whole.predict(sources), atol=REORDERED
    )


def test_several_targets_share_statistics(rng):
    sources, happy = random_pairs(rng, 10, 6, 8, 3)
    sad = np.sqrt(happy) + sources[:, ::-1]
    joint = dmask.fit(sources, {"happy": happy, "sad": sad}, field=3, tile_shape=(3, 3))
    assert joint.targets == ["happy", "sad"]
    for name, target in (("happy", happy), ("sad", sad)):
        alone = dmask.fit(sources, target, field=3)
        assert_model_close(
            joint, alone, name, expected_target=None, atol=REORDERED, bias=False
        )
    predicted = joint.predict(sources[:2])
    assert set(predicted) == {"happy", "sad"}
    assert predicted["sad"].shape == (2, 6, 8, 3)


def test_dask_and_xarray_inputs(rng):
    sources, targets = random_pairs(rng, 8, 6, 5, 3)
    reference = dmask.fit(sources, targets, field=3)
    lazy_src = da.from_array(sources, chunks=(3, 4, 5, 3))
    lazy_tgt = da.from_array(targets, chunks=(5, 6, 2, 3))
    from_dask = dmask.fit(lazy_src, lazy_tgt, field=3, tile_shape=(4, 4))
    assert_model_close(from_dask, reference, atol=REORDERED, bias=False)
    dims = ("sample", "y", "x", "channel")
    xr_src = xr.DataArray(sources, dims=dims)
    from_xr = dmask.fit(xr_src, {"t": xr.DataArray(targets, dims=dims)}, field=3)
    assert_model_close(
        from_xr, reference, "t", expected_target=None, atol=REORDERED, bias=False
    )
    out_dask = reference.predict(lazy_src)
    assert isinstance(out_dask, da.Array)
    out_xr = from_xr.predict(xr_src)  # one target: a DataArray, labelled
    assert isinstance(out_xr, xr.DataArray) and out_xr.dims == dims
    assert out_xr.coords["target"].item() == "t"
    np.testing.assert_allclose(out_xr.values, out_dask.compute(), atol=REORDERED)


def test_save_open_round_trip(rng, tmp_path):
    sources, targets = random_pairs(rng, 8, 7, 9, 3)
    model = dmask.fit(sources, {"a": targets, "b": sources}, field=3, tile_shape=(4, 4))
    model.save(tmp_path / "m.zarr")
    opened = dmask.open_model(tmp_path / "m.zarr")
    assert opened.targets == ["a", "b"]
    assert (opened.field, opened.lam, opened.normalize) == (3, 0.4, "minmax")
    assert isinstance(opened.dataset["weight"].data, da.Array)
    assert_model_close(opened, model, "a", atol=0, bias=False)
    a = model.predict(sources)
    b = opened.predict(sources)
    np.testing.assert_array_equal(a["b"], b["b"])


def test_fit_to_store_equals_in_memory(rng, tmp_path):
    sources, targets = random_pairs(rng, 9, 10, 7, 3)
    memory = dmask.fit(sources, targets, field=3, tile_shape=(4, 3))
    stored = dmask.fit(
        sources, targets, field=3, tile_shape=(4, 3), store=tmp_path / "m.zarr"
    )
    assert stored.dataset.attrs["complete"] is True
    assert "tile_complete" not in stored.dataset
    assert int(read_model_progress(tmp_path / "m.zarr").tile_complete.sum()) == 3 * 3
    assert_model_close(stored, memory, atol=0, bias=False)
    np.testing.assert_array_equal(stored.predict(sources), memory.predict(sources))


def test_predict_is_lazy_until_computed(rng, tmp_path):
    sources, targets = random_pairs(rng, 6, 8, 8, 3)
    dmask.fit(sources, targets, field=3, tile_shape=(4, 4), store=tmp_path / "m.zarr")
    model = dmask.open_model(tmp_path / "m.zarr")

    def refuse(*args, **kwargs):
        raise AssertionError("computed while building a lazy prediction")

    import dask

    lazy = da.from_array(sources, chunks=(2, 8, 8, 3))
    with dask.config.set(scheduler=refuse):
        out = model.predict(lazy)
    assert isinstance(out, da.Array)
    assert out.shape == sources.shape
    assert np.isfinite(out.compute(scheduler="sync")).all()


def test_opened_model_computes_nothing_until_asked(rng, tmp_path):
    """open_model, weights and predict of dask or xarray images build graphs only.

    The counter sees every computation: the configured scheduler's and those
    dmask runs itself on the threaded one (a numpy prediction: exactly one for
    all targets), so zero means nothing was computed.
    """
    sources, targets = random_pairs(rng, 6, 8, 8, 3)
    named = {"a": targets, "b": np.sqrt(sources)}
    dmask.fit(sources, named, field=3, tile_shape=(4, 4), store=tmp_path / "m.zarr")
    dims = ("sample", "y", "x", "channel")
    with CountingScheduler() as counter:
        model = dmask.open_model(tmp_path / "m.zarr")
        weights, bias = model.weights("b"), model.bias("b")
        lam_map = model.lam_map("a")
        lazy = da.from_array(sources, chunks=(2, 8, 8, 3))
        from_dask = model.predict(lazy)
        from_lazy_xr = model.predict(xr.DataArray(lazy, dims=dims))
        from_numpy_xr = model.predict(xr.DataArray(sources, dims=dims))
        assert counter.calls == 0
        for array in (weights, bias, lam_map):
            assert isinstance(array.data, da.Array)
        assert set(from_dask) == {"a", "b"}
        for out in (from_lazy_xr, from_numpy_xr):  # a Dataset, target by target
            assert list(out["target"].values) == ["a", "b"]
            assert out["images"].dims == ("target", *dims)
        for name in ("a", "b"):
            assert isinstance(from_dask[name], da.Array)
            for out in (from_lazy_xr, from_numpy_xr):
                assert isinstance(out["images"].sel(target=name).data, da.Array)
        assert counter.calls == 0

        computed = from_dask["a"].compute()
        assert counter.calls == 1
        from_lazy_xr["images"].sel(target="b").compute()
        assert counter.calls == 2
        expected = model.predict(sources)  # numpy in, numpy out: computed at once
        assert counter.calls == 3
    np.testing.assert_allclose(computed, expected["a"], rtol=0, atol=REORDERED)


def test_covariance_blocks_across_a_large_tile(rng):
    """Tiles larger than the 16-pixel GEMM blocks, with partial blocks at edges."""
    sources, targets = random_pairs(rng, 9, 37, 21, 2)
    reference = dmask.fit(sources, targets, field=7, method="displacement")
    for tile_shape in ((37, 21), (20, 13), (33, 17)):
        model = dmask.fit(sources, targets, field=7, tile_shape=tile_shape)
        assert_model_close(model, reference, atol=EXACT, bias=False)


def test_phase_seconds_time_the_tasks(rng):
    from dmask.graph import timing

    sources, targets = random_pairs(rng, 12, 9, 10, 2)
    with timing.phase_seconds() as one_block:
        dmask.fit(sources, targets, field=3, tile_shape=(5, 5))
    with timing.phase_seconds() as blocks:
        dmask.fit(sources, targets, field=3, tile_shape=(5, 5), sample_block=4)
    assert set(one_block) == {"statistics", "solve", "write"}
    assert set(blocks) == {"statistics", "combine", "solve", "write"}
    assert all(seconds > 0 for seconds in [*one_block.values(), *blocks.values()])


def test_local_training_does_not_import_distributed():
    # No client can exist without distributed imported; importing it to ask
    # costs a local job half a second and 20 MiB.
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, dmask\n"
        "x = np.random.default_rng(0).random((6, 8, 8, 1))\n"
        "dmask.fit(x, x ** 2, field=3)\n"
        "assert 'distributed' not in sys.modules, 'distributed was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
