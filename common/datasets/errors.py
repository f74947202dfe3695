"""Dataset errors that say what is wrong and how to fix it."""

from __future__ import annotations


class DatasetNotFoundError(FileNotFoundError):
    """A dataset (or one of its files) is not where it was looked for; the message names the fix."""


class CorruptDataError(ValueError):
    """A dataset file exists but cannot be decoded; the message names the file and the fix."""
