"""Start a Dask cluster on Kubernetes through the Dask operator (dask-kubernetes).

Two steps, so that the first can be checked without a Kubernetes cluster:

* :func:`kubernetes_cluster_spec` builds the ``DaskCluster`` resource (a plain dict,
  from :func:`dask_kubernetes.operator.make_cluster_spec`) for the dmask image: the
  scheduler and workers run ``dask scheduler`` and ``dask worker`` (the image has no
  entrypoint and distributed no longer ships ``dask-scheduler``), each worker's
  ``--memory-limit`` and ``--nthreads`` equal its container's limits, every pod runs
  as the image's user 1000, and a claim can be mounted at ``/data`` in every pod.
* :func:`kubernetes_cluster` asks the Kubernetes API whether it answers (within a
  time limit, so that an unreachable API fails at once instead of hanging), then
  creates the resource with :class:`dask_kubernetes.operator.KubeCluster`, which waits
  for the operator to start the scheduler and connects to it (through a port-forward
  when this machine is outside the Kubernetes cluster).

Both need the ``kubernetes`` extra (``pip install "dmask[kubernetes]"``); failures are
one-line :class:`~dmask.errors.DmaskError` messages. The operator itself must be
installed in the Kubernetes cluster (see ``cluster/kubernetes/README.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dmask.errors import DmaskError

if TYPE_CHECKING:
    from dask_kubernetes.operator import KubeCluster

__all__ = [
    "DEFAULT_IMAGE",
    "DATA_PATH",
    "INSTALL_HINT",
    "default_cluster_name",
    "in_cluster_address",
    "kubernetes_cluster",
    "kubernetes_cluster_spec",
]

logger = logging.getLogger(__name__)


def _version() -> str:
    from dmask import __version__

    return __version__


#: The image that ``cluster/docker/Dockerfile`` builds (``docker build -t ...``).
DEFAULT_IMAGE = f"dmask:{_version()}"
#: Where a claim is mounted in every pod, as in the manifests.
DATA_PATH = "/data"
#: How to get the launcher's dependency.
INSTALL_HINT = 'pip install "dmask[kubernetes]"'
#: The image's unprivileged user and group (``USER 1000:1000`` in the Dockerfile).
IMAGE_UID = 1000
#: The scheduler's port; the operator points every worker at it.
SCHEDULER_PORT = 8786

_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")


def _operator() -> Any:
    """The ``dask_kubernetes.operator`` module, or the one-line install hint."""
    try:
        import dask_kubernetes.operator as operator
    except ImportError as exc:
        raise DmaskError(
            f"the Kubernetes launcher needs dask-kubernetes: {INSTALL_HINT}"
        ) from exc
    return operator


def default_cluster_name() -> str:
    """``dmask-USER``: this user's name made into a valid resource name.

    Returns
    -------
    str
        Lowercase letters, digits and dashes, short enough for ``NAME-scheduler``.
    """
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = ""
    user = re.sub(r"[^a-z0-9]+", "-", user.lower()).strip("-")
    return f"dmask-{user}"[:40].rstrip("-") if user else "dmask"


def in_cluster_address(name: str, namespace: str) -> str:
    """The scheduler's address for pods inside the Kubernetes cluster.

    Parameters
    ----------
    name : str
        The DaskCluster's name (the operator's Service is ``NAME-scheduler``).
    namespace : str
        Its namespace.

    Returns
    -------
    str
        ``tcp://NAME-scheduler.NAMESPACE.svc.cluster.local:8786``.
    """
    return f"tcp://{name}-scheduler.{namespace}.svc.cluster.local:{SCHEDULER_PORT}"


def _check_name(name: Any) -> str:
    from dask_kubernetes.constants import MAX_CLUSTER_NAME_LEN

    if (
        not isinstance(name, str)
        or not _NAME.fullmatch(name)
        or len(name) > MAX_CLUSTER_NAME_LEN
    ):
        raise DmaskError(
            f"bad cluster name {name!r}: lowercase letters, digits and '-', starting "
            f"and ending with a letter or digit, at most {MAX_CLUSTER_NAME_LEN} "
            "characters"
        )
    return name


def _check_count(what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DmaskError(f"{what} must be a positive integer, got {value!r}")
    return value


def _quantity(what: str, size: Any) -> str:
    """A dask size (``4GiB``, ``4GB``, bytes) as a Kubernetes memory quantity."""
    from dask.utils import parse_bytes

    try:
        nbytes = parse_bytes(size) if isinstance(size, str) else size
    except (TypeError, ValueError):
        nbytes = None
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes <= 0:
        raise DmaskError(f"{what} must be a size such as 4GiB, got {size!r}")
    for suffix, unit in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if nbytes % unit == 0:
            return f"{nbytes // unit}{suffix}"
    return str(nbytes)


def _env_list(env: Mapping[str, str] | None) -> list[dict[str, str]]:
    items = []
    for key, value in (env or {}).items():
        if not isinstance(key, str) or not _ENV_NAME.fullmatch(key):
            raise DmaskError(f"bad environment variable name {key!r}")
        items.append({"name": key, "value": str(value)})
    return items


def kubernetes_cluster_spec(
    name: str | None = None,
    *,
    image: str = DEFAULT_IMAGE,
    workers: int = 2,
    threads: int = 1,
    memory_limit: str | int = "4GiB",
    scheduler_memory: str | int = "2GiB",
    env: Mapping[str, str] | None = None,
    claim: str | None = None,
) -> dict[str, Any]:
    """The ``DaskCluster`` resource that :func:`kubernetes_cluster` creates.

    Built by :func:`dask_kubernetes.operator.make_cluster_spec`, then fitted to the
    dmask image. Nothing is contacted: the result can be inspected, validated
    against the operator's schema or written out for ``kubectl apply``.

    Parameters
    ----------
    name : str, optional
        The DaskCluster's name (default: :func:`default_cluster_name`); the
        scheduler's Service is ``NAME-scheduler``.
    image : str
        The image of the scheduler and workers (built from
        ``cluster/docker/Dockerfile``).
    workers : int
        Worker pods, one worker process each.
    threads : int
        Threads per worker; also each worker container's CPU request and limit.
    memory_limit : str or int
        Memory per worker (``"4GiB"`` or bytes): Dask's ``--memory-limit`` and the
        container's memory request and limit, so Dask spills and pauses before the
        kernel's OOM killer ends the pod.
    scheduler_memory : str or int
        Memory request and limit of the scheduler's container (1 CPU).
    env : mapping of str to str, optional
        Environment variables of every container (store credentials, ``DASK_*``
        configuration).
    claim : str, optional
        A PersistentVolumeClaim mounted at ``/data`` in every pod (the stores).

    Returns
    -------
    dict
        The resource: ``apiVersion``, ``kind``, ``metadata`` and ``spec``.

    Raises
    ------
    DmaskError
        Bad arguments, or dask-kubernetes not installed.
    """
    operator = _operator()
    name = _check_name(default_cluster_name() if name is None else name)
    if not isinstance(image, str) or not image.strip() or " " in image:
        raise DmaskError(f"bad image name {image!r}")
    workers = _check_count("workers", workers)
    threads = _check_count("threads", threads)
    worker_memory = _quantity("memory_limit", memory_limit)
    scheduler_quantity = _quantity("scheduler_memory", scheduler_memory)
    env_list = _env_list(env)
    if claim is not None:
        claim = _check_name(claim)

    spec: dict[str, Any] = operator.make_cluster_spec(
        name,
        image=image,
        n_workers=workers,
        env=env_list,
        worker_command=[
            "dask",
            "worker",
            "--nthreads",
            str(threads),
            "--memory-limit",
            worker_memory,  # dask reads 4Gi as 4 GiB too
        ],
    )
    scheduler_pod = spec["spec"]["scheduler"]["spec"]
    worker_pod = spec["spec"]["worker"]["spec"]
    (scheduler,) = scheduler_pod["containers"]
    (worker,) = worker_pod["containers"]
    # distributed's command line is `dask scheduler` now (no dask-scheduler script).
    args = scheduler["args"]
    if args and args[0] == "dask-scheduler":
        args[:1] = ["dask", "scheduler"]
    args += ["--port", str(SCHEDULER_PORT), "--dashboard-address", ":8787"]
    scheduler["resources"] = {
        "requests": {"cpu": "1", "memory": scheduler_quantity},
        "limits": {"cpu": "1", "memory": scheduler_quantity},
    }
    worker["resources"] = {
        "requests": {"cpu": str(threads), "memory": worker_memory},
        "limits": {"cpu": str(threads), "memory": worker_memory},
    }
    # `--dashboard-address 8788` means every interface in distributed: say so.
    wargs = worker["args"]
    if "--dashboard-address" in wargs:
        where = wargs.index("--dashboard-address") + 1
        wargs[where] = ":" + wargs[where].lstrip(":")
    for pod in (scheduler_pod, worker_pod):
        pod["securityContext"] = {
            "runAsNonRoot": True,
            "runAsUser": IMAGE_UID,
            "runAsGroup": IMAGE_UID,
            "fsGroup": IMAGE_UID,
        }
        for container in pod["containers"]:
            container["imagePullPolicy"] = "IfNotPresent"
            if not env_list:
                container.pop("env", None)
            if claim is not None:
                container["volumeMounts"] = [{"name": "data", "mountPath": DATA_PATH}]
        if claim is not None:
            pod["volumes"] = [
                {"name": "data", "persistentVolumeClaim": {"claimName": claim}}
            ]
    spec["metadata"]["labels"] = {"app.kubernetes.io/name": "dmask"}
    return spec


def _reason(exc: BaseException) -> str:
    """The innermost cause of a failure, on one line."""
    while exc.__cause__ is not None or (
        exc.__context__ is not None and not exc.__suppress_context__
    ):
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    lines = str(exc).strip().splitlines()
    return " ".join(line.strip() for line in lines[:1]) or type(exc).__name__


async def _ask_api(namespace: str | None) -> tuple[str, str]:
    """The API server's address and the namespace to use; raises if it is silent."""
    import kr8s.asyncio

    api = await kr8s.asyncio.api()
    return str(api.auth.server), namespace or api.namespace or "default"


def _probe(namespace: str | None, timeout: float) -> str:
    """The namespace to use, once the Kubernetes API has answered within ``timeout``."""

    async def probe() -> tuple[str, str]:
        return await asyncio.wait_for(_ask_api(namespace), timeout)

    try:
        server, namespace = asyncio.run(probe())
    except TimeoutError as exc:
        raise DmaskError(
            f"no answer from the Kubernetes API within {timeout:g} s "
            "(check KUBECONFIG and the current context)"
        ) from exc
    except Exception as exc:  # httpx, kr8s, a kubeconfig that cannot be read
        where = ""
        with contextlib.suppress(Exception):
            where = f" at {exc.request.url.scheme}://{exc.request.url.netloc.decode()}"  # type: ignore[attr-defined]
        raise DmaskError(
            f"cannot reach the Kubernetes API{where}: {_reason(exc)}"
        ) from exc
    logger.info("Kubernetes API at %s answers; namespace %s", server, namespace)
    return namespace


def kubernetes_cluster(
    spec: Mapping[str, Any],
    *,
    namespace: str | None = None,
    timeout: float = 120,
    adapt: tuple[int, int] | None = None,
) -> KubeCluster:
    """Create a ``DaskCluster`` and connect to its scheduler.

    Parameters
    ----------
    spec : mapping
        The resource, from :func:`kubernetes_cluster_spec` (or a manifest).
    namespace : str, optional
        The namespace (default: the current context's, else ``default``).
    timeout : float
        Seconds to wait for the Kubernetes API's first answer, and for each step
        of the start (the operator taking the resource, the scheduler's pod).
    adapt : (int, int), optional
        Let the operator scale the workers between these numbers by the
        scheduler's load (a ``DaskAutoscaler``) instead of a fixed count.

    Returns
    -------
    dask_kubernetes.operator.KubeCluster
        The running cluster; ``Client(cluster)`` connects to it and ``close()``
        deletes the DaskCluster with its pods.

    Raises
    ------
    DmaskError
        dask-kubernetes not installed, the API unreachable or silent, the
        operator missing, a cluster of that name already there, or a scheduler
        that does not start.
    """
    operator = _operator()
    from dask_kubernetes.operator.kubecluster.kubecluster import CreateMode

    if not (isinstance(timeout, int | float) and timeout > 0):
        raise DmaskError(f"timeout must be a positive number, got {timeout!r}")
    if adapt is not None:
        low, high = adapt
        if isinstance(low, bool) or not isinstance(low, int) or low < 0:
            raise DmaskError(f"adaptive minimum must be 0 or more, got {low!r}")
        if isinstance(high, bool) or not isinstance(high, int) or high < max(low, 1):
            raise DmaskError(
                f"adaptive maximum must be at least the minimum and 1, got {high!r}"
            )
    name = spec["metadata"]["name"]
    namespace = _probe(namespace, timeout)
    logger.info("creating DaskCluster %s in namespace %s", name, namespace)
    cluster_class = operator.KubeCluster
    known = set(cluster_class._instances)
    try:
        cluster = cluster_class(
            custom_cluster_spec=dict(spec),
            namespace=namespace,
            create_mode=CreateMode.CREATE_ONLY,
            shutdown_on_close=True,
            resource_timeout=timeout,
            quiet=True,
        )
    except Exception as exc:
        # Delete whatever the failed start left, and keep dask-kubernetes' exit
        # hook from trying again (and printing a traceback) at exit.
        for other in list(cluster_class._instances):
            if other not in known:
                with contextlib.suppress(Exception):
                    other.close(timeout=10)
                cluster_class._instances.discard(other)
        raise DmaskError(
            f"cannot start the Kubernetes cluster {name} in namespace {namespace}: "
            f"{_reason(exc)}"
        ) from exc
    if adapt is not None:
        try:
            cluster.adapt(minimum=adapt[0], maximum=adapt[1])
        except Exception as exc:
            cluster.close()
            raise DmaskError(
                f"cannot make the Kubernetes cluster {name} adaptive: {_reason(exc)}"
            ) from exc
    logger.info(
        "Kubernetes cluster %s running: scheduler at %s",
        name,
        cluster.scheduler_address,
    )
    return cluster
