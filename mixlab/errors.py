"""The one exception type that the command line turns into a clear message and exit code 2, and the turning of an
out-of-memory error into one."""

from collections.abc import Iterator
from contextlib import contextmanager


class UserError(Exception):
    """Bad input from the user: a recipe, a data file, a missing path. Message says what to do."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none: for one-line messages about
    what a library refused."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def is_out_of_memory(exc: BaseException) -> bool:
    """An accelerator's or torch's CPU allocator's out-of-memory error, or Python's (told apart by name and message:
    no torch import)."""
    return (
        isinstance(exc, MemoryError)
        or type(exc).__name__ == "OutOfMemoryError"
        or (isinstance(exc, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(exc))
    )


@contextmanager
def memory_advice(what: str, remedy: str) -> Iterator[None]:
    """Turn an out-of-memory error inside into a UserError: `what` ran out of memory; `remedy`, then rerun."""
    try:
        yield
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        raise UserError(
            f"{what} ran out of memory ({first_line(exc)}): {remedy}, then rerun (finished stages are reused)."
        ) from None
