"""Command line: ``dmask synth | ingest | train | apply | export | import | ...``.

One module per command (or close group of commands) holds its parser beside its
handler; :mod:`dmask.cli.app` builds the whole parser and dispatches. Only the
handlers import the numerical stack, so ``dmask --help`` stays fast.
"""

from dmask.cli.app import main

__all__ = ["main"]
