"""Every dmask setting: one dask.config key under ``dmask.``, validated here.

The defaults live in ``dmask/dmask.yaml``. Users override them the ways dask
documents: a YAML file in ``~/.config/dask/`` (or ``DASK_CONFIG``), environment
variables such as ``DASK_DMASK__KERNELS=numpy`` or
``DASK_DMASK__CLUSTER__WORKERS=4``, :func:`dask.config.set`, or
:class:`set_options` here; the command line's options win over all of them.
Distributed workers started by dmask inherit the client's configuration;
workers started elsewhere read their own (set the environment variables there).

========================== ==================================================
key                        meaning
========================== ==================================================
``kernels``                ``numba`` (compiled kernels) or ``numpy``
``progress``               show a progress bar for computations (bool)
``max-tasks``              most tasks one fit's graph may hold
``stall-timeout``          seconds without any task progress before a run stops
``cluster.scheduler``      address of an existing scheduler
``cluster.scheduler-file`` scheduler file of an existing cluster
``cluster.workers``        local cluster: worker processes (None: per core)
``cluster.threads-per-worker`` local cluster: threads per worker
``cluster.memory-limit``   local cluster: memory per worker (``4GB``)
``cluster.processes``      local cluster: workers as processes (bool, or ``auto``:
                           threads in this process for a small job)
``cluster.small-job``      ``auto``: a job of fewer input bytes is small
``cluster.dashboard-address`` where the local dashboard listens
``tls.ca-file``            CA certificate that signed every party's
``tls.cert``, ``tls.key``  this client's certificate and private key
``storage-options``        per protocol, fsspec options for ``scheme://`` URLs
                           (``{s3: {endpoint_url: ...}}``; :mod:`dmask.io.storage`)
``lock-expiry``            seconds after which an object-storage lock whose
                           run stopped refreshing it counts as abandoned
========================== ==================================================
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

from dmask.errors import DmaskError

__all__ = ["LOG_FORMAT", "KEYS", "get", "load_file", "on_set", "set_options"]

#: The one format of every log line, dmask's and distributed's, and of the
#: plain progress lines.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_DEFAULTS = os.path.join(os.path.dirname(__file__), "dmask.yaml")


def _choice(*allowed: str) -> Callable[[str, Any], Any]:
    def check(key: str, value: Any) -> Any:
        if value not in allowed:
            raise DmaskError(
                f"configuration dmask.{key} must be one of {allowed}, got {value!r}"
            )
        return value

    return check


def _flag(key: str, value: Any) -> bool | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _flag_or_auto(key: str, value: Any) -> bool | str | None:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    return _flag(key, value)


def _count(key: str, value: Any) -> int | None:
    if value is None:
        return None
    name = key.rsplit(".", 1)[-1].replace("-", "_")
    name = {"workers": "n_workers"}.get(name, name)
    section = key.rsplit(".", 1)[0]
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise DmaskError(
            f"configuration dmask.{section}: {name} must be an integer, got {value!r}"
        ) from None
    return number


def _seconds(key: str, value: Any) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DmaskError(
            f"configuration dmask.{key} must be a number of seconds, got {value!r}"
        ) from None
    if not number >= 0:
        raise DmaskError(f"configuration dmask.{key} must be >= 0, got {value!r}")
    return number


def _positive(key: str, value: Any) -> int:
    number = _count(key, value)
    if number is None or number < 1:
        raise DmaskError(
            f"configuration dmask.{key} must be a positive integer, got {value!r}"
        )
    return number


def _text(key: str, value: Any) -> str | None:
    return None if value is None else str(value)


def _storage_options(key: str, value: Any) -> dict[str, dict[str, Any]]:
    """A mapping from protocol (``s3``) to a mapping of fsspec options."""
    if value is None:
        return {}
    if isinstance(value, str):  # DASK_DMASK__STORAGE_OPTIONS as JSON or YAML
        import yaml

        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            pass
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, dict | type(None))
        for k, v in value.items()
    ):
        raise DmaskError(
            f"configuration dmask.{key} must map a protocol (s3, gs, ...) to a "
            f"mapping of fsspec options, got {value!r}"
        )
    return {k.lower(): dict(v or {}) for k, v in value.items()}


def _expiry(key: str, value: Any) -> float:
    number = _seconds(key, value)
    if not number:
        raise DmaskError(f"configuration dmask.{key} must be > 0, got {value!r}")
    return number


#: Every key of the ``dmask`` section and how its value is checked.
KEYS: dict[str, Callable[[str, Any], Any]] = {
    "kernels": _choice("numba", "numpy"),
    "progress": _flag,
    "max-tasks": _positive,
    "stall-timeout": _seconds,
    "cluster.scheduler": _text,
    "cluster.scheduler-file": _text,
    "cluster.workers": _count,
    "cluster.threads-per-worker": _count,
    "cluster.memory-limit": _text,
    "cluster.processes": _flag_or_auto,
    "cluster.small-job": _positive,
    "cluster.dashboard-address": _text,
    "tls.ca-file": _text,
    "tls.cert": _text,
    "tls.key": _text,
    "storage-options": _storage_options,
    "lock-expiry": _expiry,
}


@functools.cache
def _register_defaults() -> None:
    """Add dmask's defaults to dask.config (once; user settings still win)."""
    import copy

    import dask.config

    defaults = {"dmask": copy.deepcopy(_packaged_defaults())}
    dask.config.defaults.append(defaults)  # for dask.config.refresh
    _fill(dask.config.config, defaults)


def _fill(config: dict[str, Any], defaults: dict[str, Any]) -> None:
    """Add the defaults that ``config`` lacks; never replace what it holds.

    (dask's ``update_defaults`` replaces a value that is not a mapping where the
    defaults have one, which would hide a user's ``cluster: 5`` from the checks.)
    """
    import copy

    for key, value in defaults.items():
        # dask reads DASK_DMASK__MAX_TASKS as max_tasks: "-" and "_" are one
        key = next((k for k in (key, key.replace("-", "_")) if k in config), key)
        if key not in config or (config[key] is None and isinstance(value, dict)):
            config[key] = copy.deepcopy(value)
        elif isinstance(value, dict) and isinstance(config[key], dict):
            _fill(config[key], value)


def load_file(path: str | os.PathLike) -> None:
    """Merge a YAML settings file into dask.config; it wins over other files.

    dmask's defaults are registered first, so that they cannot replace what
    the file sets (a wrong ``cluster: 5`` stays, and :func:`get` refuses it).
    """
    import dask.config
    import yaml

    _register_defaults()
    try:
        with open(path) as handle:
            settings = yaml.safe_load(handle) or {}
    except yaml.YAMLError as exc:
        raise DmaskError(
            f"configuration file {path} is not valid YAML: {exc}"
        ) from None
    except OSError as exc:
        raise DmaskError(f"cannot read configuration file {path}: {exc}") from None
    if not isinstance(settings, dict):
        raise DmaskError(f"configuration file {path} must hold a mapping")
    dask.config.update(dask.config.config, settings, priority="new")


def _canonical(key: str) -> str:
    key = key.replace("__", ".").replace("_", "-")
    if key.startswith("dmask."):
        key = key[len("dmask.") :]
    if key not in KEYS:
        raise DmaskError(f"unknown dmask option {key!r}; known: {', '.join(KEYS)}")
    return key


def get(key: str) -> Any:
    """The validated value of one setting, e.g. ``get("cluster.workers")``."""
    import dask.config

    _register_defaults()
    key = _canonical(key)
    if "." in key:
        section = key.rsplit(".", 1)[0]
        found = dask.config.get(f"dmask.{section}", default=None)
        if found is not None and not isinstance(found, dict):
            raise DmaskError(
                f"configuration dmask.{section} must be a mapping of settings "
                f"(such as {key.rsplit('.', 1)[1]}), got {found!r}"
            )
    value = dask.config.get(f"dmask.{key}", default=None)
    if value is None:  # not in the configuration (a dask.config.set block may
        value = _packaged(key)  # have dropped the defaults): the packaged one
    return KEYS[key](key, value)


@functools.cache
def _packaged_defaults() -> dict[str, Any]:
    import yaml

    with open(_DEFAULTS) as handle:
        return yaml.safe_load(handle)["dmask"]


def _packaged(key: str) -> Any:
    value: Any = _packaged_defaults()
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


#: What to call when :class:`set_options` sets a key (layers above register).
_ON_SET: dict[str, list[Callable[[], Any]]] = {}


def on_set(key: str, callback: Callable[[], Any]) -> None:
    """Call ``callback()`` whenever :class:`set_options` sets ``key``."""
    callbacks = _ON_SET.setdefault(_canonical(key), [])
    if callback not in callbacks:
        callbacks.append(callback)


class set_options:
    """Set dmask options, for a ``with`` block or (called plainly) from now on.

    Keys are those of :data:`KEYS`, with ``_`` for ``-`` and ``__`` for ``.``
    where they are keyword arguments: ``set_options(kernels="numpy")``,
    ``set_options(cluster__workers=4)``, or ``set_options(**{"tls.cert": p})``.

    Raises
    ------
    DmaskError
        An unknown key or a value its check refuses.
    """

    def __init__(self, **options: Any) -> None:
        import dask.config

        _register_defaults()
        values = {}
        for name, value in options.items():
            key = _canonical(name)
            KEYS[key](key, value)
            values[f"dmask.{key}"] = value
        self._set = dask.config.set(values)
        for key in values:
            for callback in _ON_SET.get(key[len("dmask.") :], ()):
                callback()

    def __enter__(self) -> set_options:
        return self

    def __exit__(self, *exc: object) -> None:
        self._set.__exit__(*exc)
