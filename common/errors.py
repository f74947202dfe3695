"""The base class of every error a user can fix: the CLIs print it as one line, no traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input (config, data, checkpoint, cluster), or damage to it.

    The message names the culprit (key, path or value); ``hint``, when given, says the fix
    and is printed as a second line.
    """

    hint: str | None = None

    def __init__(self, *args: object, hint: str | None = None) -> None:
        super().__init__(*args)
        if hint is not None:
            self.hint = hint
