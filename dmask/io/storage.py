"""Object storage settings: fsspec options for ``scheme://`` URLs, from dmask's
configuration, in this process and on every worker.

Datasets, models and image folders may live on object storage (``s3://``,
``gs://``, ``memory://``...), reached through fsspec (``pip install
"dmask[s3]"`` for S3). Credentials and endpoints come, in this order of
precedence:

1. the command line's ``--storage-option KEY=VALUE`` (for the protocols of the
   URLs on that command line);
2. the configuration key ``dmask.storage-options``, a mapping from protocol to
   fsspec options::

       dmask:
         storage-options:
           s3: {endpoint_url: "http://127.0.0.1:9000", anon: false}

   (or ``DASK_DMASK__STORAGE_OPTIONS='{"s3": {...}}'``, or
   ``dmask.set_options(storage_options={...})``);
3. the storage library's own environment variables and files
   (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``,
   ``~/.aws/credentials`` for S3), which need nothing from dmask.

The options are installed as fsspec's per-protocol defaults
(``fsspec.config.conf``), so every filesystem that zarr, xarray and dmask open
for that protocol uses them; :func:`dmask.cluster.clients.connect` installs the
same on the workers of a cluster (a worker plugin).
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from dmask import options as _options
from dmask.errors import DmaskError, InputError

logger = logging.getLogger(__name__)

__all__ = [
    "configure",
    "configured",
    "parse_option",
    "protocols",
    "redacted",
]

#: Option names whose values are secrets: never logged nor recorded.
SECRET = re.compile(r"(secret|password|token|key|credential|sas)", re.IGNORECASE)

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


def protocols(paths: Iterable[Any]) -> list[str]:
    """The protocols of the URLs among ``paths`` (``s3`` of ``s3://b/k``), sorted."""
    found = set()
    for path in paths:
        match = _URL.match(str(path)) if isinstance(path, str) else None
        if match and match.group(1).lower() != "file":
            found.add(match.group(1).lower())
    return sorted(found)


def parse_option(text: str) -> tuple[list[str], Any]:
    """``KEY=VALUE`` as (key path, value): dots nest (``client_kwargs.region_name``).

    The value is read as a YAML scalar (``true``, ``10``), else kept as text.

    Raises
    ------
    InputError
        No ``=``, or an empty key.
    """
    key, sep, value = text.partition("=")
    parts = [p.strip() for p in key.split(".")]
    if not sep or not all(parts):
        raise InputError(
            f"storage option {text!r} must be KEY=VALUE (e.g. endpoint_url=http://...)"
        )
    import yaml

    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = value
    if parsed is None and value.strip() not in ("null", "~"):
        parsed = value
    if isinstance(parsed, dict | list):
        parsed = value
    return parts, parsed


def _nest(options: dict[str, Any], keys: Sequence[str], value: Any) -> None:
    for key in keys[:-1]:
        inner = options.get(key)
        if not isinstance(inner, dict):
            inner = options[key] = {}
        options = inner
    options[keys[-1]] = value


def options_for(
    texts: Sequence[str], paths: Iterable[Any]
) -> dict[str, dict[str, Any]]:
    """``--storage-option`` texts as per-protocol options for the URLs in ``paths``.

    Raises
    ------
    InputError
        An option is malformed, or no path is a URL (nothing to apply it to).
    """
    if not texts:
        return {}
    names = protocols(paths)
    if not names:
        raise InputError(
            "--storage-option applies to scheme:// URLs (s3://...), and this "
            "command names none"
        )
    options: dict[str, Any] = {}
    for text in texts:
        keys, value = parse_option(text)
        _nest(options, keys, value)
    return {name: copy.deepcopy(options) for name in names}


def configured() -> dict[str, dict[str, Any]]:
    """The per-protocol options of dmask's configuration (``storage-options``)."""
    return dict(_options.get("storage-options"))


def _merge(target: dict[str, Any], options: Mapping[str, Any]) -> None:
    for key, value in options.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def install(options: Mapping[str, Mapping[str, Any]]) -> None:
    """Make ``options`` fsspec's defaults for their protocols in this process."""
    import fsspec.config

    for protocol, values in options.items():
        if not values:
            continue
        target = fsspec.config.conf.setdefault(protocol, {})
        _merge(target, values)
        shown = {k: ("***" if SECRET.search(k) else v) for k, v in values.items()}
        logger.debug("storage options for %s://: %s", protocol, shown)


def configure(extra: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Install the configured storage options (then ``extra``, which wins) here.

    Returns the options installed, per protocol.
    """
    options = configured()
    for protocol, values in (extra or {}).items():
        _merge(options.setdefault(protocol, {}), values)
    install(options)
    return options


def redacted(argv: Sequence[str]) -> list[str]:
    """A command line with the values of secret ``--storage-option`` keys hidden."""
    out: list[str] = []
    expect = False
    for item in argv:
        text = str(item)
        if expect or text.startswith("--storage-option="):
            prefix = "--storage-option=" if not expect else ""
            body = text[len(prefix) :]
            key, sep, _ = body.partition("=")
            if sep and SECRET.search(key):
                text = f"{prefix}{key}=***"
            expect = False
        elif text == "--storage-option":
            expect = True
        out.append(text)
    return out


# dmask.set_options(storage_options=...) installs them at once, from then on;
# what the configuration holds now (YAML files, DASK_DMASK__...) is installed on
# import, before any URL is opened (dmask.io.locations imports this module).
_options.on_set("storage-options", configure)
try:
    configure()
except DmaskError as _exc:  # said again, as an error, where a command connects
    logger.warning("storage options not installed: %s", _exc)
