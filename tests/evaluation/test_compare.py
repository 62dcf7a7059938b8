"""compare: MR against the baselines on a dataset's own train/test split."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import xarray as xr
from helpers import REFERENCE, SOLVER
from reference import minmax

import dmask
from dmask.datasets.synthetic import make_synthetic_dataset
from dmask.errors import InputError
from dmask.evaluation.compare import COLUMNS, compare, format_comparison, score
from dmask.evaluation.evaluate import evaluate
from dmask.evaluation.metrics import write_results
from dmask.io import dataset_store

EXPRESSIONS = ["happy", "sad", "surprised", "angry", "afraid", "disgusted"]
LABELS = [
    "mr r=1",
    "mr r=3",
    "mr r=5",
    "full_ridge",
    "reduced_rank",
    "kernel_ridge",
    "lasso",
    "omp",
    "identity",
    "mean_difference",
]


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    return make_synthetic_dataset(
        tmp_path_factory.mktemp("compare") / "f.zarr", 8, (16, 16), seed=1
    )


@pytest.fixture(scope="module")
def rows(faces):
    return compare(faces)


def _by(rows, method, expression):
    (row,) = [
        r for r in rows if r["method"] == method and r["expression"] == expression
    ]
    return row


def test_rows_for_every_method_and_expression(rows):
    assert [(r["method"], r["expression"]) for r in rows] == [
        (label, e) for label in LABELS for e in [*EXPRESSIONS, "mean"]
    ]
    d = 16 * 16 * 3
    for row in rows:
        assert tuple(row) == COLUMNS
        assert row["status"] == "ok", row
        assert (row["n_train"], row["n_test"]) == (6, 2)
        for key in ("mse", "psnr", "ssim", "train_seconds", "peak_mib"):
            assert math.isfinite(row[key]) and row[key] >= 0, (key, row)
        assert 0 < row["ssim"] <= 1
    assert _by(rows, "mr r=3", "happy")["n_parameters"] == d * 10
    assert _by(rows, "full_ridge", "sad")["n_parameters"] == d * (d + 1)
    assert _by(rows, "identity", "sad")["n_parameters"] == 0
    assert 0 < _by(rows, "omp", "sad")["n_parameters"] <= d * 6  # 5 weights + bias


def test_mean_row_is_the_mean(rows):
    for label in LABELS:
        group = [r for r in rows if r["method"] == label and r["expression"] != "mean"]
        mean = _by(rows, label, "mean")
        for key in ("mse", "psnr", "ssim", "train_seconds", "peak_mib"):
            assert mean[key] == pytest.approx(np.mean([r[key] for r in group]))


def test_mr_beats_the_learned_baselines(rows):
    mr = _by(rows, "mr r=3", "mean")["mse"]
    for label in ("full_ridge", "reduced_rank", "kernel_ridge", "lasso", "omp"):
        assert mr < _by(rows, label, "mean")["mse"], label


def test_figures_agree_with_evaluate(faces, rows):
    src, tgt = dataset_store.select_pairs(faces, "neutral", ["happy"], "train")
    model = dmask.fit(src, tgt, field=3, lam=0.4)
    (expected, *_) = evaluate(model, faces, targets=["happy"])
    for method, label in [
        ("mr", "mr r=3"),
        ("identity", "identity"),
        ("mean_difference", "mean_difference"),
    ]:
        row = _by(rows, label, "happy")
        assert row["mse"] == pytest.approx(expected[f"mse_{method}"], rel=SOLVER)
        assert row["psnr"] == pytest.approx(expected[f"psnr_{method}"], rel=SOLVER)


def _local_dataset(rng, n_subjects=20, size=12):
    """Grayscale pairs whose target is a local function of the source.

    Samples are subject-major (neutral, inverted, neutral, ...), unlike synth.
    """
    sources = rng.random((n_subjects, size, size, 1)) * 200 + 10
    targets = 255 - np.roll(sources, 1, axis=2) + rng.random(sources.shape) * 5
    images = np.stack([sources, targets], axis=1).reshape(-1, size, size, 1)
    split = ["train"] * (n_subjects - 3) + ["test"] * 3
    return xr.Dataset(
        {"images": (("sample", "y", "x", "channel"), images)},
        coords={
            "subject": ("sample", [f"s{i}" for i in range(n_subjects) for _ in "ab"]),
            "expression": ("sample", ["neutral", "inverted"] * n_subjects),
            "split": ("sample", [s for s in split for _ in "ab"]),
        },
    )


def test_in_memory_dataset_where_mr_beats_identity(rng):
    ds = _local_dataset(rng)
    out = compare(ds, fields=(3,), methods=("mr", "identity", "kernel_ridge"))
    assert [(r["method"], r["expression"]) for r in out] == [
        (m, e)
        for m in ("mr r=3", "identity", "kernel_ridge")
        for e in ("inverted", "mean")
    ]
    assert all(r["status"] == "ok" for r in out)
    assert 0 < _by(out, "mr r=3", "inverted")["ssim"] <= 1  # one channel
    assert (
        _by(out, "mr r=3", "inverted")["mse"]
        < 0.5 * _by(out, "identity", "inverted")["mse"]
    )


def test_refused_method_has_a_clear_status(faces):
    out = compare(
        faces,
        targets=["happy", "sad"],
        methods=("full_ridge", "identity"),
        memory_budget=1000,
    )
    for row in out:
        if row["method"] == "full_ridge":
            assert row["status"].startswith("refused: needs ")
            assert "more than the memory budget of 1.0 kB" in row["status"]
            assert row["mse"] is None and row["n_parameters"] is None
        else:
            assert row["status"] == "ok"
    assert "refused: needs" in format_comparison(out)


def test_pixelwise_methods_are_refused_above_their_size_limit(tmp_path):
    big = make_synthetic_dataset(tmp_path / "big.zarr", 3, (49, 48), seed=0)
    out = compare(big, targets=["happy"], methods=("lasso", "omp"))
    for row in out:
        assert row["status"].startswith("refused: d = 7056 pixel values is over")


def test_written_rows_parse_back(rows, tmp_path):
    write_results(rows, tmp_path / "c.csv", tmp_path / "c.json")
    assert json.loads((tmp_path / "c.json").read_text()) == rows
    with open(tmp_path / "c.csv", newline="") as handle:
        read = list(csv.DictReader(handle))
    assert list(read[0]) == list(COLUMNS)
    assert len(read) == len(rows)
    for back, row in zip(read, rows, strict=True):
        assert back["method"] == row["method"]
        assert float(back["mse"]) == pytest.approx(row["mse"])
        assert int(back["n_parameters"]) == row["n_parameters"]
    table = format_comparison(rows, means_only=True)
    assert len(table.splitlines()) == 1 + len(LABELS)


def test_score_of_a_perfect_prediction(rng):
    images = rng.random((3, 10, 10, 3))
    assert score(images, images) == {"mse": 0.0, "psnr": math.inf, "ssim": 1.0}
    with pytest.raises(InputError, match="predicted has shape"):
        score(images[:2], images)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"methods": ("mr", "svm")}, "methods has unknown method 'svm'"),
        ({"methods": "mr"}, "methods must be a non-empty sequence"),
        ({"fields": (2,)}, "field must be an odd integer"),
        ({"lam": 0}, "lam must be a positive"),
        ({"rank": 0}, "rank must be a positive integer"),
        ({"memory_budget": -5}, "memory_budget must be a positive integer"),
        ({"options": {"mr": {}}}, "options has settings for 'mr'"),
        ({"targets": []}, "targets is empty"),
        ({"targets": "happy"}, "targets must be a sequence of names"),
        ({"fields": (3, 3)}, "fields names a field twice"),
        (
            {"options": {"lasso": {"beta": 1}}, "methods": ("lasso",)},
            r"options\['lasso'\] has a bad setting",
        ),
    ],
)
def test_bad_arguments_raise_input_error(faces, kwargs, match):
    with pytest.raises(InputError, match=match):
        compare(faces, **kwargs)


def test_on_a_distributed_cluster_equals_local(faces, rows, cluster_client):
    methods = ("mr", "full_ridge", "omp", "identity")
    with cluster_client.as_current():
        remote = compare(faces, targets=["happy"], fields=(3,), methods=methods)
    assert all(r["status"] == "ok" for r in remote)
    for label in ("mr r=3", "full_ridge", "omp", "identity"):
        for key in ("mse", "ssim", "n_parameters"):
            assert _by(remote, label, "happy")[key] == pytest.approx(
                _by(rows, label, "happy")[key], rel=REFERENCE
            )
    assert _by(remote, "mr r=3", "happy")["peak_mib"] > 0


def test_saved_models_apply_like_the_scored_ones(faces, tmp_path):
    from dmask.apply.store import apply_to_store

    folder = tmp_path / "models"
    out = compare(
        faces,
        targets=["happy", "sad"],
        fields=(3,),
        methods=("mr", "lasso", "omp"),
        save_models=folder,
    )
    assert sorted(p.name for p in folder.iterdir()) == [
        "lasso.zarr",
        "mr_r3.zarr",
        "omp.zarr",
    ]
    src, tgt = dataset_store.select_pairs(faces, "neutral", ["happy", "sad"], "test")
    truth = {name: minmax(np.asarray(tgt[name])) for name in tgt}
    for method, store in (("mr r=3", "mr_r3"), ("lasso", "lasso"), ("omp", "omp")):
        model = dmask.open_model(folder / f"{store}.zarr")
        assert model.kind == ("field" if method.startswith("mr") else "sparse")
        assert model.targets == ["happy", "sad"]
        predicted = model.predict(np.asarray(src))
        for name in ("happy", "sad"):
            mse = float(((np.asarray(predicted[name]) - truth[name]) ** 2).mean())
            assert mse == pytest.approx(_by(out, method, name)["mse"], rel=1e-9)
    omp = dmask.open_model(folder / "omp.zarr")
    applied = apply_to_store(omp, faces, tmp_path / "omp_out.zarr", split="test")
    assert applied.sizes["sample"] == 2 * src.shape[0]
    with pytest.raises(InputError, match="already exists"):
        compare(faces, targets=["happy"], methods=("omp",), save_models=folder)
