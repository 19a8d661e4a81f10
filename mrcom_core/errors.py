"""The one error type for input a user can fix (torch-free, so every layer can raise it).

A bad config field, an unknown name, a value out of range, a missing or foreign file: the message names
the offending field or path. The ``mrcom`` command prints ``mrcom: error: <message>`` and exits with
status 2 instead of a traceback. Layer-specific errors (``mrcom_export``'s ``ExportError``) subclass it.
"""


class UserInputError(ValueError):
    """Bad input from the user; the message names the offending field or path."""


class Interrupted(Exception):
    """The user stopped a long command (Ctrl-C); the message says what was kept and how to continue. The
    ``mrcom`` command prints ``mrcom: interrupted: <message>`` and exits with status 130."""
