"""The command line end to end: synth, train, apply, evaluate."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

import dmask
from dmask import storage
from dmask.cli import main

THREADS = ["--workers", "1", "--threads", "--dashboard-address", ":0"]


def test_cli_end_to_end(tmp_path, capsys, cluster_client):
    faces, model, out = tmp_path / "f.zarr", tmp_path / "m.zarr", tmp_path / "o.zarr"
    assert main(["synth", "--out", str(faces), "--subjects", "8", "--size", "32",
                 "--width", "24", *THREADS]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "dashboard: http" in printed and "summary: images 56" in printed

    report = tmp_path / "report.html"
    assert main(["train", str(faces), "--out", str(model), "--field", "5",
                 "--targets", "happy,surprised", "--tile", "16", "16",
                 "--method", "displacement", "--report", str(report),
                 "--scheduler", cluster_client.scheduler.address]) == 0  # fmt: skip
    assert report.stat().st_size > 0
    printed = capsys.readouterr().out
    assert "tiles 4" in printed and f"model: {model}" in printed
    trained = dmask.open_model(model)
    assert trained.targets == ["happy", "surprised"] and trained.field == 5

    ds = storage.open_dataset(faces)
    src, tgt = storage.select_pairs(ds, "neutral", ["happy", "surprised"], "train")
    local = dmask.fit(src, tgt, field=5, tile_shape=(16, 16), method="displacement")
    np.testing.assert_array_equal(
        trained.weights("surprised").values, local.weights("surprised").values
    )

    pngs = tmp_path / "png"
    assert main(["apply", str(model), str(faces), "--out", str(out), "--split",
                 "test", "--png", str(pngs), *THREADS]) == 0  # fmt: skip
    synthesised = storage.open_dataset(out)
    assert synthesised.sizes["sample"] == 2 * 2
    assert sorted(p.name for p in pngs.iterdir())[0] == "s00006_happy.png"

    csv_path, json_path = tmp_path / "e.csv", tmp_path / "e.json"
    scheduler_file = tmp_path / "scheduler.json"
    cluster_client.write_scheduler_file(str(scheduler_file))
    capsys.readouterr()
    assert main(["evaluate", str(model), str(faces), "--csv", str(csv_path),
                 "--json", str(json_path), "--scheduler-file",
                 str(scheduler_file)]) == 0  # fmt: skip
    table = capsys.readouterr().out
    assert "PSNR mr" in table and "surprised" in table
    rows = json.loads(json_path.read_text())
    assert [r["expression"] for r in rows] == ["happy", "surprised", "mean"]
    assert all(r["n_test"] == 2 for r in rows)
    assert csv_path.read_text().startswith("expression,n_test,mse_mr")


def test_module_and_console_script():
    result = subprocess.run(
        [sys.executable, "-m", "dmask", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout.startswith("dmask ")
    result = subprocess.run(
        [sys.executable, "-m", "dmask", "train", "nowhere.zarr", "--out", "x.zarr",
         "--field", "2"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "dmask train: error: field must be an odd integer >= 1, got 2"
    )
