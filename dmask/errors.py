"""Exceptions that carry a one-line message for the user."""

from __future__ import annotations

__all__ = ["DmaskError", "InputError", "StoreError"]


class DmaskError(ValueError):
    """Base class of the errors dmask reports to the user in one line."""


class InputError(DmaskError):
    """Bad arguments or bad data: shapes, field size, lambda, non-finite pixels."""


class StoreError(DmaskError):
    """A store is missing, unreadable, incomplete, of the wrong kind, or in the way."""
