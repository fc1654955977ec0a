"""The one exception type that reaches users as a single line instead of a traceback."""

__all__ = ["HistoclassError"]


class HistoclassError(Exception):
    """Bad input from the user (a path, a value, a file): say what is wrong and how to fix it.

    Anything else that escapes is a bug and keeps its traceback.
    """
