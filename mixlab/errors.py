"""The one exception type that the command line turns into a clear message and exit code 2."""


class UserError(Exception):
    """Bad input from the user: a recipe, a data file, a missing path. Message says what to do."""
