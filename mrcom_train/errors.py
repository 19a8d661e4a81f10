"""Errors the user can fix: the CLI prints them as one line and exits with code 2."""


class UserInputError(ValueError):
    """Bad input from the user (an unknown name, a value out of range, a missing or foreign file).

    The message must name the offending field or path. ``mrcom`` prints ``mrcom: error: <message>`` and
    exits with status 2 instead of a traceback.
    """
