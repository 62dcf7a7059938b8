"""The top-level parser, the dispatch to each command's handler and the exit codes.

Exit codes: 0 done; 1 the run failed (bad input files, settings the data
refuse, stores in the way, a full disk, a lost cluster, anything unforeseen);
2 a usage error (argparse's, or options that cannot go together); 130 stopped
by Ctrl-C (SIGINT).
"""

from __future__ import annotations

import argparse
import logging
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
    storage,
    synth,
    train,
    tune,
    verbosity,
    verify,
)
from dmask.cli.common import DEPRECATIONS, HelpFormatter
from dmask.errors import DmaskError, UsageError

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "main"]

#: The run finished.
EXIT_OK = 0
#: The run failed: bad input, a store in the way, a failure while running.
EXIT_FAILED = 1
#: A usage error: argparse's own, or options that cannot go together.
EXIT_USAGE = 2
#: Stopped by Ctrl-C (128 + SIGINT, as shells report it).
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
        epilog="examples:\n"
        "  dmask synth --out faces.zarr --subjects 30 --size 64\n"
        "  dmask train faces.zarr --out model.zarr --targets happy sad\n"
        "  dmask train --help    # every command has its own help and examples\n"
        "\nexit codes: 0 done, 1 the run failed, 2 a usage error, 130 Ctrl-C",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"dmask {__version__}")
    verbosity.add_options(parser)
    storage.add_options(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in PARSERS:
        command.add_parser(sub)
    for each in sub.choices.values():  # -v and -q after the subcommand too
        verbosity.add_options(each, sub=True)
        storage.add_options(each, sub=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        clash = verbosity.resolve(args)
        if clash:
            parser.error(clash)
    except SystemExit as exc:  # --help, --version, or argparse's usage error
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or EXIT_OK
        return EXIT_USAGE
    verbosity.configure(args.verbose, args.quiet)
    for note in getattr(args, DEPRECATIONS, ()):
        logging.getLogger("dmask.cli").warning("%s", note)
    from dmask.io.stores import recording_command

    given = sys.argv[1:] if argv is None else [str(a) for a in argv]
    line = storage.redacted(["dmask", *given])  # no secret in stores or reports
    try:
        with storage.apply(args, given), recording_command(line):  # stores say how
            COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"dmask {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DmaskError as exc:
        print(f"dmask {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
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
    return EXIT_OK
