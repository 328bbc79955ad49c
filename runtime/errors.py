"""Typed errors. Each message says what is wrong and how to fix it."""

from __future__ import annotations


class FraudscoreError(Exception):
    """Base class for errors that the CLI reports as one line, without a traceback."""

    exit_code = 2


class InputError(FraudscoreError):
    """A file, column or value given to a command cannot be used as it is."""


class UsageError(FraudscoreError):
    """A flag or argument is invalid."""
