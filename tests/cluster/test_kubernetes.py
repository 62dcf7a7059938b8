"""Kubernetes: the manifests against the Dask operator's own resource schemas, the
image's build file against pyproject, and ``dmask cluster kubernetes``.

There is no Kubernetes here. The schemas are the CustomResourceDefinitions that the
installed dask-kubernetes ships in its Helm chart (``crds/``): dask-kubernetes writes
its CRDs in ``operator/customresources/*.yaml`` with ``$ref``s into Kubernetes'
OpenAPI definitions (``templates.yaml``, k8s-crd-resolver) plus JSON patches
(``*.patch.yaml``), and the chart holds the result, resolved and patched, which is
what ``helm install`` gives the API server. They are checked with jsonschema as the
API server checks them (see :func:`_as_json_schema`):

* an object with ``properties`` accepts no other field (the API server's strict
  field validation, ``kubectl apply``'s default), unless it says
  ``x-kubernetes-preserve-unknown-fields: true`` or has ``additionalProperties``;
* ``x-kubernetes-int-or-string: true`` takes an integer or a string; the operator's
  CRDs instead say ``type: string, format: int-or-string`` (their resolver's
  rendering), which the API server checks as a string: an integer port there is
  refused (dask/dask-kubernetes#778), so it is refused here too;
* ``nullable: true`` also takes null; a null where that is not said is dropped
  before validation, as the API server prunes it;
* ``format: int32``/``int64`` are range checks; the implicit ``apiVersion``,
  ``kind`` and ``metadata`` of every object are added at the top.

The launcher's failures are real: an import made to fail in a subprocess, and a
kubeconfig whose API server is 127.0.0.1:1 (refused at once).
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import ROOT

jsonschema = pytest.importorskip("jsonschema")
dask_kubernetes = pytest.importorskip("dask_kubernetes")

from dmask.cli.app import _build_parser  # noqa: E402
from dmask.cluster.kubernetes import (  # noqa: E402
    DEFAULT_IMAGE,
    INSTALL_HINT,
    kubernetes_cluster_spec,
)
from dmask.errors import DmaskError  # noqa: E402

KUBE = ROOT / "cluster" / "kubernetes"
DOCKER = ROOT / "cluster" / "docker"
OPERATOR = Path(dask_kubernetes.__file__).parent / "operator"
SOURCES = OPERATOR / "customresources"
CHART_CRDS = OPERATOR / "deployment" / "helm" / "dask-kubernetes-operator" / "crds"
OPERATOR_KINDS = {"DaskCluster", "DaskJob", "DaskWorkerGroup", "DaskAutoscaler"}
#: Plain Kubernetes objects the manifests may hold, by kind: their apiVersion.
CORE_KINDS = {
    "PersistentVolumeClaim": "v1",
    "ConfigMap": "v1",
    "Secret": "v1",
    "ServiceAccount": "v1",
}
INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


# ------------------------------------------------------------------ the schemas


def _as_json_schema(schema: Any) -> Any:
    """An openAPIV3Schema of a CRD as the JSON schema the API server applies."""
    if isinstance(schema, list):
        return [_as_json_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _as_json_schema(value) for key, value in schema.items()}
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if (
        out.get("type") == "object"
        and "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _prune_nulls(value: Any, schema: dict[str, Any]) -> Any:
    """``value`` without the nulls of fields that are not nullable."""
    if isinstance(value, dict):
        props = schema.get("properties", {})
        return {
            key: _prune_nulls(item, props.get(key, {}))
            for key, item in value.items()
            if item is not None or props.get(key, {}).get("nullable")
        }
    if isinstance(value, list):
        return [_prune_nulls(item, schema.get("items", {})) for item in value]
    return value


def _load_crds() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the raw openAPIV3Schema of every served version."""
    found = {}
    for path in sorted(CHART_CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        assert crd["kind"] == "CustomResourceDefinition", path
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served", True):
                key = (f"{group}/{version['name']}", kind)
                found[key] = version["schema"]["openAPIV3Schema"]
    return found


CRDS = _load_crds()
_format_checker = jsonschema.FormatChecker()
for _name, (_low, _high) in INT_RANGES.items():
    _format_checker.checks(_name)(
        lambda v, lo=_low, hi=_high: not isinstance(v, int) or lo <= v <= hi
    )


def _validator(api_version: str, kind: str) -> Any:
    raw = CRDS.get((api_version, kind))
    assert raw is not None, f"no CRD for {kind} {api_version} in {CHART_CRDS}"
    schema = _as_json_schema(raw)
    schema.setdefault("properties", {}).update(
        apiVersion={"type": "string", "enum": [api_version]},
        kind={"type": "string", "enum": [kind]},
        metadata={"type": "object"},
    )
    return jsonschema.Draft4Validator(schema, format_checker=_format_checker)


def schema_errors(doc: dict[str, Any]) -> list[str]:
    """Where and why the operator's CRD refuses ``doc`` (empty: accepted)."""
    raw = CRDS[(doc["apiVersion"], doc["kind"])]
    checked = _prune_nulls(doc, raw)
    errors = _validator(doc["apiVersion"], doc["kind"]).iter_errors(checked)
    return sorted(
        "/".join(str(p) for p in error.absolute_path) + ": " + error.message
        for error in errors
    )


def test_chart_crds_are_the_resolved_sources():
    """The chart's CRDs are the package's sources, resolved and patched."""
    kinds = set()
    for source in sorted(SOURCES.glob("dask*.yaml")):
        if source.name.endswith(".patch.yaml"):
            continue
        crd = yaml.safe_load(source.read_text())
        built = yaml.safe_load((CHART_CRDS / source.name).read_text())
        for key in ("group", "names", "scope"):
            assert built["spec"][key] == crd["spec"][key], (source.name, key)
        assert [v["name"] for v in built["spec"]["versions"]] == [
            v["name"] for v in crd["spec"]["versions"]
        ]
        assert "$ref" not in (CHART_CRDS / source.name).read_text()
        patch = source.with_name(source.stem + ".patch.yaml")
        for op in yaml.safe_load(patch.read_text()) if patch.exists() else []:
            node: Any = built
            for part in op["path"].strip("/").split("/"):
                node = node[int(part)] if isinstance(node, list) else node[part]
            assert node == op["value"], (source.name, op["path"])
        kinds.add(crd["spec"]["names"]["kind"])
    assert kinds == OPERATOR_KINDS
    assert {kind for _, kind in CRDS} == OPERATOR_KINDS


# ------------------------------------------------------------------ the manifests


def _documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(KUBE.glob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    assert docs
    return docs


DOCUMENTS = _documents()
OPERATOR_DOCS = [(f, d) for f, d in DOCUMENTS if d.get("kind") in OPERATOR_KINDS]


@pytest.mark.parametrize(
    "doc", [d for _, d in OPERATOR_DOCS], ids=[f for f, _ in OPERATOR_DOCS]
)
def test_manifest_is_valid_against_the_operator_schema(doc):
    assert schema_errors(doc) == []
    from dask_kubernetes.operator.validation import validate_cluster_name

    validate_cluster_name(doc["metadata"]["name"])  # the operator's own name check


def test_every_document_is_known_and_named():
    assert OPERATOR_DOCS, "no DaskCluster or DaskJob manifest"
    for file, doc in DOCUMENTS:
        assert isinstance(doc, dict), file
        kind = doc.get("kind")
        assert kind in OPERATOR_KINDS or kind in CORE_KINDS, (file, kind)
        if kind in CORE_KINDS:
            assert doc.get("apiVersion") == CORE_KINDS[kind], file
            assert isinstance(doc.get("spec", {}), dict), file
        name = doc.get("metadata", {}).get("name")
        assert isinstance(name, str) and re.fullmatch(
            r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name
        ), (file, name)


def _broken(edit: Any) -> dict[str, Any]:
    (doc,) = [d for f, d in OPERATOR_DOCS if d["kind"] == "DaskCluster"]
    doc = copy.deepcopy(doc)
    edit(doc["spec"])
    return doc


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    return spec["worker"]["spec"]["containers"][0]


def _scheduler(spec: dict[str, Any]) -> dict[str, Any]:
    return spec["scheduler"]["spec"]["containers"][0]


@pytest.mark.parametrize(
    ("edit", "where"),
    [
        (lambda s: _worker(s).update(volumeMount=_worker(s)["volumeMounts"]),
         "worker/spec/containers/0: Additional properties"),
        (lambda s: s["worker"].update(replicas="2"), "worker/replicas: '2'"),
        (lambda s: s.update(workers=s["worker"]), ": Additional properties"),
        (lambda s: s["scheduler"].pop("service"), "scheduler: 'service'"),
        (lambda s: _scheduler(s)["readinessProbe"]["httpGet"].update(port=8787),
         "readinessProbe/httpGet/port: 8787 is not of type 'string'"),
        (lambda s: _scheduler(s)["ports"][0].update(containerPort=2**31),
         "ports/0/containerPort: 2147483648 is not a 'int32'"),
        (lambda s: _worker(s).update(args="dask worker"),
         "worker/spec/containers/0/args: 'dask worker' is not of type 'array'"),
    ],
    ids=["misspelled field", "replicas a string", "unknown spec field",
         "no service", "integer probe port", "port out of int32", "args a string"],
)  # fmt: skip
def test_a_broken_manifest_is_refused(edit, where):
    errors = schema_errors(_broken(edit))
    assert any(where in e for e in errors), errors


def test_nulls_are_pruned_unless_required():
    assert schema_errors(_broken(lambda s: _worker(s).update(env=None))) == []
    errors = schema_errors(_broken(lambda s: s.update(worker=None)))
    assert any("'worker' is a required property" in e for e in errors), errors


# ------------------------------------------------------------------ commands


def _pods(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"]
    if doc["kind"] == "DaskJob":
        return [spec["job"]["spec"], *_pods({"kind": "DaskCluster", **spec["cluster"]})]
    return [spec["scheduler"]["spec"], spec["worker"]["spec"]]


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for pod in _pods(doc):
        found += pod.get("initContainers", []) + pod["containers"]
    return found


def _check_command(container: dict[str, Any]) -> str:
    """Parse a container's command line with the program's own parser."""
    argv = [str(a) for a in container.get("command", []) + container.get("args", [])]
    assert argv, f"{container['name']} has no command (the image has no entrypoint)"
    if argv[0] == "dmask":
        _build_parser().parse_args(argv[1:])
    elif argv[:2] == ["dask", "scheduler"]:
        from distributed.cli.dask_scheduler import main

        main.make_context("dask scheduler", argv[2:])
    elif argv[:2] == ["dask", "worker"]:
        from distributed.cli.dask_worker import main

        main.make_context("dask worker", argv[2:])
    elif argv[:2] == ["python", "-c"]:
        compile(argv[2], container["name"], "exec")
    else:
        pytest.fail(f"{container['name']}: unknown program {argv[:2]}")
    return " ".join(argv[:2])


def test_manifest_commands_parse_and_run_the_image():
    programs = set()
    for file, doc in OPERATOR_DOCS:
        for container in _containers(doc):
            programs.add(_check_command(container))
            assert container["image"] == DEFAULT_IMAGE, (file, container["name"])
    assert {"dask scheduler", "dask worker", "dmask train"} <= programs
    readme = (KUBE / "README.md").read_text()
    assert f"-t {DEFAULT_IMAGE} ." in readme
    assert (
        f"docker build -f cluster/docker/Dockerfile -t {DEFAULT_IMAGE}"
        in (DOCKER / "Dockerfile").read_text()
    )


def test_a_bad_command_line_is_refused():
    with pytest.raises(SystemExit):
        _check_command({"name": "job", "command": ["dmask"], "args": ["train"]})
    import click

    with pytest.raises(click.UsageError):
        _check_command({"name": "w", "args": ["dask", "worker", "--threads", "2"]})


# ------------------------------------------------------------------ the Dockerfile


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    found, pending = [], ""
    for raw in (DOCKER / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        word, _, rest = (pending + line).partition(" ")
        pending = ""
        found.append((word.upper(), rest.strip()))
    return found


PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pip_install() -> tuple[str, set[str]]:
    """The directory the image pip-installs and the extras it names."""
    runs = [args for word, args in _instructions() if word == "RUN"]
    targets = []
    for run in runs:
        for command in run.split("&&"):
            words = shlex.split(command)
            if words[:2] == ["pip", "install"]:
                targets += [w for w in words[2:] if not w.startswith("-")]
    assert len(targets) == 1, f"one pip install of dmask, got {targets}"
    match = re.fullmatch(r"([^\[\]]+)(?:\[([^\]]*)\])?", targets[0])
    assert match, targets[0]
    extras = {e.strip() for e in (match.group(2) or "").split(",") if e.strip()}
    return match.group(1), extras


def test_dockerfile_installs_the_package_as_pyproject_declares_it():
    target, extras = _pip_install()
    assert extras <= set(PYPROJECT["project"]["optional-dependencies"]), extras
    assert "test" not in extras and "kubernetes" not in extras
    assert "s3" in extras, "the workers must be able to read s3:// stores"
    # The install is of the copied source tree: its pyproject, readme, packages.
    copied = {}
    workdir = "/"
    for word, args in _instructions():
        if word == "RUN" and re.search(r"\bpip install\b", args):
            break
        if word == "WORKDIR":
            workdir = args
        if word == "COPY":
            *sources, dest = args.split()
            base = dest if dest.startswith("/") else f"{workdir}/{dest}"
            for source in sources:
                one = len(sources) == 1 and not dest.endswith("/")
                where = base if one else f"{base}/{source}"
                copied[os.path.normpath(where)] = source
    root = os.path.normpath(target)
    project = PYPROJECT["project"]
    needed = ["pyproject.toml", project["readme"]]
    needed += [p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"][
        "find"]["include"]]  # fmt: skip
    for path in needed:
        assert os.path.join(root, path.rstrip("/")) in copied, (path, copied)
    # ... and the build context filter lets those through.
    rules = (DOCKER / "Dockerfile.dockerignore").read_text().split("\n")
    rules = [r.strip() for r in rules if r.strip() and not r.startswith("#")]

    def sent(path: str) -> bool:
        keep = True
        for rule in rules:
            negate = rule.startswith("!")
            pattern = rule.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
                keep = negate
        return keep

    for package in ("dmask",):
        for data in PYPROJECT["tool"]["setuptools"]["package-data"][package]:
            assert (ROOT / package / data).exists(), data
            assert sent(f"{package}/{data}"), data
    for path in ("pyproject.toml", project["readme"], "dmask/__init__.py"):
        assert sent(path), path
    assert not sent(".venv/bin/python") and not sent("tests/conftest.py")
    assert "dmask" in project["scripts"]


def test_dockerfile_python_satisfies_requires_python():
    from packaging.specifiers import SpecifierSet

    (base,) = [args for word, args in _instructions() if word == "FROM"]
    match = re.fullmatch(r"python:(\d+\.\d+)(?:\.\d+)?(?:-\S+)?", base)
    assert match, base
    assert match.group(1) in SpecifierSet(PYPROJECT["project"]["requires-python"])


# ------------------------------------------------------------------ the launcher


def test_launcher_spec_is_valid_and_carries_the_options():
    spec = kubernetes_cluster_spec(
        "dmask-test",
        image="registry.example.com/dmask:9",
        workers=5,
        threads=3,
        memory_limit="6GiB",
        scheduler_memory="1GiB",
        env={"AWS_REGION": "eu-west-1", "DASK_LOGGING__DISTRIBUTED": "info"},
        claim="dmask-data",
    )
    assert schema_errors(spec) == []
    assert spec["metadata"]["name"] == "dmask-test"
    assert spec["spec"]["worker"]["replicas"] == 5
    worker, scheduler = _worker(spec["spec"]), _scheduler(spec["spec"])
    assert _check_command(worker) == "dask worker"
    assert _check_command(scheduler) == "dask scheduler"
    from dask.utils import parse_bytes
    from distributed.cli.dask_worker import main

    params = main.make_context("dask worker", worker["args"][2:]).params
    assert params["nthreads"] == 3
    assert parse_bytes(params["memory_limit"]) == 6 * 2**30
    assert worker["resources"]["limits"] == {"cpu": "3", "memory": "6Gi"}
    assert worker["resources"]["requests"] == worker["resources"]["limits"]
    assert scheduler["resources"]["limits"]["memory"] == "1Gi"
    for container in (worker, scheduler):
        assert container["image"] == "registry.example.com/dmask:9"
        assert {"name": "AWS_REGION", "value": "eu-west-1"} in container["env"]
        assert container["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
    for pod in _pods(spec):
        assert pod["securityContext"]["runAsUser"] == 1000
        assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "dmask-data"
    assert spec["spec"]["scheduler"]["service"]["selector"] == {
        "dask.org/cluster-name": "dmask-test",
        "dask.org/component": "scheduler",
    }


def test_launcher_spec_defaults_are_valid():
    spec = kubernetes_cluster_spec()
    assert schema_errors(spec) == []
    assert re.fullmatch(r"dmask(-[a-z0-9-]+)?", spec["metadata"]["name"])
    assert _worker(spec["spec"])["image"] == DEFAULT_IMAGE
    assert "env" not in _worker(spec["spec"]) and "volumes" not in _pods(spec)[0]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"name": "Dmask_1"}, "bad cluster name 'Dmask_1'"),
        ({"name": "x" * 60}, "at most"),
        ({"workers": 0}, "workers must be a positive integer"),
        ({"threads": True}, "threads must be a positive integer"),
        ({"memory_limit": "lots"}, "memory_limit must be a size"),
        ({"env": {"1X": "a"}}, "bad environment variable name"),
        ({"image": "a b"}, "bad image name"),
    ],
)
def test_launcher_spec_rejects_bad_options(options, message):
    with pytest.raises(DmaskError, match=re.escape(message)):
        kubernetes_cluster_spec(**options)


def _dmask(
    *argv: str, env: dict[str, str] | None = None, prelude: str = ""
) -> tuple[subprocess.CompletedProcess[str], float]:
    code = "\n".join(
        [
            "import sys",
            prelude,
            "from dmask.cli import main",
            f"sys.exit(main({argv!r}))",
        ]
    )
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )
    return done, time.monotonic() - start


def test_launcher_without_the_extra_says_how_to_install_it():
    done, _ = _dmask(
        "cluster", "kubernetes", prelude="sys.modules['dask_kubernetes'] = None"
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert INSTALL_HINT in lines[0] and lines[0].startswith("dmask cluster: error:")
    # Its help needs no extra.
    done, _ = _dmask(
        "cluster", "kubernetes", "--help",
        prelude="sys.modules['dask_kubernetes'] = None",
    )  # fmt: skip
    assert done.returncode == 0 and "--scheduler-file" in done.stdout


def test_launcher_without_a_reachable_api_fails_in_one_line(tmp_path):
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "nowhere", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "nobody", "user": {"token": "none"}}],
        "contexts": [
            {"name": "nowhere", "context": {"cluster": "nowhere", "user": "nobody"}}
        ],
        "current-context": "nowhere",
    }
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps(config))
    scheduler_file = tmp_path / "s.json"
    done, seconds = _dmask(
        "cluster", "kubernetes", "--timeout", "10",
        "--scheduler-file", str(scheduler_file),
        env={"KUBECONFIG": str(kubeconfig)},
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "cannot reach the Kubernetes API at https://127.0.0.1:1" in lines[0]
    assert seconds < 30
    assert done.stdout == "" and not scheduler_file.exists()


def test_launcher_refuses_a_bad_adaptive_range(capsys):
    from helpers import cli_error

    message = cli_error(capsys, "cluster", "kubernetes", "--adapt", "3", "2", code=2)
    assert "--adapt" in message
