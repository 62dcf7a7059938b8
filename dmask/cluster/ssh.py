"""Start a Dask cluster over SSH: the scheduler on the first host, workers on the rest.

A thin layer over :func:`distributed.deploy.ssh.SSHCluster` (which needs the
``asyncssh`` package): arguments are checked first and reported as one-line
:class:`~dmask.errors.DmaskError` messages, and a failure to connect or to start a
process becomes ``DmaskError("cannot start the SSH cluster on HOSTS: reason")``.

Every host must have dmask installed in the Python that ``remote_python`` names (by
default the path of this process's interpreter) and must see the dataset and model
stores at the same path as the client (a shared file system or an fsspec URL).
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import ipaddress
import logging
import re
import socket
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dmask.cluster.clients import bind_address
from dmask.errors import DmaskError

if TYPE_CHECKING:
    from distributed.deploy.spec import SpecCluster

__all__ = ["ssh_cluster"]

logger = logging.getLogger(__name__)

#: Seconds to wait for each SSH connection unless connect_options say otherwise.
CONNECT_TIMEOUT = 30


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _check_hosts(hosts: Sequence[str]) -> list[str]:
    if isinstance(hosts, str) or not isinstance(hosts, Sequence):
        raise DmaskError(f"hosts must be a list of host names, got {hosts!r}")
    if not hosts:
        raise DmaskError("no hosts given: name at least one host for the SSH cluster")
    checked = []
    for host in hosts:
        if (
            not isinstance(host, str)
            or not host.strip()
            or any(c.isspace() for c in host.strip())
        ):
            raise DmaskError(f"bad host name {host!r} in the SSH host list")
        checked.append(host.strip())
    return checked


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DmaskError(f"{name} must be a positive integer, got {value!r}")
    return value


def _check_memory_limit(value: Any) -> str | int:
    from dask.utils import parse_bytes

    if value == "auto":
        return "auto"
    if isinstance(value, bool):
        raise DmaskError(f"memory_limit must be a size such as '4GB', got {value!r}")
    if isinstance(value, int):
        nbytes = value
    elif isinstance(value, str):
        try:
            nbytes = parse_bytes(value)
        except (ValueError, TypeError):
            nbytes = 0
    else:
        nbytes = 0
    if nbytes <= 0:
        raise DmaskError(
            f"memory_limit must be a size such as '4GB' or 'auto', got {value!r}"
        )
    return value


def _check_port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise DmaskError(f"scheduler_port must be 0 to 65535, got {value!r}")
    return value


def _per_host(
    name: str, value: Any, n_hosts: int, kind: type | tuple[type, ...]
) -> list[Any] | None:
    """A per-host list of ``kind`` values from one value or a list of them."""
    if value is None:
        return None
    if isinstance(value, kind):
        return [value] * n_hosts
    if isinstance(value, Sequence) and not isinstance(value, str):
        values = list(value)
        if len(values) != n_hosts or not all(isinstance(v, kind) for v in values):
            raise DmaskError(
                f"{name} must be one value or a list of one per host "
                f"({n_hosts}), got {value!r}"
            )
        return values
    raise DmaskError(f"bad {name}: {value!r}")


class _RemoteOutput(logging.Handler):
    """Keeps the last lines distributed relays from the remote processes' stderr."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: collections.deque[str] = collections.deque(maxlen=20)

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage().strip()
        if text:
            self.lines.append(text)


@contextlib.contextmanager
def _remote_output() -> Iterator[_RemoteOutput]:
    """Collect what the remote scheduler and workers print while they start.

    distributed logs each line at INFO on ``distributed.deploy.ssh``; when that
    level is off, the lines are caught here without reaching other handlers.
    """
    log = logging.getLogger("distributed.deploy.ssh")
    handler = _RemoteOutput()
    level, propagate = log.level, log.propagate
    if not log.isEnabledFor(logging.INFO):
        log.setLevel(logging.INFO)
        log.propagate = False
    log.addHandler(handler)
    try:
        yield handler
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate


def _reason(exc: BaseException, remote: Sequence[str] = ()) -> str:
    """The innermost cause of a failure, on one line."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = str(exc).strip().splitlines()
    text = lines[0].strip() if lines else ""
    text = text or type(exc).__name__
    if "failed to start" in text and remote:
        # distributed says "Worker failed to start" for any remote process that
        # exited early (the scheduler too); its last words say why: the last
        # exception line that is more than "failed to start", else the last line.
        errors = [
            line
            for line in remote
            if re.match(r"[\w.]*(Error|Exception)\b", line)
            and "failed to start" not in line
        ]
        return f"a remote process exited: {(errors or list(remote))[-1]}"
    return text


def ssh_cluster(
    hosts: Sequence[str],
    *,
    workers_per_host: int = 1,
    threads: int = 1,
    memory_limit: str | int = "auto",
    scheduler_port: int = 8786,
    dashboard_address: str | None = "127.0.0.1:8787",
    remote_python: str | Sequence[str] | None = None,
    connect_options: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
) -> SpecCluster:
    """Start a Dask cluster on other machines over SSH.

    The first host runs the scheduler and every other host runs
    ``workers_per_host`` worker processes (each under a nanny); with a single host
    it runs both. Repeat a host to give it the scheduler and workers, or more
    worker groups. If every host is a loopback address, all processes listen on
    127.0.0.1 only; if the scheduler's host is an IP address, the scheduler listens
    on that address.

    Parameters
    ----------
    hosts : sequence of str
        Host names or addresses reachable over SSH.
    workers_per_host : int
        Worker processes started on each worker host.
    threads : int
        Threads per worker process.
    memory_limit : str or int
        Memory limit per worker process (``"4GB"``, bytes, or ``"auto"``: the
        host's memory shared out by threads).
    scheduler_port : int
        Port of the scheduler (0: any free port).
    dashboard_address : str, optional
        Where the scheduler's dashboard listens on its host (None: no dashboard).
    remote_python : str or sequence of str, optional
        Python on the hosts, one path or one per host (default: this process's
        ``sys.executable``); dmask must be importable there.
    connect_options : mapping or sequence of mappings, optional
        Keywords for :func:`asyncssh.connect`, one mapping or one per host
        (``port``, ``username``, ``client_keys``, ``known_hosts``, ...).
        ``connect_timeout`` defaults to 30 s.

    Returns
    -------
    distributed.deploy.spec.SpecCluster
        The running cluster; ``Client(cluster)`` connects to it, ``close()``
        stops every process it started.

    Raises
    ------
    DmaskError
        Bad arguments, asyncssh missing, or a host that cannot be reached or
        cannot start its process.
    """
    names = _check_hosts(hosts)
    workers_per_host = _check_count("workers_per_host", workers_per_host)
    threads = _check_count("threads", threads)
    memory_limit = _check_memory_limit(memory_limit)
    scheduler_port = _check_port(scheduler_port)
    if dashboard_address is not None and (
        not isinstance(dashboard_address, str) or not dashboard_address.strip()
    ):
        raise DmaskError(
            f"dashboard_address must be like ':8787' or None, got {dashboard_address!r}"
        )
    pythons = _per_host("remote_python", remote_python, len(names), str)
    if pythons is not None and not all(p.strip() for p in pythons):
        raise DmaskError("remote_python must not be empty")
    options = _per_host("connect_options", connect_options, len(names), Mapping)
    if importlib.util.find_spec("asyncssh") is None:
        raise DmaskError(
            "the SSH launcher needs the asyncssh package: pip install asyncssh"
        )

    # One host runs the scheduler and the workers: SSHCluster's first entry is
    # always the scheduler's, the others one worker group each.
    spread = names if len(names) > 1 else names * 2
    if pythons is not None and len(names) == 1:
        pythons = pythons * 2
    if options is not None and len(names) == 1:
        options = options * 2
    per_host_options = [
        {"connect_timeout": CONNECT_TIMEOUT, **dict(o)}
        for o in (options or [{}] * len(spread))
    ]

    scheduler_options: dict[str, Any] = {"port": scheduler_port}
    if dashboard_address is None:
        scheduler_options["dashboard"] = False
    else:  # on the scheduler's loopback unless a host is named (reach it by SSH)
        scheduler_options["dashboard_address"] = bind_address(dashboard_address)
    worker_options: dict[str, Any] = {
        "n_workers": workers_per_host,
        "nthreads": threads,
        "memory_limit": memory_limit,
    }
    if all(_is_loopback(h) for h in spread):
        scheduler_options["host"] = "127.0.0.1"
        worker_options["host"] = "127.0.0.1"
    elif _is_ip(spread[0]):
        scheduler_options["host"] = spread[0]
    else:  # a host name: listen on the address it names, not on every interface
        with contextlib.suppress(OSError):
            scheduler_options["host"] = socket.gethostbyname(spread[0])

    where = ", ".join(dict.fromkeys(names))
    logger.info(
        "starting an SSH cluster: scheduler on %s, %d x %d worker process(es) on %s",
        spread[0],
        len(spread) - 1,
        workers_per_host,
        ", ".join(spread[1:]),
    )
    from distributed.deploy.ssh import SSHCluster

    with _remote_output() as remote:
        try:
            cluster = SSHCluster(
                spread,
                connect_options=per_host_options,
                worker_options=worker_options,
                scheduler_options=scheduler_options,
                remote_python=pythons,
            )
        except Exception as exc:  # asyncssh errors, OSError, "failed to start"
            reason = _reason(exc, list(remote.lines))
            raise DmaskError(
                f"cannot start the SSH cluster on {where}: {reason}"
            ) from exc
    logger.info("SSH cluster running: scheduler at %s", cluster.scheduler_address)
    return cluster
