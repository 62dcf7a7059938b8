"""``--storage-option KEY=VALUE``, anywhere on the command line: fsspec options
for the command's ``scheme://`` URLs (see :mod:`dmask.io.storage`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from dmask.errors import InputError, UsageError
from dmask.io import storage

__all__ = ["add_options", "apply", "redacted"]

_SUB = "_sub"

redacted = storage.redacted


def add_options(parser: argparse.ArgumentParser, sub: bool = False) -> None:
    """``--storage-option`` (repeatable), before or after the subcommand."""
    parser.add_argument(
        "--storage-option",
        action="append",
        dest="storage_option" + (_SUB if sub else ""),
        default=argparse.SUPPRESS if sub else [],
        metavar="KEY=VALUE",
        help="an fsspec option for the command's URLs (s3://...), e.g. "
        "endpoint_url=http://127.0.0.1:9000; repeatable; dots nest "
        "(client_kwargs.region_name=eu-west-1)",
    )


def apply(args: argparse.Namespace, argv: Sequence[Any]) -> Any:
    """The configured storage options with the command line's, for the command.

    The command line's apply to the protocols of the URLs in ``argv``. They
    are installed here at once, and set as ``dmask.storage-options`` for the
    block of the returned context manager, so that the cluster the command
    connects to gives them to its workers.

    Raises
    ------
    UsageError
        A malformed option, or options given with no URL to apply them to.
    """
    import contextlib

    import dask.config

    texts = [*args.storage_option, *getattr(args, "storage_option" + _SUB, [])]
    args.storage_option = texts
    try:
        extra = storage.options_for(texts, argv)
    except InputError as exc:
        raise UsageError(str(exc)) from None
    if not extra:
        storage.configure()
        return contextlib.nullcontext()
    merged = storage.configure(extra)
    return dask.config.set({"dmask.storage-options": merged})
