"""The one error type for input a user can fix, and the one check of integers and numbers that raises it
(torch-free, so every layer can use them).

A bad config field, an unknown name, a value out of range, a missing or foreign file: the message names
the offending field or path. The ``mrcom`` command prints ``mrcom: error: <message>`` and exits with
status 2 instead of a traceback. Layer-specific errors (``mrcom_export``'s ``ExportError``) subclass it.
"""

import math
from numbers import Integral


class UserInputError(ValueError):
    """Bad input from the user; the message names the offending field or path."""


def check_int(name: str, value, minimum: int = 1, hint: str = "",
              error: type[UserInputError] = UserInputError) -> int:
    """``value`` as an ``int``; raises ``error`` naming field ``name`` (then ``hint``) unless it is an integer
    (numpy's too; ``bool`` is not one here) >= ``minimum``. The one integer check every layer uses."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise error(f"{name} must be an integer >= {minimum}, got {value!r}{hint}")
    return int(value)


def check_number(name: str, value, minimum: float = 0.0, strict: bool = False) -> None:
    """Raise :class:`UserInputError` naming ``name`` unless ``value`` is a finite number >= ``minimum``
    (> with ``strict``)."""
    ok = (not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
          and (value > minimum if strict else value >= minimum))
    if not ok:
        raise UserInputError(f"{name} must be a finite number {'>' if strict else '>='} {minimum:g}, got {value!r}")


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
