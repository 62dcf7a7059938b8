"""Exceptions that carry a one-line message for the user."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["DmaskError", "InputError", "StoreError", "UsageError", "check_choice"]


class DmaskError(ValueError):
    """Base class of the errors dmask reports to the user in one line."""


class InputError(DmaskError):
    """Bad arguments or bad data: shapes, field size, lambda, non-finite pixels."""


class StoreError(DmaskError):
    """A store is missing, unreadable, incomplete, of the wrong kind, or in the way."""


class UsageError(DmaskError):
    """Command-line options that cannot go together, found after parsing them.

    The command line's usage errors (exit 2, as argparse's own); every other
    :class:`DmaskError` is a failure of the run (exit 1).
    """


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``, else an InputError naming them."""
    if value not in choices:
        raise InputError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value
