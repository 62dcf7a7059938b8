"""A train whose output goes to files, as in a Slurm job: plain progress on stderr."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT

CONTROL = re.compile(r"[\r\x1b]")
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ INFO dmask\.progress: ")


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    from dmask.datasets.synthetic import make_synthetic_dataset

    path = tmp_path_factory.mktemp("logs") / "faces.zarr"
    make_synthetic_dataset(path, 12, (32, 32), test_fraction=0)
    return path


def _train(faces: Path, out: Path, *extra: str) -> tuple[str, str, float]:
    stdout, stderr = out.with_suffix(".out"), out.with_suffix(".err")
    argv = [sys.executable, "-m", "dmask", "train", str(faces), "--out", str(out),
            "--targets", "happy", "sad", "--tile", "16", "16",
            "--dashboard-address", ":0", *extra]  # fmt: skip
    started = time.monotonic()
    with open(stdout, "w") as out_file, open(stderr, "w") as err_file:
        subprocess.run(
            argv, stdout=out_file, stderr=err_file, check=True, cwd=ROOT, timeout=300,
            env={**os.environ, "COLUMNS": "80"},
        )  # fmt: skip
    return stdout.read_text(), stderr.read_text(), time.monotonic() - started


def test_a_train_logged_to_files_has_plain_named_progress_on_stderr(faces, tmp_path):
    out, err, seconds = _train(faces, tmp_path / "m.zarr", "--processes")
    for text in (out, err):
        assert not CONTROL.search(text), "a carriage return or escape in a log file"
    progress = [line for line in err.splitlines() if " dmask.progress: " in line]
    assert all(LOG_LINE.match(line) for line in progress), progress  # one format
    assert any("dmask.progress: reading bounds: " in line for line in progress)
    fitting = [line for line in progress if "dmask.progress: fitting tiles: " in line]
    assert fitting and re.search(r"\d+ tasks done in [\d.]+ s$", fitting[-1])
    assert len(progress) < max(20 * seconds / 60, 6), progress
    assert "progress" not in out and "dashboard" not in out
    assert out.splitlines()[-2].startswith("summary: ")
    assert out.splitlines()[-1].startswith("model: ")


@pytest.mark.parametrize("quiet", [["--no-progress"], ["-q"]])
def test_no_progress_and_quiet_show_none(faces, tmp_path, quiet):
    out, err, _ = _train(faces, tmp_path / "m.zarr", *quiet)
    assert "dmask.progress" not in err
    assert "summary: " in out
