"""Cluster launchers: Kubernetes manifests, the local start script, the SSH launcher.

The manifests are checked structurally here (no Kubernetes here), and against the Dask
operator's own resource schemas in test_kubernetes.py. The start script and the
SSH launcher start real schedulers and workers on 127.0.0.1 and must train exactly the
model a local fit trains. The SSH run needs an OpenSSH server binary and asyncssh; it
starts its own sshd on a free loopback port with keys made for the test, and skips
with the reason when it cannot.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from dask.utils import parse_bytes
from helpers import (
    LOOPBACK,
    ROOT,
    assert_model_close,
    listening_sockets,
    process_tree,
    random_pairs,
)

import dmask
from dmask.cluster.ssh import ssh_cluster
from dmask.errors import DmaskError

KUBE = ROOT / "cluster" / "kubernetes"
DOCKERFILE = ROOT / "cluster" / "docker" / "Dockerfile"
START = ROOT / "cluster" / "start-local.sh"
OPERATOR_API = "kubernetes.dask.org/v1"
#: The operator sets DASK_SCHEDULER_ADDRESS to <cluster>-scheduler...:8786, always.
OPERATOR_COMM_PORT = 8786


# ------------------------------------------------------------------ helpers


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _group_members(pgid: int) -> list[int]:
    """PIDs of the live (non-zombie) processes in process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _marked_processes(mark: str) -> list[int]:
    """PIDs of the processes whose environment holds ``mark``."""
    found = []
    needle = mark.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _fit_pair(rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    sources, targets = random_pairs(rng, 9, 10, 8, 2)
    return sources, {"a": targets, "b": np.sqrt(sources)}


def _assert_same_models(remote: Any, local: Any) -> None:
    for name in ("a", "b"):
        assert_model_close(remote, local, name, atol=0)


FIT_OPTIONS: dict[str, Any] = {"field": 3, "tile_shape": (4, 4), "sample_block": 4}


# ------------------------------------------------------------------ manifests


def _manifests() -> dict[str, list[dict[str, Any]]]:
    """Every document of every YAML file under cluster/kubernetes, by kind."""
    kinds: dict[str, list[dict[str, Any]]] = {}
    files = sorted(KUBE.glob("*.yaml")) + sorted(KUBE.glob("*.yml"))
    assert files, f"no manifests in {KUBE}"
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            assert isinstance(doc, dict), path
            doc["_file"] = path.name
            kinds.setdefault(doc["kind"], []).append(doc)
    return kinds


def _clusters() -> list[tuple[str, dict[str, Any]]]:
    """(cluster name, DaskCluster spec): the DaskCluster's and the DaskJob's."""
    kinds = _manifests()
    found = [(doc["metadata"]["name"], doc["spec"]) for doc in kinds["DaskCluster"]]
    # The operator names a DaskJob's cluster after the job.
    found += [
        (doc["metadata"]["name"], doc["spec"]["cluster"]["spec"])
        for doc in kinds["DaskJob"]
    ]
    return found


def _pod_specs() -> list[tuple[str, dict[str, Any]]]:
    pods = []
    for name, spec in _clusters():
        pods.append((f"{name} scheduler", spec["scheduler"]["spec"]))
        pods.append((f"{name} worker", spec["worker"]["spec"]))
    for doc in _manifests()["DaskJob"]:
        pods.append((f"{doc['metadata']['name']} job", doc["spec"]["job"]["spec"]))
    return pods


def _command(container: dict[str, Any]) -> list[str]:
    return [str(part) for part in container.get("command", []) + container["args"]]


def _option(argv: list[str], flag: str) -> str:
    assert argv.count(flag) == 1, f"{flag} once in {argv}"
    return argv[argv.index(flag) + 1]


def _quantity(text: Any) -> float:
    """A Kubernetes resource quantity (``4Gi``, ``500m``, ``2``) as a number."""
    units = {
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
        "Pi": 2**50,
        "Ei": 2**60,
        "k": 1e3,
        "M": 1e6,
        "G": 1e9,
        "T": 1e12,
        "P": 1e15,
        "E": 1e18,
        "m": 1e-3,
    }
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text))
    assert match and match.group(2) in {"", *units}, f"bad quantity {text!r}"
    return float(match.group(1)) * units.get(match.group(2), 1)


def _port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    instructions = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        instructions.append((word.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return instructions


def test_manifest_kinds_and_api_versions():
    kinds = _manifests()
    assert set(kinds) == {"DaskCluster", "DaskJob", "PersistentVolumeClaim"}
    for kind in ("DaskCluster", "DaskJob"):
        assert len(kinds[kind]) == 1
        assert kinds[kind][0]["apiVersion"] == OPERATOR_API
    assert kinds["PersistentVolumeClaim"][0]["apiVersion"] == "v1"
    assert kinds["DaskCluster"][0]["_file"] == "daskcluster.yaml"
    assert kinds["DaskJob"][0]["_file"] == "daskjob.yaml"
    assert kinds["PersistentVolumeClaim"][0]["_file"] == "pvc.yaml"
    for docs in kinds.values():
        for doc in docs:
            # Names the operator accepts: RFC 1123, short enough for <name>-scheduler.
            assert re.fullmatch(
                r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]
            )
            assert len(doc["metadata"]["name"]) <= 63 - len("-scheduler")


def test_crd_fields():
    for name, spec in _clusters():
        assert set(spec) == {"scheduler", "worker"}, name
        assert isinstance(spec["worker"]["replicas"], int)
        assert spec["worker"]["replicas"] >= 1
        assert spec["worker"]["spec"]["containers"]
        assert spec["scheduler"]["spec"]["containers"]
        service = spec["scheduler"]["service"]
        assert service["ports"]
        assert service["selector"] == {
            "dask.org/cluster-name": name,
            "dask.org/component": "scheduler",
        }
    for job in _manifests()["DaskJob"]:
        assert set(job["spec"]) == {"job", "cluster"}
        assert job["spec"]["job"]["spec"]["containers"]
        assert "spec" in job["spec"]["cluster"]


def test_scheduler_and_workers_run_dask():
    for name, spec in _clusters():
        (scheduler,) = spec["scheduler"]["spec"]["containers"]
        assert _command(scheduler)[:2] == ["dask", "scheduler"], name
        (worker,) = spec["worker"]["spec"]["containers"]
        argv = _command(worker)
        assert argv[:2] == ["dask", "worker"], name
        # The operator provides both variables; Kubernetes expands $(VAR) in args.
        assert argv[2] == "$(DASK_SCHEDULER_ADDRESS)"
        assert _option(argv, "--name") == "$(DASK_WORKER_NAME)"


def test_job_runs_dmask_train_against_its_cluster():
    (job,) = _manifests()["DaskJob"]
    name = job["metadata"]["name"]
    pod = job["spec"]["job"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    argv = _command(container)
    assert argv[:2] == ["dmask", "train"]
    assert argv[2] == "/data/faces.zarr"
    assert _option(argv, "--out") == "/data/model.zarr"
    assert _option(argv, "--scheduler") == "$(DASK_SCHEDULER_ADDRESS)"
    # The init container waits for the scheduler Service the operator creates.
    (wait,) = pod["initContainers"]
    script = " ".join(_command(wait))
    assert f'"{name}-scheduler"' in script
    assert str(OPERATOR_COMM_PORT) in script


def test_every_pod_mounts_the_shared_claim_at_one_path():
    (claim,) = _manifests()["PersistentVolumeClaim"]
    claim_name = claim["metadata"]["name"]
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    assert _quantity(claim["spec"]["resources"]["requests"]["storage"]) > 0
    paths = set()
    pods = _pod_specs()
    assert len(pods) == 5
    for label, pod in pods:
        volumes = {
            v["name"]
            for v in pod["volumes"]
            if v.get("persistentVolumeClaim", {}).get("claimName") == claim_name
        }
        assert len(volumes) == 1, label
        for container in pod["containers"]:
            mounts = [m for m in container["volumeMounts"] if m["name"] in volumes]
            assert len(mounts) == 1, f"{label} {container['name']}"
            paths.add(mounts[0]["mountPath"])
    assert paths == {"/data"}
    (job,) = _manifests()["DaskJob"]
    argv = _command(job["spec"]["job"]["spec"]["containers"][0])
    stores = [a for a in argv if a.endswith(".zarr")]
    assert stores and all(s.startswith("/data/") for s in stores)


def test_worker_memory_and_threads_match_container_limits():
    for name, spec in _clusters():
        (worker,) = spec["worker"]["spec"]["containers"]
        argv = _command(worker)
        nworkers = int(_option(argv, "--nworkers"))
        per_process = parse_bytes(_option(argv, "--memory-limit"))
        limits = worker["resources"]["limits"]
        requests = worker["resources"]["requests"]
        assert nworkers * per_process == _quantity(limits["memory"]), name
        assert _quantity(requests["memory"]) == _quantity(limits["memory"]), name
        threads = int(_option(argv, "--nthreads"))
        assert nworkers * threads == _quantity(limits["cpu"]), name
        (scheduler,) = spec["scheduler"]["spec"]["containers"]
        assert "memory" in scheduler["resources"]["limits"], name


def test_ports_match_between_containers_and_services():
    for name, spec in _clusters():
        (scheduler,) = spec["scheduler"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in scheduler["ports"]}
        # The operator looks the scheduler's ports up by these names.
        assert set(ports) == {"tcp-comm", "http-dashboard"}, name
        argv = _command(scheduler)
        assert int(_option(argv, "--port")) == ports["tcp-comm"]
        dashboard = _option(argv, "--dashboard-address")
        assert _port_of(dashboard) == ports["http-dashboard"]
        for probe in ("readinessProbe", "livenessProbe"):
            assert scheduler[probe]["httpGet"]["port"] in ports
        service = {p["name"]: p for p in spec["scheduler"]["service"]["ports"]}
        assert set(service) == set(ports), name
        for port_name, port in service.items():
            target = port["targetPort"]
            assert ports.get(target, target) == ports[port_name], (name, port_name)
        assert service["tcp-comm"]["port"] == OPERATOR_COMM_PORT
        (worker,) = spec["worker"]["spec"]["containers"]
        worker_ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
        wargv = _command(worker)
        assert (
            _port_of(_option(wargv, "--dashboard-address"))
            == worker_ports["http-dashboard"]
        )


def test_images_and_users_match_the_dockerfile():
    instructions = _dockerfile()
    user = [args for word, args in instructions if word == "USER"]
    assert user, "the image must set a USER"
    uid = user[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric non-root USER"
    gid = user[-1].split(":")[1] if ":" in user[-1] else None
    images = set()
    for label, pod in _pod_specs():
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True, label
        assert context["runAsUser"] == int(uid), label
        if gid is not None:
            assert context["fsGroup"] == int(gid), label
        for container in pod["containers"] + pod.get("initContainers", []):
            images.add(container["image"])
    assert len(images) == 1, images


def test_dockerfile_installs_dmask_as_non_root_without_entrypoint():
    instructions = _dockerfile()
    words = [word for word, _ in instructions]
    assert instructions[0] == ("FROM", "python:3.11-slim")
    copies = " ".join(args for word, args in instructions if word == "COPY")
    assert "pyproject.toml" in copies and "dmask" in copies
    runs = [args for word, args in instructions if word == "RUN"]
    install = [r for r in runs if re.search(r"\bpip install\b", r)]
    assert install, "the image must pip-install dmask"
    assert "useradd" in " ".join(runs)
    # The install runs as root, then the image switches to the unprivileged user.
    assert words.index("USER") > max(
        i for i, (w, a) in enumerate(instructions) if w == "RUN"
    )
    assert ("ENTRYPOINT", "[]") in instructions
    ignore = DOCKERFILE.with_name("Dockerfile.dockerignore")
    assert ignore.exists(), "the build context filter is missing"
    assert ".venv" not in ignore.read_text().replace("!", "")


def test_kubernetes_readme_names_the_manifests_and_services():
    text = (KUBE / "README.md").read_text()
    for path in ("pvc.yaml", "daskcluster.yaml", "daskjob.yaml"):
        assert f"kubectl apply -f cluster/kubernetes/{path}" in text
    for name, _ in _clusters():
        assert f"svc/{name}-scheduler" in text
    assert "docker build -f cluster/docker/Dockerfile" in text


# ------------------------------------------------------------------ start-local.sh


@pytest.fixture
def start_script_tools() -> None:
    for tool in ("bash", "setsid", "pgrep"):
        if shutil.which(tool) is None:
            pytest.skip(f"cluster/start-local.sh needs {tool}, not found on PATH")


def _run_start(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(START), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "DMASK_PYTHON": sys.executable},
        check=False,
    )


def test_start_local_script_runs_a_cluster_that_fits_exactly(
    start_script_tools, rng, tmp_path
):
    from distributed import Client

    state = tmp_path / "cluster"
    port, dashboard = _free_port(), _free_port()
    started = _run_start(
        "--workers",
        "2",
        "--threads-per-worker",
        "1",
        "--memory-limit",
        "1GB",
        "--scheduler-port",
        str(port),
        "--dashboard-port",
        str(dashboard),
        "--dir",
        str(state),
    )
    pids: list[int] = []
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        pids = [int(p.read_text()) for p in state.glob("*.pid")]
        assert len(pids) == 3
        sockets = listening_sockets(q for p in pids for q in process_tree(p))
        assert sockets, "no listening sockets found"
        assert all(ip in LOOPBACK for _, ip, _ in sockets), sockets
        match = re.search(r"^scheduler: (tcp://\S+)$", started.stdout, re.MULTILINE)
        assert match, started.stdout
        address = match.group(1)
        assert address == f"tcp://127.0.0.1:{port}"
        assert f"--scheduler {address}" in started.stdout
        assert "dmask train " in started.stdout
        assert f"http://127.0.0.1:{dashboard}/status" in started.stdout
        scheduler_file = state / "scheduler.json"
        assert json.loads(scheduler_file.read_text())["address"] == address

        sources, targets = _fit_pair(rng)
        local = dmask.fit(sources, targets, **FIT_OPTIONS)
        with Client(address, timeout="20s", set_as_default=False) as client:
            workers = client.scheduler_info(n_workers=-1)["workers"]
            assert len(workers) == 2
            assert sorted(w["name"] for w in workers.values()) == [
                "local-worker-0",
                "local-worker-1",
            ]
            for addr, info in workers.items():
                assert addr.startswith("tcp://127.0.0.1:")
                assert info["nthreads"] == 1
                assert info["memory_limit"] == 10**9
            with client.as_current():
                remote = dmask.fit(sources, targets, **FIT_OPTIONS)
        _assert_same_models(remote, local)
    finally:
        stopped = _run_start("stop", "--dir", str(state))
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "stopped 3 processes" in stopped.stdout
    for pid in pids:
        assert not _group_members(pid), f"process group {pid} still running"
    assert not list(state.glob("*.pid"))
    assert not (state / "scheduler.json").exists()


def test_start_local_script_reports_a_taken_port(start_script_tools, tmp_path):
    state = tmp_path / "cluster"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = _run_start(
            "--workers", "1", "--scheduler-port", str(port), "--dashboard-port", "0",
            "--dir", str(state),
        )  # fmt: skip
    assert started.returncode == 1, started.stdout + started.stderr
    assert "the scheduler exited" in started.stderr
    assert "Address already in use" in started.stderr
    assert not list(state.glob("*.pid"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "--workers must be a positive integer"),
        (["--threads-per-worker", "x"], "--threads-per-worker must be a positive"),
        (["--scheduler-port", "70000"], "--scheduler-port must be a port number"),
        (
            ["--threads", "x"],
            "--threads is deprecated and will be removed: use --threads-per-worker",
        ),
        (
            ["--port", "70000"],
            "--port is deprecated and will be removed: use --scheduler-port",
        ),
        (["--memory-limit", "lots"], "--memory-limit must be a size"),
        (["--bogus"], "unknown argument '--bogus'"),
    ],
)
def test_start_local_script_rejects_bad_arguments(
    start_script_tools, tmp_path, args, message
):
    result = _run_start(*args, "--dir", str(tmp_path / "c"), timeout=60)
    assert result.returncode == 2
    assert message in result.stderr
    assert not list((tmp_path / "c").glob("*.pid"))


# ------------------------------------------------------------------ ssh_cluster


@pytest.mark.parametrize(
    ("hosts", "options", "message"),
    [
        ([], {}, "no hosts given"),
        ("node1", {}, "hosts must be a list"),
        (["node 1"], {}, "bad host name"),
        ([""], {}, "bad host name"),
        (["a"], {"workers_per_host": 0}, "workers_per_host must be a positive"),
        (["a"], {"threads": True}, "threads must be a positive integer"),
        (["a"], {"threads": 1.5}, "threads must be a positive integer"),
        (["a"], {"memory_limit": "lots"}, "memory_limit must be a size"),
        (["a"], {"memory_limit": 0}, "memory_limit must be a size"),
        (["a"], {"scheduler_port": 70000}, "scheduler_port must be 0 to 65535"),
        (["a"], {"scheduler_port": -1}, "scheduler_port must be 0 to 65535"),
        (["a"], {"dashboard_address": ""}, "dashboard_address must be"),
        (["a", "b"], {"remote_python": ["p"]}, "one per host (2)"),
        (["a"], {"remote_python": ""}, "remote_python must not be empty"),
        (["a", "b"], {"connect_options": [{}]}, "one per host (2)"),
        (["a"], {"connect_options": 3}, "bad connect_options"),
    ],
)
def test_ssh_cluster_rejects_bad_arguments(hosts, options, message):
    with pytest.raises(DmaskError, match=re.escape(message)) as info:
        ssh_cluster(hosts, **options)
    assert "\n" not in str(info.value)


def test_ssh_cluster_needs_asyncssh(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "asyncssh" else real(name, *a),
    )
    with pytest.raises(DmaskError, match="needs the asyncssh package"):
        ssh_cluster(["127.0.0.1"])


def test_ssh_cluster_reports_an_unreachable_host_in_one_line():
    pytest.importorskip("asyncssh", reason="the SSH launcher needs asyncssh")
    closed = _free_port()  # nothing listens there: the connection is refused
    started = time.monotonic()
    with pytest.raises(DmaskError) as info:
        ssh_cluster(
            ["127.0.0.1"],
            scheduler_port=0,
            dashboard_address=None,
            connect_options={"port": closed, "known_hosts": None},
        )
    message = str(info.value)
    assert message.startswith("cannot start the SSH cluster on 127.0.0.1: ")
    assert "\n" not in message
    assert str(closed) in message or "refused" in message.lower()
    assert time.monotonic() - started < 30


def _sshd_binary() -> str | None:
    found = shutil.which("sshd")
    if found:
        return found
    for candidate in ("/usr/sbin/sshd", "/usr/local/sbin/sshd"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture
def sshd(tmp_path) -> Iterator[dict[str, Any]]:
    """An OpenSSH server on a free 127.0.0.1 port admitting this user by a test key.

    Yields asyncssh connect options and the environment mark sshd sets in every
    session, so that the test can find the processes started over it.
    """
    pytest.importorskip("asyncssh", reason="the SSH launcher needs asyncssh")
    binary = _sshd_binary()
    keygen = shutil.which("ssh-keygen")
    if binary is None or keygen is None:
        pytest.skip("no OpenSSH server here (apt-get install openssh-server)")
    if os.geteuid() == 0 and not os.path.isdir("/run/sshd"):
        # sshd started as root insists on its privilege separation directory,
        # which the package's service (not running here) would create.
        try:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        except OSError as exc:
            pytest.skip(f"sshd needs /run/sshd and it cannot be made: {exc}")
    folder = tmp_path / "sshd"
    folder.mkdir()
    folder.chmod(0o700)
    for key in ("host_key", "user_key"):
        subprocess.run(
            [keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(folder / key)],
            check=True,
            capture_output=True,
        )
    (folder / "authorized_keys").write_text((folder / "user_key.pub").read_text())
    port = _free_port()
    host_public = (folder / "host_key.pub").read_text().split()
    (folder / "known_hosts").write_text(
        f"[127.0.0.1]:{port} {host_public[0]} {host_public[1]}\n"
    )
    mark = f"DMASK_SSH_TEST={uuid.uuid4().hex}"
    user = getpass.getuser()
    (folder / "sshd_config").write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {folder / 'host_key'}",
                f"PidFile {folder / 'sshd.pid'}",
                f"AuthorizedKeysFile {folder / 'authorized_keys'}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "PermitRootLogin prohibit-password",
                f"AllowUsers {user}",
                f"SetEnv {mark}",
                "",
            ]
        )
    )
    checked = subprocess.run(
        [binary, "-t", "-f", str(folder / "sshd_config")],
        capture_output=True,
        text=True,
        check=False,
    )
    if checked.returncode != 0:
        pytest.skip(f"sshd rejects the test configuration: {checked.stderr.strip()}")
    log = folder / "sshd.log"
    server = subprocess.Popen(
        [binary, "-D", "-e", "-f", str(folder / "sshd_config")],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        start_new_session=True,
    )
    options = {
        "port": port,
        "username": user,
        "client_keys": [str(folder / "user_key")],
        "known_hosts": str(folder / "known_hosts"),
        "agent_path": None,
    }
    try:
        deadline = time.monotonic() + 10
        while True:
            if server.poll() is not None:
                pytest.skip(f"sshd exited at start: {log.read_text().strip()[-300:]}")
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            if time.monotonic() > deadline:
                pytest.skip("sshd did not listen within 10 s")
            time.sleep(0.1)
        _probe_login(options, log)
        yield {"connect_options": options, "mark": mark}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        for pid in _marked_processes(mark):  # sessions' leftovers, if any
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _probe_login(options: dict[str, Any], log: Path) -> None:
    """Skip, with sshd's reason, when this user cannot log in to the test server."""
    import asyncio

    import asyncssh

    async def probe() -> str:
        async with asyncssh.connect("127.0.0.1", **options) as conn:
            result = await conn.run("echo ok", check=False)
            return str(result.stdout).strip()

    try:
        answer = asyncio.run(asyncio.wait_for(probe(), 20))
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        tail = log.read_text().strip().splitlines()[-3:]
        pytest.skip(f"cannot log in to the test sshd: {exc} ({' | '.join(tail)})")
    if answer != "ok":
        pytest.skip(f"the test sshd runs no commands (got {answer!r})")


def test_ssh_cluster_on_loopback_fits_exactly(sshd, rng):
    from distributed import Client

    sources, targets = _fit_pair(rng)
    local = dmask.fit(sources, targets, **FIT_OPTIONS)
    cluster = ssh_cluster(
        ["127.0.0.1", "127.0.0.1"],
        workers_per_host=2,
        threads=1,
        memory_limit="1GB",
        scheduler_port=0,
        dashboard_address=None,
        remote_python=sys.executable,
        connect_options=sshd["connect_options"],
    )
    try:
        # Started through sshd: the processes carry the mark sshd sets.
        assert _marked_processes(sshd["mark"])
        with Client(cluster, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=60)
            info = client.scheduler_info(n_workers=-1)
            assert info["address"].startswith("tcp://127.0.0.1:")
            assert len(info["workers"]) == 2
            for address, worker in info["workers"].items():
                assert address.startswith("tcp://127.0.0.1:")
                assert worker["nthreads"] == 1
                assert worker["memory_limit"] == 10**9
            with client.as_current():
                remote = dmask.fit(sources, targets, **FIT_OPTIONS)
    finally:
        cluster.close()
    _assert_same_models(remote, local)
    deadline = time.monotonic() + 20
    while _marked_processes(sshd["mark"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _marked_processes(sshd["mark"]), "processes left after close()"


def test_ssh_cluster_listens_on_loopback_only(sshd):
    """With the default dashboard too: 127.0.0.1 everywhere, as printed."""
    cluster = ssh_cluster(
        ["127.0.0.1"],
        scheduler_port=0,
        remote_python=sys.executable,
        connect_options=sshd["connect_options"],
    )
    try:
        sockets = listening_sockets(_marked_processes(sshd["mark"]))
        assert sockets, "no listening sockets found"
        assert all(ip in LOOPBACK for _, ip, _ in sockets), sockets
        assert "127.0.0.1" in cluster.dashboard_link
    finally:
        cluster.close()


def test_ssh_cluster_reports_what_a_failed_remote_process_said(sshd, tmp_path):
    missing = tmp_path / "no-such-venv" / "bin" / "python"
    with pytest.raises(DmaskError) as info:
        ssh_cluster(
            ["127.0.0.1"],
            scheduler_port=0,
            dashboard_address=None,
            remote_python=str(missing),
            connect_options=sshd["connect_options"],
        )
    message = str(info.value)
    assert message.startswith("cannot start the SSH cluster on 127.0.0.1: ")
    assert "a remote process exited" in message
    assert str(missing) in message
    assert "\n" not in message


def test_ssh_cluster_reports_a_taken_scheduler_port(sshd):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(DmaskError) as info:
            ssh_cluster(
                ["127.0.0.1"],
                scheduler_port=busy.getsockname()[1],
                dashboard_address=None,
                remote_python=sys.executable,
                connect_options=sshd["connect_options"],
            )
    message = str(info.value)
    assert message.startswith("cannot start the SSH cluster on 127.0.0.1: ")
    assert "Address already in use" in message
    assert "\n" not in message
