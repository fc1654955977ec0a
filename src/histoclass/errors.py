"""The one exception type that reaches users as a single line instead of a traceback."""

__all__ = ["HistoclassError", "Interrupted"]


class HistoclassError(Exception):
    """Bad input from the user (a path, a value, a file): say what is wrong and how to fix it.

    Anything else that escapes is a bug and keeps its traceback.
    """


class Interrupted(HistoclassError):
    """The user stopped a job (Ctrl-C, SIGTERM) and it kept what it had: exit status 130, how to go on."""
