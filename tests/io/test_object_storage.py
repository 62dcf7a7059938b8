"""Object storage for real: a moto S3 server on 127.0.0.1, the dmask command line
on ``s3://`` URLs (in this process and as real ``dmask`` processes), the lock
object, a killed client resumed, ingest from a bucket of JPEGs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import LOCAL_CLUSTER, cli_error, save_image, usage_error

import dmask
from dmask.cli import main
from dmask.datasets.drawing import render_face, subject_params
from dmask.io import dataset_store

s3fs = pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "dmask-test",
    "AWS_SECRET_ACCESS_KEY": "dmask-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server, a real HTTP server in its own process, on loopback."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", "from moto.server import main; main()",
         "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail("moto's S3 server did not start")
            time.sleep(0.2)
    yield endpoint
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture
def s3(s3_server, monkeypatch):
    """A new bucket; credentials in the environment, the endpoint on each command."""
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    fs = s3fs.S3FileSystem(
        endpoint_url=s3_server,
        key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        secret=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        skip_instance_cache=True,
    )
    bucket = f"dmask-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    yield SimpleNamespace(
        fs=fs,
        bucket=bucket,
        url=f"s3://{bucket}",
        endpoint=s3_server,
        option=["--storage-option", f"endpoint_url={s3_server}"],
    )


def assert_same_model(got, want) -> None:
    """Bit for bit: every weight and bias."""
    for name in ("weight", "bias"):
        got_values, want_values = got.dataset[name].values, want.dataset[name].values
        np.testing.assert_array_equal(got_values, want_values)


def run(*argv) -> int:
    return main([str(a) for a in argv])


def _env(s3) -> dict[str, str]:
    """A ``dmask`` process's environment: the endpoint from AWS_ENDPOINT_URL."""
    env = {**os.environ, **CREDENTIALS, "AWS_ENDPOINT_URL": s3.endpoint}
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


def _dmask(*argv) -> list[str]:
    return [sys.executable, "-m", "dmask", *map(str, argv)]


def test_synth_train_apply_evaluate_export_on_s3_equal_a_local_run(
    s3, tmp_path, capsys
):
    faces = f"{s3.url}/faces.zarr"
    model = f"{s3.url}/models/model.zarr"
    common = ["--targets", "happy", "sad", "--tile", "8", "8", *LOCAL_CLUSTER]
    assert run("synth", "--out", faces, "--subjects", "8", "--size", "20", "16",
               *s3.option, *LOCAL_CLUSTER) == 0  # fmt: skip
    assert run("train", faces, "--out", model, *common, *s3.option) == 0
    # the same data and settings on the local disk give the same model, bit for bit
    local_faces = tmp_path / "faces.zarr"
    assert run("synth", "--out", local_faces, "--subjects", "8", "--size", "20",
               "16", *LOCAL_CLUSTER) == 0  # fmt: skip
    assert run("train", local_faces, "--out", tmp_path / "m.zarr", *common) == 0
    assert_same_model(dmask.open_model(model), dmask.open_model(tmp_path / "m.zarr"))
    assert s3.fs.exists(f"{s3.bucket}/models/model.zarr/zarr.json")
    assert not s3.fs.exists(f"{s3.bucket}/models/model.zarr.lock")  # released

    out = f"{s3.url}/out.zarr"
    assert run("apply", model, faces, "--out", out, *s3.option, *LOCAL_CLUSTER) == 0
    assert run("verify", model, faces, *s3.option) == 0
    capsys.readouterr()
    assert run("evaluate", model, faces, "--json", tmp_path / "e.json",
               *s3.option, *LOCAL_CLUSTER) == 0  # fmt: skip
    rows = json.loads((tmp_path / "e.json").read_text())
    assert {r["expression"] for r in rows} >= {"happy", "sad"}
    assert all(np.isfinite(r["mse_mr"]) for r in rows)

    exported = f"{s3.url}/reference"
    assert run("export", model, "--out", exported, "--naming", "reference",
               *s3.option) == 0  # fmt: skip
    assert run("export", local_faces.parent / "m.zarr", "--out",
               tmp_path / "reference", "--naming", "reference") == 0  # fmt: skip
    import scipy.sparse as sp

    for path in sorted((tmp_path / "reference").rglob("*.npz")):
        relative = path.relative_to(tmp_path / "reference").as_posix()
        with s3.fs.open(f"{s3.bucket}/reference/{relative}", "rb") as handle:
            got = sp.load_npz(handle)
        assert (got != sp.load_npz(path)).nnz == 0, relative
    manifest = json.loads(s3.fs.cat_file(f"{s3.bucket}/reference/manifest.json"))
    assert manifest["channel_order"] == "bgr"
    message = cli_error(capsys, "export", model, "--out", exported, *s3.option)
    assert "already exists" in message


def test_the_command_line_records_no_secret(s3, capsys):
    faces = f"{s3.url}/faces.zarr"
    secret = CREDENTIALS["AWS_SECRET_ACCESS_KEY"]
    assert run("synth", "--out", faces, "--subjects", "3", "--size", "16",
               *s3.option, "--storage-option", f"secret={secret}",
               "--storage-option", f"key={CREDENTIALS['AWS_ACCESS_KEY_ID']}",
               *LOCAL_CLUSTER) == 0  # fmt: skip
    attrs = dataset_store.open_dataset(faces).attrs
    provenance = attrs["provenance"]
    if isinstance(provenance, str):
        provenance = json.loads(provenance)
    command = provenance["command"]
    assert "secret=***" in command and secret not in " ".join(command)
    assert f"endpoint_url={s3.endpoint}" in command


def test_storage_options_are_checked(capsys, tmp_path):
    message = usage_error_like(capsys, "synth", "--out", tmp_path / "f.zarr",
                               "--storage-option", "endpoint_url=http://x")  # fmt: skip
    assert "names none" in message
    message = usage_error_like(capsys, "synth", "--out", "s3://b/f.zarr",
                               "--storage-option", "no-equals-sign")  # fmt: skip
    assert "KEY=VALUE" in message
    with pytest.raises(dmask.DmaskError, match="storage-options must map"):
        dmask.set_options(storage_options={"s3": 5})
    usage_error(capsys, "synth", "--storage-option")  # argparse: needs a value


def usage_error_like(capsys, *argv) -> str:
    return cli_error(capsys, *argv, code=2)


def _wait_for(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_concurrent_run_on_the_same_s3_model_is_refused(s3, capsys):
    faces = f"{s3.url}/faces.zarr"
    model = f"{s3.url}/model.zarr"
    assert run("synth", "--out", faces, "--subjects", "12", "--size", "48",
               *s3.option, *LOCAL_CLUSTER) == 0  # fmt: skip
    assert run("train", faces, "--out", model, "--targets", "happy", "--field", "3",
               *s3.option, *LOCAL_CLUSTER) == 0  # fmt: skip
    before = dmask.open_model(model)
    # a slow run replaces it (a wide field, every target), in a process of its own
    first = subprocess.Popen(
        _dmask("train", faces, "--out", model, "--overwrite", "--field", "11",
               "--tile", "8", "8", "--workers", "1", "--in-process", "--no-progress"),
        env=_env(s3), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lock = f"{s3.bucket}/model.zarr.lock"
    _wait_for(lambda: s3.fs.exists(lock) or first.poll() is not None, 120, "the lock")
    assert first.poll() is None, first.communicate()
    holder = json.loads(s3.fs.cat_file(lock))
    assert holder["pid"] == first.pid and holder["heartbeat"] > 0
    message = cli_error(capsys, "train", faces, "--out", model, "--overwrite",
                        "--targets", "happy", *s3.option, *LOCAL_CLUSTER)  # fmt: skip
    assert "being written by another run" in message and str(first.pid) in message
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    s3.fs.invalidate_cache()
    assert not s3.fs.exists(lock)
    replaced = dmask.open_model(model)
    assert before.field == 3 and replaced.field == 11


def test_lock_objects_of_runs_that_are_gone_are_taken_over(s3, monkeypatch):
    from dmask.io import locks

    model = f"{s3.url}/m.zarr"
    lock = f"{s3.bucket}/m.zarr.lock"
    with dmask.set_options(storage_options={"s3": {"endpoint_url": s3.endpoint}}):
        # another host's run that refreshed its lock just now: refused
        fresh = {"pid": 1, "host": "elsewhere", "heartbeat": time.time()}
        s3.fs.pipe_file(lock, json.dumps(fresh).encode())
        with (
            pytest.raises(dmask.StoreError, match="elsewhere"),
            locks.output_lock(model),
        ):
            pass
        # its heartbeat stopped longer ago than lock-expiry: taken over, released
        fresh["heartbeat"] = time.time() - 3600
        s3.fs.pipe_file(lock, json.dumps(fresh).encode())
        with locks.output_lock(model):
            s3.fs.invalidate_cache()
            assert json.loads(s3.fs.cat_file(lock))["pid"] == os.getpid()
            with locks.output_lock(model):  # nested in the same process
                pass
        s3.fs.invalidate_cache()
        assert not s3.fs.exists(lock)
        # the heartbeat keeps a long run's lock fresh
        with dmask.set_options(lock_expiry=0.5), locks.output_lock(model):
            first = json.loads(s3.fs.cat_file(lock))["heartbeat"]
            time.sleep(0.6)
            assert json.loads(s3.fs.cat_file(lock))["heartbeat"] > first


def test_a_killed_client_resumes_bit_identical(s3, tmp_path):
    faces = f"{s3.url}/faces.zarr"
    model = f"{s3.url}/model.zarr"
    env = _env(s3)
    settings = ["--targets", "happy", "--field", "7", "--tile", "8", "8",
                "--sample-block", "8"]  # fmt: skip
    subprocess.run(
        _dmask("synth", "--out", faces, "--subjects", "16", "--size", "48", "40",
               "--in-process", "--no-progress"),
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    process = subprocess.Popen(
        _dmask("train", faces, "--out", model, *settings, "--processes",
               "--workers", "1", "--threads-per-worker", "1", "--no-progress"),
        env=env, start_new_session=True, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    progress = f"{s3.bucket}/model.zarr/progress/tile_complete/c"

    def some_tiles_done() -> bool:
        s3.fs.invalidate_cache()
        return process.poll() is not None or (
            s3.fs.exists(progress) and len(s3.fs.find(progress)) >= 2
        )

    _wait_for(some_tiles_done, 240, "two finished tiles")
    os.killpg(process.pid, signal.SIGKILL)  # the client and its worker, at once
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before the kill"
    s3.fs.invalidate_cache()
    done = len(s3.fs.find(progress))
    assert 2 <= done < 30
    with dmask.set_options(storage_options={"s3": {"endpoint_url": s3.endpoint}}):
        with pytest.raises(dmask.StoreError, match="incomplete"):
            dmask.open_model(model)
    resumed = subprocess.run(
        _dmask("train", faces, "--out", model, *settings, "--resume",
               "--in-process", "--no-progress"),
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    whole = tmp_path / "whole.zarr"
    subprocess.run(
        _dmask("train", faces, "--out", whole, *settings, "--in-process",
               "--no-progress"),
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    with dmask.set_options(storage_options={"s3": {"endpoint_url": s3.endpoint}}):
        assert_same_model(dmask.open_model(model), dmask.open_model(whole))


KDEF = {"neutral": "NE", "happy": "HA"}


def _face(subject: int, expression: str) -> np.ndarray:
    image = render_face(subject_params(7, subject), expression, 36, 30)
    return np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)


def test_ingest_from_a_bucket_of_jpegs_equals_a_local_ingest(s3, tmp_path, capsys):
    folder = tmp_path / "KDEF"
    for number, subject in enumerate(["AF01", "AM02", "AF03", "AM04"]):
        for expression, code in KDEF.items():
            save_image(folder / subject / f"{subject}{code}S.JPG",
                       _face(number, expression), quality=92)  # fmt: skip
    save_image(folder / ".hidden" / "AF09NES.JPG", _face(9, "neutral"))
    s3.fs.put(str(folder), f"{s3.bucket}/photos/KDEF", recursive=True)
    common = ["--size", "24", "--crop", "center", "--seed", "3", *LOCAL_CLUSTER]
    remote = f"{s3.url}/kdef.zarr"
    assert run("ingest", f"{s3.url}/photos/KDEF", "--out", remote, *common,
               *s3.option) == 0  # fmt: skip
    assert run("ingest", folder, "--out", tmp_path / "kdef.zarr", *common) == 0
    got = dataset_store.open_dataset(remote)
    want = dataset_store.open_dataset(tmp_path / "kdef.zarr")
    np.testing.assert_array_equal(got["images"].values, want["images"].values)
    for name in ("subject", "expression", "split", "file"):
        assert list(got[name].values) == list(want[name].values), name
    assert got.attrs["folder"] == f"{s3.url}/photos/KDEF"
    assert got.attrs["layout"] == "kdef" and got.sizes["sample"] == 8
    report = s3.fs.cat_file(f"{s3.bucket}/kdef.zarr.report.txt").decode()
    assert report.strip().splitlines()[-1].startswith("ingest:") or report
    # and it trains from there
    assert run("train", remote, "--out", f"{s3.url}/kdef-model.zarr",
               *s3.option, *LOCAL_CLUSTER) == 0  # fmt: skip
    missing = f"{s3.url}/photos/nothing-here"
    message = cli_error(capsys, "ingest", missing, "--out", f"{s3.url}/x.zarr",
                        *s3.option, *LOCAL_CLUSTER)  # fmt: skip
    assert missing in message


def test_a_remote_store_that_is_not_there_is_named(s3, capsys):
    message = cli_error(capsys, "train", f"{s3.url}/none.zarr", "--out",
                        f"{s3.url}/m.zarr", *s3.option, *LOCAL_CLUSTER)  # fmt: skip
    assert f"{s3.url}/none.zarr" in message
    assert not s3.fs.exists(f"{s3.bucket}/m.zarr")


def test_apply_between_s3_folders_equals_a_local_apply_and_resumes(
    s3, tmp_path, capsys
):
    faces = f"{s3.url}/faces.zarr"
    model = f"{s3.url}/model.zarr"
    assert run("synth", "--out", faces, "--subjects", "6", "--size", "20", "16",
               *s3.option, *LOCAL_CLUSTER) == 0  # fmt: skip
    assert run("train", faces, "--out", model, "--targets", "happy",
               *s3.option, *LOCAL_CLUSTER) == 0  # fmt: skip
    photos = tmp_path / "photos"
    for i, name in enumerate(["a.png", "b/c.png", "b/d.jpg", "e.png"]):
        save_image(photos / name, _face(i, "neutral")[:20, :16])
    s3.fs.put(str(photos), f"{s3.bucket}/photos", recursive=True)
    common = ["--crop", "none", "--output", "crop", "--files-per-task", "2",
              *LOCAL_CLUSTER]  # fmt: skip
    out = f"{s3.url}/synthesised"
    assert run("apply", model, f"{s3.url}/photos", "--out", out, *common,
               *s3.option) == 0  # fmt: skip
    assert "images synthesised 4" in capsys.readouterr().out
    local = tmp_path / "synthesised"
    assert run("apply", model, f"{s3.url}/photos", "--out", local, *common,
               *s3.option) == 0  # fmt: skip
    written = sorted(p for p in local.rglob("*.png") if ".dmask" not in str(p))
    assert len(written) >= 4
    s3.fs.invalidate_cache()
    for path in written:
        relative = path.relative_to(local).as_posix()
        assert s3.fs.cat_file(f"{s3.bucket}/synthesised/{relative}") == (
            path.read_bytes()
        ), relative
    capsys.readouterr()
    assert run("apply", model, f"{s3.url}/photos", "--out", out, *common,
               *s3.option) == 0  # fmt: skip
    assert "images synthesised 0" in capsys.readouterr().out  # all skipped


def test_worker_processes_get_the_command_lines_storage_options(s3):
    """No AWS_ENDPOINT_URL: the endpoint reaches worker processes by the plugin."""
    faces = f"{s3.url}/faces.zarr"
    assert run("synth", "--out", faces, "--subjects", "3", "--size", "16",
               "--processes", "--workers", "1", "--dashboard-address", ":0",
               "--no-progress", *s3.option) == 0  # fmt: skip
    assert dataset_store.open_dataset(faces).sizes["sample"] == 21
