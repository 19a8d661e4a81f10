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


# OS errors a user can fix (a full disk, a read-only or foreign folder): one line, exit 2, no traceback.
USER_OS_ERRORS = {"ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "ENOTDIR", "EISDIR", "ENAMETOOLONG", "EFBIG"}


def os_error_message(e: OSError) -> str | None:
    """One line for an OS error the user can fix (:data:`USER_OS_ERRORS`), else None (a bug: let the traceback
    show)."""
    import errno

    if errno.errorcode.get(e.errno) not in USER_OS_ERRORS:
        return None
    where = f" {e.filename}" if e.filename else ""
    return f"cannot write or read{where}: {e.strerror}"
