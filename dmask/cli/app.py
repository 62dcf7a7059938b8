"""The top-level parser, the dispatch to each command's handler and the exit codes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from dmask import __version__
from dmask.cli import (
    apply,
    cluster,
    compare,
    evaluate,
    ingest,
    interop,
    report,
    statistics,
    synth,
    train,
    tune,
    verbosity,
    verify,
)
from dmask.errors import DmaskError

__all__ = ["main"]

EXIT_ERROR = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130

# The subcommands in the order --help lists them.
PARSERS = (
    synth,
    train,
    statistics,
    ingest,
    apply,
    interop,
    cluster,
    compare,
    tune,
    report,
    evaluate,
    verify,
)

COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "synth": synth.run,
    "ingest": ingest.run,
    "train": train.run,
    "solve": statistics.run_solve,
    "update": statistics.run_update,
    "apply": apply.run,
    "export": interop.run_export,
    "import": interop.run_import,
    "cluster": cluster.run,
    "compare": compare.run,
    "tune": tune.run,
    "report": report.run,
    "evaluate": evaluate.run,
    "verify": verify.run,
}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dmask",
        description="Masked ridge regression for facial expression synthesis.",
    )
    parser.add_argument("--version", action="version", version=f"dmask {__version__}")
    verbosity.add_options(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in PARSERS:
        command.add_parser(sub)
    for each in sub.choices.values():  # -v and -q after the subcommand too
        verbosity.add_options(each, sub=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    clash = verbosity.resolve(args)
    if clash:
        parser.error(clash)
    verbosity.configure(args.verbose, args.quiet)
    try:
        COMMANDS[args.command](args)
    except DmaskError as exc:
        print(f"dmask {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:  # a full disk, a network failure: the run failed
        print(f"dmask {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"dmask {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a failure while running: one line, traceback with -v
        if args.verbose:
            raise
        text = str(exc).splitlines()[0] if str(exc) else ""
        print(
            f"dmask {args.command}: error: {type(exc).__name__}: {text} "
            "(-v shows the traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return 0
