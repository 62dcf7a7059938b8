"""Real processes: `dask scheduler` and `dask worker` on 127.0.0.1.

Training through --scheduler, with TLS, with a worker killed mid-run, resumed
after an interrupted run, and the refusal of a second concurrent run; each model
is compared bit for bit with a local run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import ROOT, assert_model_close, error_lines

import dmask
from dmask import errors
from dmask.cli import common as cli
from dmask.cli import main
from dmask.cluster.clients import ClusterOptions
from dmask.datasets.synthetic import make_synthetic_dataset
from dmask.errors import DmaskError
from dmask.io import dataset_store, model_store

BIN = Path(sys.executable).parent
TARGETS = ["happy", "sad"]


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


class DaskProcesses:
    """A scheduler and two single-threaded worker processes under nannies."""

    def __init__(self, folder: Path, tls: list[str] | None = None) -> None:
        self.folder = folder
        self.scheduler_file = folder / "scheduler.json"
        self.tls = tls or []
        log = open(folder / "dask.log", "w")  # closed in stop()
        self.log = log
        self.scheduler = subprocess.Popen(
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
             "--dashboard-address", "127.0.0.1:0", "--scheduler-file",
             str(self.scheduler_file), *self.tls,
             *(["--protocol", "tls"] if self.tls else [])],
            stdout=log, stderr=log,
        )  # fmt: skip
        _wait_for(self.scheduler_file.exists, 30, "the scheduler file")
        self.workers = subprocess.Popen(
            [str(BIN / "dask"), "worker", "--scheduler-file", str(self.scheduler_file),
             "--nworkers", "2", "--nthreads", "1", "--memory-limit", "2GB",
             "--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0",
             *self.tls],
            stdout=log, stderr=log,
        )  # fmt: skip
        self.address = json.loads(self.scheduler_file.read_text())["address"]

    def client(self, **kwargs):
        from distributed import Client

        client = Client(self.address, timeout="20s", **kwargs)
        client.wait_for_workers(2, timeout=60)
        return client

    def stop(self) -> None:
        for process in (self.workers, self.scheduler):
            process.terminate()
        for process in (self.workers, self.scheduler):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        self.log.close()


@pytest.fixture(scope="module")
def dask_processes(tmp_path_factory):
    processes = DaskProcesses(tmp_path_factory.mktemp("dask"))
    with processes.client():
        pass  # both workers are up
    yield processes
    processes.stop()


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """A dataset store and the local (threaded) model of its training pairs."""
    path = tmp_path_factory.mktemp("faces") / "faces.zarr"
    ds = make_synthetic_dataset(path, 8, (32, 32), seed=3)
    return path, ds


def _local_model(ds, field: int, tile: tuple[int, int], block: int):
    sources, targets = dataset_store.select_pairs(ds, "neutral", TARGETS, "train")
    return dmask.fit(
        sources.data.compute(),
        {t: v.data.compute() for t, v in targets.items()},
        field=field, tile_shape=tile, sample_block=block, method="displacement",
    )  # fmt: skip


def _assert_same_model(path: Path, local) -> None:
    trained = dmask.open_model(path)
    for target in TARGETS:
        assert_model_close(trained, local, target, atol=0)


TRAIN = ["--field", "5", "--tile", "8", "8", "--sample-block", "3",
         "--method", "displacement", "--targets", *TARGETS]  # fmt: skip
#: Many small tasks, so that a run lasts long enough to be interrupted.
SLOW = ["--field", "5", "--tile", "4", "4", "--sample-block", "1",
        "--method", "displacement", "--targets", *TARGETS]  # fmt: skip


def _train_command(dataset: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dmask", "train", str(dataset), "--out", str(out),
            *SLOW, *extra]  # fmt: skip


def _tiles_done(path: Path) -> int:
    try:
        return int(model_store.read_model_progress(path).tile_complete.sum())
    except Exception:  # not created yet, or being created
        return 0


def test_train_through_scheduler_equals_local(dask_processes, faces, tmp_path):
    dataset, ds = faces
    out = tmp_path / "model.zarr"
    args = ["train", str(dataset), "--out", str(out), *TRAIN,
            "--scheduler", dask_processes.address]  # fmt: skip
    assert main(args) == 0
    _assert_same_model(out, _local_model(ds, 5, (8, 8), 3))


def test_worker_killed_mid_run_gives_the_same_model(dask_processes, faces, tmp_path):
    _, ds = faces
    out = tmp_path / "model.zarr"
    sources, targets = dataset_store.stored_pairs(ds, "neutral", TARGETS, "train")
    with dask_processes.client() as client:
        pids = client.run(os.getpid)
        result: dict = {}

        def train() -> None:
            with client.as_current():
                result["model"] = dmask.fit(
                    sources, targets, field=5, tile_shape=(4, 4), sample_block=2,
                    method="displacement", store=out,
                )  # fmt: skip

        runner = threading.Thread(target=train)
        runner.start()
        _wait_for(lambda: _tiles_done(out) >= 3, 120, "the first tiles")
        victim = sorted(pids.values())[0]
        os.kill(victim, signal.SIGKILL)
        runner.join(timeout=300)
        assert not runner.is_alive() and "model" in result
        assert victim not in client.run(os.getpid).values()  # a new process
        assert _tiles_done(out) == 8 * 8
    _assert_same_model(out, _local_model(ds, 5, (4, 4), 2))


def test_interrupted_run_resumes_to_the_same_model(dask_processes, faces, tmp_path):
    dataset, ds = faces
    out = tmp_path / "model.zarr"
    scheduler = ["--scheduler", dask_processes.address]
    first = subprocess.Popen(
        _train_command(dataset, out, *scheduler),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(lambda: _tiles_done(out) >= 2, 120, "the first tiles")
    finally:
        first.send_signal(signal.SIGKILL)  # the client dies without cleaning up
        first.wait()
    total = 8 * 8
    done = _tiles_done(out)
    assert Path(f"{out}.lock").exists()  # left behind by the killed run
    with pytest.raises(errors.StoreError, match="incomplete"):
        dmask.open_model(out)
    if done == total:
        pytest.skip("the run finished before it could be interrupted")
    again = subprocess.run(_train_command(dataset, out, *scheduler, "--resume"),
                           capture_output=True, text=True)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert not Path(f"{out}.lock").exists()
    _assert_same_model(out, _local_model(ds, 5, (4, 4), 1))
    changed = subprocess.run(
        [*_train_command(dataset, out, *scheduler, "--resume"), "--lam", "1.0"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert changed.returncode == 1
    assert "cannot resume" in changed.stderr and "lam=0.4" in changed.stderr


def test_second_concurrent_run_is_refused(dask_processes, faces, tmp_path):
    dataset, ds = faces
    out = tmp_path / "model.zarr"
    scheduler = ["--scheduler", dask_processes.address]
    first = subprocess.Popen(_train_command(dataset, out, *scheduler),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)  # fmt: skip
    try:
        _wait_for(lambda: Path(f"{out}.lock").exists() or first.poll() is not None,
                  60, "the first run's lock")  # fmt: skip
        if first.poll() is not None:
            pytest.skip("the first run ended before a second could start")
        for extra in ([], ["--overwrite"], ["--resume"]):
            second = subprocess.run(_train_command(dataset, out, *scheduler, *extra),
                                    capture_output=True, text=True)  # fmt: skip
            if first.poll() is not None:
                break
            assert second.returncode == 1, second.stderr
            assert "being written by another run" in second.stderr
            assert len(error_lines(second.stderr)) == 1, second.stderr
    finally:
        assert first.wait(timeout=300) == 0, first.stderr.read()
    _assert_same_model(out, _local_model(ds, 5, (4, 4), 1))


def test_tls_cluster_refuses_clients_without_certificates(faces, tmp_path):
    dataset, ds = faces
    certs = tmp_path / "tls"
    subprocess.run(["bash", str(ROOT / "cluster" / "tls" / "make-test-ca.sh"),
                    str(certs)], check=True, capture_output=True)  # fmt: skip
    tls = ["--tls-ca-file", str(certs / "ca.pem"), "--tls-cert",
           str(certs / "cert.pem"), "--tls-key", str(certs / "key.pem")]  # fmt: skip
    (tmp_path / "cluster").mkdir()
    processes = DaskProcesses(tmp_path / "cluster", tls=tls)
    try:
        assert processes.address.startswith("tls://127.0.0.1:")
        options = ClusterOptions(
            tls_ca_file=str(certs / "ca.pem"), tls_cert=str(certs / "cert.pem"),
            tls_key=str(certs / "key.pem"),
        )  # fmt: skip
        with processes.client(security=options.security()):
            pass
        out = tmp_path / "model.zarr"
        args = ["train", str(dataset), "--out", str(out), *TRAIN,
                "--scheduler", processes.address,
                "--tls-ca-file", str(certs / "ca.pem"),
                "--tls-cert", str(certs / "cert.pem"),
                "--tls-key", str(certs / "key.pem")]  # fmt: skip
        assert main(args) == 0
        _assert_same_model(out, _local_model(ds, 5, (8, 8), 3))
        plain = subprocess.run(
            [*_train_command(dataset, tmp_path / "x.zarr"), "--scheduler",
             processes.address], capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert "Traceback" not in plain.stderr
        assert plain.returncode == 1
        assert "cannot reach the scheduler" in plain.stderr
        assert not (tmp_path / "x.zarr").exists()
    finally:
        processes.stop()


def test_configuration_file_and_environment(tmp_path, monkeypatch):
    import dask.config

    assert ClusterOptions.from_config().dashboard_address == "127.0.0.1:8787"
    with dask.config.set({"dmask.cluster.workers": 3, "dmask.tls.ca-file": "x"}):
        options = ClusterOptions.from_config(threads_per_worker=2)
        assert options.n_workers == 3 and options.threads_per_worker == 2
        assert ClusterOptions.from_config(n_workers=1).n_workers == 1
        with pytest.raises(DmaskError, match="missing certificate, key"):
            options.security()
    monkeypatch.setenv("DASK_DMASK__CLUSTER__MEMORY_LIMIT", "3GB")
    monkeypatch.setenv("DASK_DMASK__CLUSTER__WORKERS", "4")
    dask.config.refresh()
    try:
        options = ClusterOptions.from_config()
        assert options.memory_limit == "3GB" and options.n_workers == 4
    finally:
        monkeypatch.delenv("DASK_DMASK__CLUSTER__MEMORY_LIMIT")
        monkeypatch.delenv("DASK_DMASK__CLUSTER__WORKERS")
        dask.config.refresh()
    config = tmp_path / "dmask.yaml"
    config.write_text("dmask:\n  cluster:\n    scheduler: tcp://127.0.0.1:1\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("dmask: [unclosed\n")
    faces_path = tmp_path / "f.zarr"
    make_synthetic_dataset(faces_path, 3, (16, 16))
    code = main(["train", str(faces_path), "--out", str(tmp_path / "m.zarr"),
                 "--config", str(bad)])  # fmt: skip
    assert code == 1 and not (tmp_path / "m.zarr").exists()  # a bad file: exit 1
    try:
        cli._load_config(str(config))
        assert ClusterOptions.from_config().scheduler == "tcp://127.0.0.1:1"
    finally:
        dask.config.refresh()
    assert ClusterOptions.from_config().scheduler is None
