"""The Slurm launchers (cluster/slurm/) on a private single-node Slurm.

The module sets up Slurm with ``cluster/slurm/single-node.sh up`` (apt-get installs
slurm-wlm and munge if missing; root only) and skips, saying why, where that cannot
be done. Both launchers must train the same model, bit for bit, as a local fit.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import ROOT, assert_model_close

import dmask
from dmask.io import dataset_store

SLURM = ROOT / "cluster" / "slurm"
SETUP_TIMEOUT = 240  # seconds, apt-get included
JOB_TIMEOUT = 180
TILE = ["--tile", "12", "12"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _skip(reason: str) -> None:
    print(f"test_slurm: skipped: {reason}", file=sys.stderr)
    pytest.skip(reason)


def _single_node(command: str, env: dict[str, str], timeout: float) -> str:
    """Run single-node.sh; return its output, raising CalledProcessError on failure."""
    result = subprocess.run(
        ["bash", str(SLURM / "single-node.sh"), command],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running single-node Slurm; SLURM_CONF and friends in ``.env``."""
    if os.geteuid() != 0:
        _skip(
            f"a private Slurm needs root (its daemons run as root); uid {os.geteuid()}"
        )
    if shutil.which("bash") is None:
        _skip("bash is not installed")
    folder = tmp_path_factory.mktemp("slurm")
    env = {
        **os.environ,
        "DMASK_SLURM_DIR": str(folder),
        "DMASK_SLURMCTLD_PORT": str(_free_port()),
        "DMASK_SLURMD_PORT": str(_free_port()),
        "DMASK_SLURM_TIMEOUT": "90",
    }
    started = time.perf_counter()
    try:
        _single_node("up", env, SETUP_TIMEOUT)
    except subprocess.TimeoutExpired:
        _single_node_down(env)
        _skip(f"single-node.sh up took more than {SETUP_TIMEOUT} s (apt-get, daemons)")
    except subprocess.CalledProcessError as exc:
        _single_node_down(env)
        _skip(
            f"single-node.sh up failed (exit {exc.returncode}): "
            + _tail(exc.stdout + exc.stderr, 12)
        )
    print(f"single-node Slurm up in {time.perf_counter() - started:.1f} s")
    env["SLURM_CONF"] = str(folder / "etc" / "slurm.conf")
    try:
        yield SimpleNamespace(env=env, cpus=min(2, len(os.sched_getaffinity(0))))
    finally:
        _single_node_down(env)


def _single_node_down(env: dict[str, str]) -> None:
    try:
        _single_node("down", env, 120)
    except (subprocess.TimeoutExpired, subprocess.CalledProcessError) as exc:
        print(f"single-node.sh down failed: {exc}", file=sys.stderr)


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    """A tiny synthetic dataset store: 6 subjects, 24 x 24 RGB."""
    path = tmp_path_factory.mktemp("slurm-data") / "faces.zarr"
    subprocess.run(
        [sys.executable, "-m", "dmask", "synth", "--out", str(path), "--subjects",
         "6", "--size", "24", "--workers", "1", "--in-process",
         "--dashboard-address", ":0"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return path


def _assert_same_as_local_fit(model_path: Path, faces: Path) -> None:
    trained = dmask.open_model(model_path)
    assert trained.tile_shape == (12, 12)
    ds = dataset_store.open_dataset(faces)
    sources, targets = dataset_store.select_pairs(
        ds, "neutral", trained.targets, "train"
    )
    local = dmask.fit(
        sources,
        targets,
        field=trained.field,
        lam=trained.lam,
        normalize=trained.normalize,
        tile_shape=(12, 12),
    )
    assert trained.targets == local.targets and len(trained.targets) == 6
    for target in trained.targets:
        assert_model_close(trained, local, target, atol=0)


def _logs(folder: Path) -> str:
    parts = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in {".out", ".err", ".log"}:
            parts.append(f"--- {path.name}\n{_tail(path.read_text(errors='replace'))}")
    return "\n".join(parts)


def test_batch_runner_trains_the_local_model(slurm, faces, tmp_path):
    model = tmp_path / "model.zarr"
    env = {
        **slurm.env,
        "DMASK_PYTHON": sys.executable,
        "DMASK_RUN_DIR": str(tmp_path / "run"),
    }
    command = [
        "sbatch", "--wait", "--parsable", "--job-name=dmask-test-batch",
        f"--chdir={tmp_path}", f"--output={tmp_path}/job-%j.out",
        f"--cpus-per-task={slurm.cpus}", "--mem=2G", "--time=5",
        str(SLURM / "dmask-train.sbatch"), str(faces), str(model), *TILE,
    ]  # fmt: skip
    started = time.perf_counter()
    try:
        result = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=JOB_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        subprocess.run(["scancel", "--name=dmask-test-batch"], env=env, check=False)
        pytest.fail(f"sbatch --wait ran over {JOB_TIMEOUT} s\n{_logs(tmp_path)}")
    print(f"batch job done in {time.perf_counter() - started:.1f} s")
    assert result.returncode == 0, f"{result.stderr}\n{_logs(tmp_path)}"
    job_out = next(tmp_path.glob("job-*.out")).read_text()
    assert "dmask train exited with 0" in job_out, _logs(tmp_path)
    assert f"model: {model}" in job_out
    _assert_same_as_local_fit(model, faces)
    assert not (tmp_path / "run" / "scheduler.json").exists()


def test_batch_runner_passes_dmask_errors_on(slurm, faces, tmp_path):
    # An output store that exists without --overwrite: dmask's exit code, 1.
    model = tmp_path / "model.zarr"
    model.mkdir()
    (model / "keep").write_text("not a model")
    env = {**slurm.env, "DMASK_PYTHON": sys.executable}
    command = [
        "sbatch", "--wait", "--job-name=dmask-test-error", f"--chdir={tmp_path}",
        f"--output={tmp_path}/job-%j.out", "--cpus-per-task=1", "--mem=1G",
        "--time=5", str(SLURM / "dmask-train.sbatch"), str(faces), str(model),
    ]  # fmt: skip
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=JOB_TIMEOUT
    )
    job_out = next(tmp_path.glob("job-*.out")).read_text()
    assert result.returncode == 1, f"{result.stderr}\n{_logs(tmp_path)}"
    assert "dmask train: error:" in job_out
    assert (model / "keep").read_text() == "not a model"


def test_jobqueue_cluster_trains_the_local_model(slurm, faces, tmp_path):
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue is not installed")
    model, logs = tmp_path / "model.zarr", tmp_path / "logs"
    env = dict(slurm.env)
    if (Path(sys.prefix) / "bin" / "activate").is_file():
        env["DMASK_VENV"] = sys.prefix  # the job script's prologue activates it
    cpus = slurm.cpus
    settings = [
        f"log-directory={logs}",
        f"cores={cpus}",
        f"processes={cpus}",
        "memory=2GB",
        "walltime='00:05:00'",
        "scheduler-options={dashboard_address: ':0'}",
    ]
    command = [sys.executable, str(SLURM / "interactive.py"), str(faces), str(model)]
    command += ["--jobs", "1", "--wait", "150"]
    for setting in settings:
        command += ["--set", f"jobqueue.slurm.{setting}"]
    started = time.perf_counter()
    try:
        result = subprocess.run(
            [*command, "--", *TILE],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=JOB_TIMEOUT + 60,
        )
    except subprocess.TimeoutExpired:
        subprocess.run(["scancel", "--name=dmask-worker"], env=env, check=False)
        pytest.fail(f"interactive.py ran over {JOB_TIMEOUT + 60} s\n{_logs(logs)}")
    print(f"SLURMCluster training done in {time.perf_counter() - started:.1f} s")
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{_tail(output)}\n{_logs(logs)}"
    assert f"{cpus} workers in 1 Slurm job(s)" in output
    assert list(logs.glob("dmask-worker-*.err")), "no Slurm job log: not run by Slurm?"
    _assert_same_as_local_fit(model, faces)
