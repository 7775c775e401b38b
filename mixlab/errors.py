"""The one exception type that the command line turns into a clear message and exit code 2."""


class UserError(Exception):
    """Bad input from the user: a recipe, a data file, a missing path. Message says what to do."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none: for one-line messages about
    what a library refused."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
