"""Dataset errors that say what is wrong and how to fix it."""

from __future__ import annotations

from common.errors import UserError


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A dataset (or one of its files) is not where it was looked for; the message names the fix."""


class CorruptDataError(UserError, ValueError):
    """A dataset file exists but cannot be decoded; the message names the file and the fix."""


class DatasetSettingsError(UserError, ValueError):
    """A dataset generator setting or output folder that cannot be used; the message says why."""
