"""Exceptions that carry a one-line message for the user."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["DmaskError", "InputError", "StoreError", "check_choice"]


class DmaskError(ValueError):
    """Base class of the errors dmask reports to the user in one line."""


class InputError(DmaskError):
    """Bad arguments or bad data: shapes, field size, lambda, non-finite pixels."""


class StoreError(DmaskError):
    """A store is missing, unreadable, incomplete, of the wrong kind, or in the way."""


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``, else an InputError naming them."""
    if value not in choices:
        raise InputError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value
