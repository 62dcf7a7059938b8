"""Statistics stores: solve from them, smaller fields, folds, updates, the commands.

Every model solved from kept statistics is compared with training from the
images (the same sample blocks: bit for bit) and with the per-pixel loops of
``tests/reference.py``.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import xarray as xr
from helpers import LOCAL_CLUSTER, REFERENCE, assert_model_close, random_pairs
from reference import minmax, reference_fit

import dmask
from dmask.cli import main
from dmask.core import sufficient
from dmask.datasets.synthetic import make_synthetic_dataset
from dmask.io import dataset_store
from dmask.statistics import keep_statistics, open_statistics, solve, update

#: Sums added in another order (folds, updates): far below any model difference.
REORDERED = 1e-12


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """9 subjects (6 training) of 22 x 17 RGB faces: non-square, odd sides."""
    path = tmp_path_factory.mktemp("faces") / "faces.zarr"
    make_synthetic_dataset(path, 9, (22, 17), seed=5, test_fraction=0.34)
    return dataset_store.open_dataset(path)


@pytest.fixture(scope="module")
def more_faces(tmp_path_factory):
    """4 other subjects (3 training) of the same size."""
    path = tmp_path_factory.mktemp("more") / "more.zarr"
    make_synthetic_dataset(path, 4, (22, 17), seed=11, test_fraction=0.25)
    return dataset_store.open_dataset(path)


TARGETS = ["happy", "sad"]


def _trained(ds, field, lam="0.4", index=None, **options):
    """Training from the images of ``ds`` (or samples ``index``)."""
    if index is None:
        src, tgt = dataset_store.stored_pairs(ds, "neutral", TARGETS)
    else:
        src = dataset_store.stored_images(ds, index[0])
        tgt = {n: dataset_store.stored_images(ds, i) for n, i in index[1].items()}
    lam = lam if lam in ("gcv", "loo") else float(lam)
    if options.get("channels") != "joint":
        options["method"] = "displacement"
    return dmask.fit(src, tgt, field=field, lam=lam, **options)


@pytest.mark.usefixtures("backend")
def test_solve_equals_training_for_every_smaller_field(faces, tmp_path):
    kept = keep_statistics(
        faces, tmp_path / "s.zarr", targets=TARGETS, field=5, tile_shape=(8, 6),
        sample_block=4,
    )  # fmt: skip
    assert kept.field == 5 and kept.folds == 1 and kept.counts.tolist() == [6]
    for field in (1, 3, 5):
        trained = _trained(faces, field, tile_shape=(8, 6), sample_block=4)
        solved = solve(tmp_path / "s.zarr", field, 0.4)
        for name in TARGETS:  # the same sums in the same order: bit for bit
            assert_model_close(solved, trained, name, atol=0, rtol=0)
    # and against the per-pixel loops
    src, tgt = dataset_store.pair_indices(faces, "neutral", TARGETS, "train")
    images = np.asarray(faces["images"].values)
    weights, bias = reference_fit(
        minmax(images[src]), minmax(images[tgt["sad"]]), 3, 0.4
    )
    assert_model_close(solve(kept, 3, 0.4), (weights, bias), "sad", atol=REFERENCE)


def test_gcv_from_statistics_equals_training(faces, tmp_path):
    keep_statistics(faces, tmp_path / "s.zarr", targets=TARGETS, field=3)
    trained = _trained(faces, 3, "gcv")
    solved = solve(tmp_path / "s.zarr", 3, "gcv", store=tmp_path / "m.zarr")
    for name in TARGETS:
        assert_model_close(solved, trained, name, atol=0, rtol=0)
        np.testing.assert_array_equal(solved.lam_map(name), trained.lam_map(name))
    assert solved.dataset.attrs["statistics"] == str(tmp_path / "s.zarr")


@pytest.mark.parametrize("channels", ["independent", "joint"])
def test_loo_from_statistics_equals_training(faces, more_faces, tmp_path, channels):
    path = tmp_path / "s.zarr"
    keep_statistics(
        faces, path, targets=TARGETS, field=5, sample_block=4, channels=channels
    )
    trained = _trained(faces, 3, "loo", sample_block=4, channels=channels)
    solved = solve(path, 3, "loo")  # the pairs read again from the dataset
    for name in TARGETS:
        assert_model_close(solved, trained, name, atol=0, rtol=0)
        np.testing.assert_array_equal(solved.lam_map(name), trained.lam_map(name))
    # after an update, from both datasets
    update(path, more_faces)
    both = solve(path, 3, "loo", lam_grid=(0.1, 1.0, 10.0))
    pairs = []
    for ds in (faces, more_faces):
        s, t = dataset_store.pair_indices(ds, "neutral", TARGETS)
        images = np.asarray(ds["images"].values)
        pairs.append((images[s], {n: images[i] for n, i in t.items()}))
    union = dmask.fit(
        np.concatenate([p[0] for p in pairs]),
        {n: np.concatenate([p[1][n] for p in pairs]) for n in TARGETS},
        field=3, lam="loo", lam_grid=(0.1, 1.0, 10.0), channels=channels,
    )  # fmt: skip
    for name in TARGETS:
        np.testing.assert_array_equal(both.lam_map(name), union.lam_map(name))
        assert_model_close(both, union, name, atol=REORDERED)


def test_loo_refuses_pairs_it_cannot_read_again(rng, faces, tmp_path):
    sources, targets = random_pairs(rng, 6, 9, 8, 1)
    dmask.fit(sources, targets, field=3, statistics=tmp_path / "a.zarr")
    with pytest.raises(dmask.InputError, match="given as arrays"):
        solve(tmp_path / "a.zarr", 3, "loo")
    copy = tmp_path / "faces.zarr"
    make_synthetic_dataset(copy, 9, (22, 17), seed=5, test_fraction=0.34)
    keep_statistics(dataset_store.open_dataset(copy), tmp_path / "s.zarr",
                    targets=TARGETS)  # fmt: skip
    make_synthetic_dataset(
        copy, 9, (22, 17), seed=6, test_fraction=0.34, overwrite=True
    )  # other faces, the same names
    with pytest.raises(dmask.InputError, match="changed since"):
        solve(tmp_path / "s.zarr", 3, "loo")


def test_fold_models_equal_training_without_the_fold(faces, tmp_path):
    kept = keep_statistics(
        faces, tmp_path / "s.zarr", targets=TARGETS, field=3, folds=3
    )
    assert kept.counts.tolist() == [2, 2, 2]
    subjects = np.asarray(faces["subject"].values).astype(str)
    src, tgt = dataset_store.pair_indices(faces, "neutral", TARGETS, "train")
    for fold in range(3):
        held = kept.subjects[kept.subject_folds == fold]
        keep = ~np.isin(subjects[src], held)
        index = (src[keep], {n: i[keep] for n, i in tgt.items()})
        trained = _trained(faces, 3, index=index)
        solved = solve(kept, 3, 0.4, exclude_folds=[fold])
        assert solved.dataset.attrs["n_samples"] == 4
        for name in TARGETS:
            assert_model_close(solved, trained, name, atol=REORDERED)
    with pytest.raises(dmask.InputError, match="leaves no pairs"):
        solve(kept, 3, 0.4, exclude_folds=[0, 1, 2])
    with pytest.raises(dmask.InputError, match="not 3"):
        solve(kept, 3, 0.4, exclude_folds=[3])


def test_update_then_solve_equals_training_on_the_union(faces, more_faces, tmp_path):
    path = tmp_path / "s.zarr"
    keep_statistics(faces, path, targets=TARGETS, field=3, folds=2)
    info = update(path, more_faces)
    assert info.counts.tolist() == [5, 4] and len(info.subjects) == 9
    pairs = []
    for ds in (faces, more_faces):
        s, t = dataset_store.pair_indices(ds, "neutral", TARGETS)
        images = np.asarray(ds["images"].values)
        pairs.append((images[s], {n: images[i] for n, i in t.items()}))
    sources = np.concatenate([p[0] for p in pairs])
    targets = {n: np.concatenate([p[1][n] for p in pairs]) for n in TARGETS}
    trained = dmask.fit(sources, targets, field=3, lam=0.4)
    solved = solve(path, 3, 0.4)
    for name in TARGETS:
        assert_model_close(solved, trained, name, atol=REORDERED)
    # the same subjects again: refused, the store as it was
    with pytest.raises(dmask.InputError, match="already counted"):
        update(path, more_faces)
    assert open_statistics(path).counts.tolist() == [5, 4]


def test_fit_keeps_statistics_and_equals_plain_training(rng, tmp_path):
    sources, targets = random_pairs(rng, 7, 13, 11, 3)
    plain = dmask.fit(sources, targets, field=3, lam=0.4)
    kept = dmask.fit(
        sources, targets, field=3, lam=0.4, statistics=tmp_path / "s.zarr",
        statistics_field=5,
    )  # fmt: skip
    assert kept.targets == plain.targets
    assert_model_close(kept, plain, atol=0, rtol=0)
    larger = solve(tmp_path / "s.zarr", 5, 1.0)
    assert_model_close(larger, dmask.fit(sources, targets, field=5, lam=1.0), atol=0)
    info = open_statistics(tmp_path / "s.zarr")
    assert info.subjects[0] == "sample-000000" and info.field == 5
    with pytest.raises(dmask.InputError, match="smaller than the field"):
        dmask.fit(
            sources, targets, field=5, statistics=tmp_path / "t.zarr",
            statistics_field=3,
        )  # fmt: skip
    with pytest.raises(dmask.InputError, match="loo"):
        dmask.fit(sources, targets, field=3, lam="loo", statistics=tmp_path / "u.zarr")
    assert not os.path.exists(tmp_path / "t.zarr")


def test_refusals_and_size(faces, tmp_path):
    info = keep_statistics(faces, tmp_path / "s.zarr", targets=TARGETS, field=3)
    with pytest.raises(dmask.InputError, match="up to 3"):
        solve(info, 5, 0.4)
    with pytest.raises(dmask.InputError, match="up to 3"):
        solve(info, 2, 0.4)
    with pytest.raises(dmask.StoreError, match="already exists"):
        keep_statistics(faces, tmp_path / "s.zarr", targets=TARGETS, field=3)
    with pytest.raises(dmask.InputError, match="folds must be between"):
        keep_statistics(faces, tmp_path / "t.zarr", targets=TARGETS, folds=7)
    assert not os.path.exists(tmp_path / "t.zarr")
    expected = sufficient.statistics_bytes((22, 17), 3, 3, 2)
    stored = xr.open_zarr(info.path)
    held = sum(stored[name].nbytes for name in sufficient.IMAGE_PARTS)
    assert held == expected


def test_distributed_solve_equals_local(faces, tmp_path, cluster_client):
    with cluster_client.as_current():
        info = keep_statistics(faces, tmp_path / "s.zarr", targets=TARGETS, field=3)
        remote = solve(info, 3, 0.4, store=tmp_path / "m.zarr")
    local = solve(info, 3, 0.4)
    for name in TARGETS:
        assert_model_close(remote, local, name, atol=0, rtol=0)


def test_commands(faces, more_faces, tmp_path, capsys):
    data = faces.encoding["dmask_path"]
    stats, model = str(tmp_path / "s.zarr"), str(tmp_path / "m.zarr")
    code = main(
        ["-q", "train", data, "--out", model, "--targets", "happy", "sad",
         "--keep-statistics", stats, "--statistics-field", "5", "--statistics-folds",
         "3", *LOCAL_CLUSTER]
    )  # fmt: skip
    assert code == 0
    assert f"statistics: {stats}" in capsys.readouterr().out
    assert open_statistics(stats).folds == 3
    trained = _trained(faces, 3)
    for name in TARGETS:
        assert_model_close(dmask.open_model(model), trained, name, atol=REORDERED)
    solved = str(tmp_path / "m5.zarr")
    assert main(["-q", "solve", stats, "--field", "5", "--lam", "1", "--out", solved,
                 *LOCAL_CLUSTER]) == 0  # fmt: skip
    assert_model_close(
        dmask.open_model(solved), _trained(faces, 5, "1"), "happy", atol=REORDERED
    )
    assert main(["solve", stats, "--field", "7", "--out", str(tmp_path / "x.zarr"),
                 *LOCAL_CLUSTER]) == 1  # fmt: skip
    assert "keeps odd fields up to 5" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x.zarr")
    more = more_faces.encoding["dmask_path"]
    assert main(["-q", "update", stats, more, *LOCAL_CLUSTER]) == 0
    assert open_statistics(stats).counts.sum() == 9
    assert main(["update", stats, more, *LOCAL_CLUSTER]) == 1
    assert "already counted" in capsys.readouterr().err
    rows = str(tmp_path / "t.json")
    code = main(
        ["-q", "tune", data, "--targets", "happy", "sad", "--fields", "1", "3",
         "--lams", "0.1", "gcv", "--folds", "3", "--json", rows, *LOCAL_CLUSTER]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "MSE sd" in out and "best:" in out
    means = [r for r in json.load(open(rows)) if r["expression"] == "mean"]
    assert len(means) == 4 and all(r["folds"] == 3 for r in means)
    assert all(r["mse_std"] >= 0 and r["mse"] > 0 for r in means)
