"""The command line end to end: synth, train, apply, evaluate."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from helpers import assert_model_close

import dmask
from dmask.cli import main
from dmask.io import dataset_store

THREADS = [
    "--workers",
    "1",
    "--in-process",
    "--dashboard-address",
    ":0",
    "--no-progress",
]


def test_cli_end_to_end(tmp_path, capsys, cluster_client):
    faces, model, out = tmp_path / "f.zarr", tmp_path / "m.zarr", tmp_path / "o.zarr"
    assert main(["synth", "--out", str(faces), "--subjects", "8", "--size", "32",
                 "24", *THREADS]) == 0  # fmt: skip
    printed = capsys.readouterr()
    assert "summary: images 56" in printed.out and "dashboard" not in printed.out
    assert "dashboard: http" in printed.err

    report = tmp_path / "report.html"
    assert main(["train", str(faces), "--out", str(model), "--field", "5",
                 "--targets", "happy", "surprised", "--tile", "16", "16",
                 "--method", "displacement", "--performance-report", str(report),
                 "--scheduler", cluster_client.scheduler.address]) == 0  # fmt: skip
    assert report.stat().st_size > 0
    printed = capsys.readouterr().out
    assert "tiles 4" in printed and f"model: {model}" in printed
    trained = dmask.open_model(model)
    assert trained.targets == ["happy", "surprised"] and trained.field == 5

    ds = dataset_store.open_dataset(faces)
    src, tgt = dataset_store.select_pairs(
        ds, "neutral", ["happy", "surprised"], "train"
    )
    local = dmask.fit(src, tgt, field=5, tile_shape=(16, 16), method="displacement")
    assert_model_close(trained, local, "surprised", atol=0, bias=False)

    pngs = tmp_path / "png"
    assert main(["apply", str(model), str(faces), "--out", str(out), "--split",
                 "test", "--png", str(pngs), *THREADS]) == 0  # fmt: skip
    synthesised = dataset_store.open_dataset(out)
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
    assert result.returncode == 2  # a usage error: argparse's, with the usage
    assert result.stderr.startswith("usage: dmask train")
    assert result.stderr.strip().splitlines()[-1] == (
        "dmask train: error: argument --field: must be an odd integer >= 1, got 2"
    )
    result = subprocess.run(
        [sys.executable, "-m", "dmask", "train", "nowhere.zarr", "--out", "x.zarr"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 1  # a missing input: the run failed
    assert "nowhere.zarr" in result.stderr and "does not exist" in result.stderr


def _kdef_folder(root) -> None:
    """A KDEF-shaped folder: one subfolder per subject, straight and side views."""
    from PIL import Image

    from dmask.datasets.drawing import render_face, subject_params

    codes = {"neutral": "NE", "happy": "HA", "sad": "SA"}
    for subject in range(1, 9):
        folder = root / f"AF{subject:02d}"
        folder.mkdir(parents=True)
        for expression, code in codes.items():
            face = render_face(subject_params(5, subject), expression, 40, 34)
            pixels = np.rint(np.clip(face, 0, 1) * 255).astype(np.uint8)
            for view in ("S", "HL"):
                name = f"AF{subject:02d}{code}{view}.JPG"
                Image.fromarray(pixels).save(folder / name, quality=95)
    (root / "AF01" / "AF01SUS.JPG").write_bytes(b"not a jpeg at all")


def test_cli_folder_to_model_to_synthesised_folder(tmp_path, capsys):
    kdef, faces = tmp_path / "KDEF", tmp_path / "kdef.zarr"
    _kdef_folder(kdef)
    assert main(["ingest", str(kdef), "--out", str(faces), "--size", "32", "28",
                 "--crop", "center", *THREADS]) == 0  # fmt: skip
    printed = capsys.readouterr()
    assert "summary: layout kdef" in printed.out
    assert "AF01SUS.JPG" in printed.err and "left out: unreadable 1" in printed.err
    ds = dataset_store.open_dataset(faces)
    assert ds.sizes["sample"] == 8 * 3 and ds["images"].shape[1:3] == (32, 28)

    model = tmp_path / "model.zarr"
    assert main(["train", str(faces), "--out", str(model), *THREADS]) == 0
    assert dmask.open_model(model).targets == ["happy", "sad"]

    out = tmp_path / "synthesised"
    args = ["apply", str(model), str(kdef), "--out", str(out), "--crop", "center"]
    assert main([*args, *THREADS]) == 0
    printed = capsys.readouterr().out
    assert "images synthesised 48" in printed and "skipped 1" in printed
    assert (out / "happy" / "AF03" / "AF03NES.png").is_file()
    assert main([*args, *THREADS]) == 0
    assert "already done 48, images synthesised 0" in capsys.readouterr().out

    exported, imported = tmp_path / "reference", tmp_path / "imported.zarr"
    assert main(["export", str(model), "--out", str(exported)]) == 0
    assert main(["import", str(exported), "--out", str(imported)]) == 0
    back, trained = dmask.open_model(imported), dmask.open_model(model)
    assert_model_close(back, trained, "sad", atol=0, bias=False)
    bad = ["import", str(exported), "--out", str(tmp_path / "x.zarr"), "--field", "1"]
    assert main(bad) == 1  # the weights refuse it: a failure of the run
    assert "outside the 1x1 field" in capsys.readouterr().err
