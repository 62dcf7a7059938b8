"""The joint colour mode against per-pixel loops written here and in reference.py.

Every output channel of a pixel regresses on the clipped window in all
channels; training, penalty choice (GCV, leave-one-out), prediction, stores,
statistics, export and compare are checked.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from helpers import (
    LOCAL_CLUSTER,
    REFERENCE,
    assert_model_close,
    random_pairs,
)
from reference import minmax, reference_joint_fit, reference_joint_predict

import dmask
from dmask.cli import main
from dmask.datasets.synthetic import make_synthetic_dataset
from dmask.evaluation.compare import compare
from dmask.interop import export_reference
from dmask.io import dataset_store
from dmask.statistics import keep_statistics, solve

GRID = (0.01, 0.1, 1.0, 10.0)


@pytest.mark.usefixtures("backend")
@pytest.mark.parametrize(("field", "channels"), [(1, 3), (3, 2), (3, 3), (5, 3)])
def test_fit_and_predict_equal_the_joint_loops(rng, field, channels):
    sources, targets = random_pairs(rng, 9, 11, 8, channels)  # borders, non-square
    model = dmask.fit(
        sources, targets, field=field, lam=0.4, channels="joint", tile_shape=(4, 5),
        sample_block=4,
    )  # fmt: skip
    weights, bias = reference_joint_fit(minmax(sources), minmax(targets), field, 0.4)
    assert model.dataset.attrs["channel_mode"] == "joint"
    assert model.weights().shape == (11, 8, channels, field * field * channels)
    assert_model_close(model, (weights, bias), atol=REFERENCE)
    expected = reference_joint_predict(minmax(sources), weights, bias, field)
    np.testing.assert_allclose(model.predict(sources), expected, atol=REFERENCE)
    # tiled equals untiled, bit for bit (the same sample blocks)
    whole = dmask.fit(
        sources, targets, field=field, lam=0.4, channels="joint", sample_block=4
    )
    assert_model_close(model, whole, atol=0, rtol=0)


def test_one_channel_joint_is_the_per_channel_model(rng):
    sources, targets = random_pairs(rng, 8, 9, 7, 1)
    joint = dmask.fit(sources, targets, field=3, lam=0.4, channels="joint")
    plain = dmask.fit(sources, targets, field=3, lam=0.4)
    assert_model_close(joint, plain, atol=REFERENCE)


def _brute_force_choice(sources, targets, field, grid, criterion):
    """Each pixel's and channel's penalty of least GCV or leave-one-out error."""
    x, t = minmax(sources), minmax(targets)
    n, height, width, channels = x.shape
    b = field // 2
    chosen = np.zeros((height, width, channels))
    for i in range(height):
        for j in range(width):
            columns = [
                x[:, i + dy, j + dx, c]
                for dy in range(-b, b + 1)
                for dx in range(-b, b + 1)
                if 0 <= i + dy < height and 0 <= j + dx < width
                for c in range(channels)
            ]
            design = np.column_stack([*columns, np.ones(n)])
            for c in range(channels):
                scores = []
                for lam in grid:
                    if criterion == "gcv":
                        gram = design.T @ design + lam * np.eye(design.shape[1])
                        hat = design @ np.linalg.solve(gram, design.T)
                        rss = np.sum((t[:, i, j, c] - hat @ t[:, i, j, c]) ** 2)
                        scores.append(n * rss / (n - np.trace(hat)) ** 2)
                        continue
                    press = 0.0
                    for left in range(n):  # refit without each sample
                        keep = np.arange(n) != left
                        a = design[keep]
                        gram = a.T @ a + lam * np.eye(design.shape[1])
                        w = np.linalg.solve(gram, a.T @ t[keep, i, j, c])
                        press += (t[left, i, j, c] - design[left] @ w) ** 2
                    scores.append(press)
                chosen[i, j, c] = grid[int(np.argmin(scores))]
    return chosen


@pytest.mark.parametrize("criterion", ["gcv", "loo"])
def test_penalty_choice_equals_brute_force(rng, criterion):
    sources, targets = random_pairs(rng, 10, 6, 5, 2)
    model = dmask.fit(
        sources, targets, field=3, lam=criterion, lam_grid=GRID, channels="joint",
        sample_block=4,
    )  # fmt: skip
    expected = _brute_force_choice(sources, targets, 3, GRID, criterion)
    np.testing.assert_array_equal(np.asarray(model.lam_map()), expected)
    # each pixel then solved with its penalty: the plain solve at that penalty
    for lam in GRID:
        at = np.asarray(model.lam_map()) == lam
        if at.any():
            fixed = dmask.fit(sources, targets, field=3, lam=lam, channels="joint")
            np.testing.assert_allclose(
                np.asarray(model.weights())[at], np.asarray(fixed.weights())[at],
                atol=1e-9,
            )  # fmt: skip


def test_store_statistics_and_export(rng, tmp_path):
    sources, targets = random_pairs(rng, 8, 10, 9, 3)
    held = dmask.fit(sources, {"a": targets, "b": targets[::-1]}, field=3,
                     channels="joint")  # fmt: skip
    stored = dmask.fit(
        sources, {"a": targets, "b": targets[::-1]}, field=3, channels="joint",
        store=tmp_path / "m.zarr",
    )  # fmt: skip
    for name in ("a", "b"):
        assert_model_close(stored, held, name, atol=0, rtol=0)
    ds = dmask.open_model(tmp_path / "m.zarr").dataset
    assert ds["input_channel"].values.tolist()[:6] == [0, 1, 2, 0, 1, 2]
    assert ds.attrs["field_layout"].startswith("offset-major")
    kept = dmask.fit(
        sources, {"a": targets, "b": targets[::-1]}, field=3, channels="joint",
        statistics=tmp_path / "s.zarr", statistics_field=5,
    )  # fmt: skip
    for name in ("a", "b"):
        assert_model_close(kept, held, name, atol=0, rtol=0)
    larger = solve(tmp_path / "s.zarr", 5, 1.0)
    trained = dmask.fit(sources, {"a": targets, "b": targets[::-1]}, field=5, lam=1.0,
                        channels="joint")  # fmt: skip
    for name in ("a", "b"):
        assert_model_close(larger, trained, name, atol=0, rtol=0)
    with pytest.raises(dmask.InputError, match="one matrix per channel"):
        export_reference(held, tmp_path / "ref")
    assert not os.path.exists(tmp_path / "ref")


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    path = tmp_path_factory.mktemp("faces") / "faces.zarr"
    make_synthetic_dataset(path, 6, (20, 18), seed=4, test_fraction=0.34)
    return dataset_store.open_dataset(path)


def test_compare_side_by_side(faces):
    rows = compare(faces, targets=["happy"], fields=(1, 3), methods=("mr", "mr_joint"))
    means = {r["method"]: r for r in rows if r["expression"] == "mean"}
    assert set(means) == {"mr r=1", "mr r=3", "mr_joint r=1", "mr_joint r=3"}
    d = 20 * 18 * 3
    assert means["mr r=3"]["n_parameters"] == d * 10
    assert means["mr_joint r=3"]["n_parameters"] == d * 28
    for row in means.values():
        assert row["status"] == "ok" and row["mse"] > 0 and row["train_seconds"] > 0


def test_commands(faces, tmp_path, capsys):
    data = faces.encoding["dmask_path"]
    model, stats = str(tmp_path / "m.zarr"), str(tmp_path / "s.zarr")
    code = main(["-q", "train", data, "--out", model, "--targets", "happy",
                 "--channels", "joint", *LOCAL_CLUSTER])  # fmt: skip
    assert code == 0
    src, tgt = dataset_store.stored_pairs(faces, "neutral", ["happy"])
    expected = dmask.fit(src, tgt, field=3, channels="joint")
    assert_model_close(dmask.open_model(model), expected, "happy", atol=0, rtol=0)
    code = main(["-q", "train", data, "--out", str(tmp_path / "k.zarr"), "--targets",
                 "happy", "--channels", "joint", "--keep-statistics", stats,
                 *LOCAL_CLUSTER])  # fmt: skip
    assert code == 0
    assert keep_statistics is not None and dmask.statistics.open_statistics(stats).joint
    page = str(tmp_path / "r.html")
    assert main(["-q", "report", model, data, "--out", page, *LOCAL_CLUSTER]) == 0
    assert "weights on the channel's own input" in open(page).read()
    assert main(["export", model, "--out", str(tmp_path / "ref")]) == 1
    assert "one matrix per channel" in capsys.readouterr().err
    code = main(["-q", "compare", data, "--targets", "happy", "--fields", "3",
                 "--methods", "mr", "mr_joint", *LOCAL_CLUSTER])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "mr_joint r=3" in out and "mr r=3" in out


def test_distributed_joint_equals_local(faces, cluster_client, tmp_path):
    src, tgt = dataset_store.stored_pairs(faces, "neutral", ["happy", "sad"])
    local = dmask.fit(src, tgt, field=3, lam="gcv", channels="joint", sample_block=2)
    with cluster_client.as_current():
        remote = dmask.fit(
            src, tgt, field=3, lam="gcv", channels="joint", sample_block=2,
            store=tmp_path / "m.zarr",
        )  # fmt: skip
        info = keep_statistics(
            faces, tmp_path / "s.zarr", targets=["happy", "sad"], field=3,
            channels="joint", sample_block=2,
        )  # fmt: skip
        solved = solve(info, 3, "gcv")
    for name in ("happy", "sad"):
        assert_model_close(remote, local, name, atol=0, rtol=0)
        assert_model_close(solved, local, name, atol=0, rtol=0)


def test_an_interrupted_joint_run_resumes(rng, tmp_path, monkeypatch):
    from dmask.graph import fit_tasks

    sources, targets = random_pairs(rng, 6, 10, 9, 3)
    settings = {"field": 3, "channels": "joint", "tile_shape": (4, 4)}
    memory = dmask.fit(sources, targets, **settings)
    real, calls = fit_tasks.write_model_tile, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(fit_tasks, "write_model_tile", flaky)
    with pytest.raises(RuntimeError, match="disk full"):
        dmask.fit(sources, targets, **settings, store=tmp_path / "m")
    monkeypatch.setattr(fit_tasks, "write_model_tile", real)
    with pytest.raises(dmask.InputError):  # another mode: not the same training
        dmask.fit(sources, targets, field=3, tile_shape=(4, 4), store=tmp_path / "m",
                  resume=True)  # fmt: skip
    resumed = dmask.fit(sources, targets, **settings, store=tmp_path / "m", resume=True)
    assert_model_close(resumed, memory, atol=0, rtol=0)
