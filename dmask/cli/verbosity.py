"""How much the command line logs: ``-v``/``-q`` anywhere, one log format.

``-q`` logs errors only; by default warnings; ``-v`` adds dmask's own progress
(INFO); ``-vv`` adds distributed's INFO (scheduler and workers, whose logs
stay out of the terminal otherwise); ``-vvv`` dmask's DEBUG. Every line has
one format, dmask's and distributed's alike, in this process and in worker
processes it starts (through dask's configuration, set in the environment).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from dmask.options import LOG_FORMAT

__all__ = ["LOG_FORMAT", "add_options", "configure", "resolve"]


_SUB = "_sub"
#: Marks the handler :func:`configure` added (replaced by the next call).
_OURS = "_dmask_cli"


def add_options(parser: argparse.ArgumentParser, sub: bool = False) -> None:
    """``-v`` (repeatable) and ``-q``; a subcommand's own go to other names,
    so that ``dmask -v train -v`` counts both."""
    suffix = _SUB if sub else ""
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        dest="verbose" + suffix,
        default=argparse.SUPPRESS if sub else 0,
        help="-v: dmask's progress log and tracebacks; -vv: distributed's log too",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        dest="quiet" + suffix,
        default=argparse.SUPPRESS if sub else False,
        help="log errors only",
    )


def resolve(args: argparse.Namespace) -> str | None:
    """Fold a subcommand's ``-v``/``-q`` into ``args.verbose``/``args.quiet``.

    Returns the usage error of giving both, or None.
    """
    args.verbose = int(args.verbose) + int(getattr(args, "verbose" + _SUB, 0))
    args.quiet = bool(args.quiet or getattr(args, "quiet" + _SUB, False))
    if args.verbose and args.quiet:
        return "give -v or -q, not both"
    return None


def _levels(verbose: int, quiet: bool) -> tuple[int, int]:
    """The levels of dmask's loggers and of everything else."""
    if quiet:
        return logging.ERROR, logging.ERROR
    dmask = (logging.WARNING, logging.INFO, logging.INFO)[min(verbose, 2)]
    if verbose >= 3:
        dmask = logging.DEBUG
    return dmask, logging.INFO if verbose >= 2 else logging.WARNING


def _one_line_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    line: str | None = None,
) -> str:
    text = " ".join(str(message).split())
    return f"{category.__name__}: {text} ({os.path.basename(filename)}:{lineno})"


def configure(verbose: int, quiet: bool) -> None:
    """Set up logging on stderr for a run of the command line."""
    dmask_level, other_level = _levels(verbose, quiet)
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not getattr(h, _OURS, False)]
    if not root.handlers:  # as logging.basicConfig: a host's handlers stay
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        setattr(handler, _OURS, True)
        root.addHandler(handler)
    root.setLevel(other_level)
    # warnings (distributed's "port in use", ...) as log lines in the one
    # format, each on one line
    warnings.formatwarning = _one_line_warning
    logging.captureWarnings(True)
    logging.getLogger("dmask").setLevel(dmask_level)
    # distributed configures its own handler and format when imported: in
    # worker processes from the environment, here also if already imported.
    # Only the format: levels stay distributed's own in other processes (an
    # SSH cluster passes dask's configuration on, and waits for its remote
    # scheduler's INFO line), which dmask silences or not by -vv.
    os.environ["DASK_DISTRIBUTED__ADMIN__LOG_FORMAT"] = LOG_FORMAT
    if "dask" in sys.modules:
        import dask.config

        dask.config.set({"distributed.admin.log-format": LOG_FORMAT})
    if "distributed" in sys.modules:
        logger = logging.getLogger("distributed")
        logger.setLevel(other_level)
        for own in logger.handlers:
            own.setFormatter(logging.Formatter(LOG_FORMAT))
