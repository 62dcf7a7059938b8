"""Connecting to a Dask cluster: a LocalCluster dmask starts, or an existing one."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dmask.errors import DmaskError

__all__ = ["ClusterOptions", "bind_address", "connect", "peak_worker_memory"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterOptions:
    """How to reach or start a cluster.

    Attributes
    ----------
    scheduler : str, optional
        Address of an existing scheduler (``tcp://host:port``, ``tls://...``).
    scheduler_file : str, optional
        Scheduler file of an existing cluster.
    n_workers, threads_per_worker : int, optional
        Size of the LocalCluster started when no scheduler is given.
    memory_limit : str, optional
        Memory limit per local worker (``"4GB"``, ``"auto"``).
    processes : bool or "auto"
        Local workers as processes (True) or threads in this process; "auto"
        (see :meth:`for_job`) decides by the size of the job.
    dashboard_address : str
        Where the local dashboard listens (None: no dashboard); loopback unless
        asked otherwise.
    tls_ca_file, tls_cert, tls_key : str, optional
        TLS for every connection: the CA that signed all certificates, and this
        client's certificate and key (a local cluster uses them too).
    quiet : bool
        Keep distributed's logs to errors.
    """

    scheduler: str | None = None
    scheduler_file: str | None = None
    n_workers: int | None = None
    threads_per_worker: int | None = None
    memory_limit: str | None = None
    processes: bool | str = True
    dashboard_address: str | None = "127.0.0.1:8787"
    tls_ca_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    quiet: bool = True

    @classmethod
    def from_config(cls, **overrides: Any) -> ClusterOptions:
        """Options from dask.config's ``dmask`` section; non-None overrides win.

        Parameters
        ----------
        **overrides
            Field values (for example from the command line); None means
            "not given" and leaves the configured value.
        """
        from dmask.options import get

        values = {
            "scheduler": get("cluster.scheduler"),
            "scheduler_file": get("cluster.scheduler-file"),
            "n_workers": get("cluster.workers"),
            "threads_per_worker": get("cluster.threads-per-worker"),
            "memory_limit": get("cluster.memory-limit"),
            "processes": get("cluster.processes"),
            "dashboard_address": get("cluster.dashboard-address"),
            "tls_ca_file": get("tls.ca-file"),
            "tls_cert": get("tls.cert"),
            "tls_key": get("tls.key"),
        }
        values = {k: v for k, v in values.items() if v is not None}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def for_job(self, input_bytes: int | None) -> ClusterOptions:
        """These options with ``processes`` decided for a job of ``input_bytes``.

        "auto" runs a local cluster's workers as threads in this process when
        the job reads fewer bytes than ``cluster.small-job`` (no process
        start-up, no data sent between processes), as processes otherwise or
        when the size is not known.
        """
        if self.processes != "auto":
            return self
        from dmask.options import get

        small = (
            not (self.scheduler or self.scheduler_file)
            and input_bytes is not None
            and input_bytes < int(get("cluster.small-job"))
        )
        if small:
            logger.info(
                "a small job (%.1f MiB of input): local workers as threads in this "
                "process (--processes starts processes)",
                input_bytes / 2**20,
            )
        return dataclasses.replace(self, processes=not small)

    def security(self) -> Any:
        """distributed's Security for these options (None without TLS).

        Raises
        ------
        DmaskError
            Only some of the three TLS files given, or one of them missing.
        """
        files = {
            "CA file": self.tls_ca_file,
            "certificate": self.tls_cert,
            "key": self.tls_key,
        }
        given = [name for name, path in files.items() if path]
        if not given:
            return None
        if len(given) != 3:
            missing = ", ".join(n for n, p in files.items() if not p)
            raise DmaskError(
                f"TLS needs a CA file, a certificate and a key; missing {missing}"
            )
        for name, path in files.items():
            if not os.path.isfile(str(path)):
                raise DmaskError(f"TLS {name} {path} does not exist")
        from distributed.security import Security

        return Security(
            tls_ca_file=self.tls_ca_file,
            tls_client_cert=self.tls_cert,
            tls_client_key=self.tls_key,
            tls_scheduler_cert=self.tls_cert,
            tls_scheduler_key=self.tls_key,
            tls_worker_cert=self.tls_cert,
            tls_worker_key=self.tls_key,
            require_encryption=True,
        )


def _check_scheduler_file(path: str) -> None:
    """Refuse a scheduler file that is missing or names no scheduler address."""
    import json

    if not os.path.exists(path):
        raise DmaskError(f"scheduler file {path} does not exist")
    try:
        with open(path) as handle:
            content = json.load(handle)
    except (OSError, ValueError) as exc:
        raise DmaskError(f"scheduler file {path} is not readable JSON: {exc}") from None
    if not isinstance(content, dict) or not isinstance(content.get("address"), str):
        raise DmaskError(
            f"scheduler file {path} names no scheduler address (no 'address' key)"
        )


def bind_address(address: str | None) -> str | None:
    """Where a server listens: ``":8787"`` (no host) means ``127.0.0.1:8787``.

    dmask's servers listen on loopback unless a host is named; distributed
    reads an empty host as every interface.
    """
    if address is None:
        return None
    text = str(address).strip()
    if text.isdigit():
        return f"127.0.0.1:{text}"
    if text.startswith(":"):
        return f"127.0.0.1{text}"
    return text


def _share_storage_options(client: Any) -> None:
    """The configured object-storage options, here and on every worker."""
    from dmask.io import storage

    options = storage.configure()
    if any(options.values()):
        client.register_plugin(
            StorageOptionsPlugin(options), name=StorageOptionsPlugin.name
        )


try:
    from distributed.diagnostics.plugin import WorkerPlugin as _WorkerPlugin
except ImportError:  # pragma: no cover - distributed is a dependency
    _WorkerPlugin = object  # type: ignore[assignment,misc]


class StorageOptionsPlugin(_WorkerPlugin):  # type: ignore[misc,valid-type]
    """A worker plugin that installs object-storage options on every worker.

    Parameters
    ----------
    options : mapping
        Per-protocol fsspec options (as :func:`dmask.io.storage.configure`
        returns).
    """

    name = "dmask-storage-options"

    def __init__(self, options: dict[str, dict[str, Any]]) -> None:
        self.options = {k: dict(v) for k, v in options.items()}

    def setup(self, worker: Any) -> None:
        from dmask.io import storage

        storage.install(self.options)


@contextlib.contextmanager
def connect(options: ClusterOptions | None = None) -> Iterator[Any]:
    """Yield a distributed Client, starting a LocalCluster if none is named.

    The client is the default for dask computations inside the block; a cluster
    started here is closed on exit.
    """
    from distributed import Client, LocalCluster

    options = (options or ClusterOptions()).for_job(None)  # "auto": processes
    if options.quiet:  # a failed task's error is reported once, by dmask
        logging.getLogger("distributed").setLevel(logging.CRITICAL)
    if options.scheduler and options.scheduler_file:
        raise DmaskError("give --scheduler or --scheduler-file, not both")
    if options.scheduler_file:
        _check_scheduler_file(options.scheduler_file)
    security = options.security()
    if options.scheduler or options.scheduler_file:
        try:
            client = Client(
                address=options.scheduler,
                scheduler_file=options.scheduler_file,
                timeout="20s",
                security=security,
            )
        except (OSError, ValueError, TypeError) as exc:
            where = options.scheduler or options.scheduler_file
            raise DmaskError(f"cannot reach the scheduler at {where}: {exc}") from exc
        try:
            _share_storage_options(client)
            yield client
        finally:
            client.close()
        return
    kwargs: dict[str, Any] = {
        "dashboard_address": bind_address(options.dashboard_address),
        # every worker has an HTTP server (metrics at least): on loopback too
        "worker_dashboard_address": "127.0.0.1:0",
        "processes": options.processes,
        "silence_logs": logging.CRITICAL if options.quiet else logging.INFO,
    }
    if kwargs["dashboard_address"] is None:  # its HTTP server (health) still runs
        kwargs["scheduler_kwargs"] = {"dashboard_address": "127.0.0.1:0"}
    if options.processes:
        # Threaded workers talk in-process; worker processes listen on loopback.
        kwargs["host"] = "127.0.0.1"
    if security is not None:
        kwargs["security"] = security
        kwargs["protocol"] = "tls://"
        kwargs["host"] = "127.0.0.1"
    if options.n_workers is not None:
        kwargs["n_workers"] = options.n_workers
    if options.threads_per_worker is not None:
        kwargs["threads_per_worker"] = options.threads_per_worker
    if options.memory_limit is not None:
        kwargs["memory_limit"] = options.memory_limit
    from threadpoolctl import threadpool_limits

    try:
        cluster = LocalCluster(**kwargs)
    except (ValueError, TypeError) as exc:
        raise DmaskError(f"cannot start a local cluster: {exc}") from exc
    # Threaded workers share this process: keep BLAS to one thread per task, as
    # worker processes do (threadpool_limits applies on creation).
    limits = (
        contextlib.nullcontext()
        if options.processes
        else threadpool_limits(limits=1, user_api="blas")
    )
    try:
        with limits, Client(cluster, security=security) as client:
            _share_storage_options(client)
            yield client
    finally:
        # Closing an in-process cluster cancels the scheduler's periodic feeds,
        # which distributed logs as errors although nothing failed.
        scheduler_log = logging.getLogger("distributed.scheduler")
        level = scheduler_log.level
        if options.quiet:
            scheduler_log.setLevel(logging.CRITICAL)
        try:
            cluster.close()
        finally:
            scheduler_log.setLevel(level)


def peak_worker_memory(client: Any) -> int:
    """Largest peak resident memory, in bytes, of any worker process so far."""

    def rss() -> int:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024

    try:
        return max(client.run(rss).values(), default=0)
    except Exception:  # a worker may be gone; memory is only a report
        return 0
