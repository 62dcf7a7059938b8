"""dmask.fit / Model.predict against the per-pixel reference, and tiling invariance."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from conftest import random_pairs
from reference import minmax, reference_fit, reference_predict

import dmask


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
    np.testing.assert_allclose(model.weights().values, ref_w, rtol=0, atol=1e-8)
    np.testing.assert_allclose(model.bias().values, ref_b, rtol=0, atol=1e-8)
    predicted = model.predict(new)
    assert isinstance(predicted, np.ndarray) and predicted.shape == new.shape
    expected = reference_predict(minmax(new), ref_w, ref_b, field)
    np.testing.assert_allclose(predicted, expected, rtol=0, atol=1e-8)


def test_normalize_none_matches_reference(rng):
    sources, targets = random_pairs(rng, 9, 6, 7, 2)
    sources, targets = sources / 255, targets / 255
    model = dmask.fit(sources, targets, field=3, lam=0.4, normalize="none")
    ref_w, ref_b = reference_fit(sources, targets, 3, 0.4)
    np.testing.assert_allclose(model.weights().values, ref_w, atol=1e-8, rtol=0)
    np.testing.assert_allclose(model.bias().values, ref_b, atol=1e-8, rtol=0)
    np.testing.assert_allclose(
        model.predict(sources), reference_predict(sources, ref_w, ref_b, 3), atol=1e-8
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
    np.testing.assert_allclose(
        tiled.weights().values, whole.weights().values, rtol=0, atol=1e-11
    )
    np.testing.assert_allclose(
        tiled.bias().values, whole.bias().values, rtol=0, atol=1e-11
    )
    np.testing.assert_allclose(
        tiled.predict(sources, sample_block=2), whole.predict(sources), atol=1e-11
    )


def test_several_targets_share_statistics(rng):
    sources, happy = random_pairs(rng, 10, 6, 8, 3)
    sad = np.sqrt(happy) + sources[:, ::-1]
    joint = dmask.fit(sources, {"happy": happy, "sad": sad}, field=3, tile_shape=(3, 3))
    assert joint.targets == ["happy", "sad"]
    for name, target in (("happy", happy), ("sad", sad)):
        alone = dmask.fit(sources, target, field=3)
        np.testing.assert_allclose(
            joint.weights(name).values, alone.weights().values, atol=1e-11, rtol=0
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
    np.testing.assert_allclose(
        from_dask.weights().values, reference.weights().values, atol=1e-11, rtol=0
    )
    dims = ("sample", "y", "x", "channel")
    xr_src = xr.DataArray(sources, dims=dims)
    from_xr = dmask.fit(xr_src, {"t": xr.DataArray(targets, dims=dims)}, field=3)
    np.testing.assert_allclose(
        from_xr.weights("t").values, reference.weights().values, atol=1e-11, rtol=0
    )
    out_dask = reference.predict(lazy_src)
    assert isinstance(out_dask, da.Array)
    out_xr = from_xr.predict(xr_src)["t"]
    assert isinstance(out_xr, xr.DataArray) and out_xr.dims == dims
    np.testing.assert_allclose(out_xr.values, out_dask.compute(), atol=1e-11)


def test_save_open_round_trip(rng, tmp_path):
    sources, targets = random_pairs(rng, 8, 7, 9, 3)
    model = dmask.fit(sources, {"a": targets, "b": sources}, field=3, tile_shape=(4, 4))
    model.save(tmp_path / "m.zarr")
    opened = dmask.open_model(tmp_path / "m.zarr")
    assert opened.targets == ["a", "b"]
    assert (opened.field, opened.lam, opened.normalize) == (3, 0.4, "minmax")
    assert isinstance(opened.dataset["weight"].data, da.Array)
    np.testing.assert_array_equal(opened.weights("a").values, model.weights("a").values)
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
    assert int(stored.dataset["tile_complete"].sum()) == 3 * 3
    np.testing.assert_array_equal(stored.weights().values, memory.weights().values)
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


def test_covariance_blocks_across_a_large_tile(rng):
    """Tiles larger than the 16-pixel GEMM blocks, with partial blocks at edges."""
    sources, targets = random_pairs(rng, 9, 37, 21, 2)
    reference = dmask.fit(sources, targets, field=7, method="displacement")
    for tile_shape in ((37, 21), (20, 13), (33, 17)):
        model = dmask.fit(sources, targets, field=7, tile_shape=tile_shape)
        np.testing.assert_allclose(
            model.weights().values, reference.weights().values, atol=1e-10, rtol=0
        )


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
