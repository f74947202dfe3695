"""The base class of every error a user can fix: the CLIs print it as one line, no traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input (config, data, checkpoint, cluster), or damage to it.

    The message names the culprit (key, path or value) and the fix. ``hint``, when a
    subclass or instance sets it, is printed as a second line.
    """

    hint: str | None = None
