"""Reading a user's text file (a recipe, JSON data) as UTF-8, with one located message for every way it can fail."""

from __future__ import annotations

from pathlib import Path

from mixlab.errors import UserError


def read_text(path: Path, what: str, path_hint: str, encoding_hint: str) -> str:
    """The file's text; a folder, a missing or unreadable file, or a non-UTF-8 byte is a UserError naming the file
    (and the line of the first bad byte), followed by ``path_hint`` or ``encoding_hint``."""
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a {what}: {path_hint}")
    if path.exists() and not path.is_file():
        raise UserError(f"{path} is not a regular file (a device, a pipe or a socket), not a {what}: {path_hint}")
    if not path.is_file():
        raise UserError(f"{what} {path} not found: {path_hint}")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read the {what} ({e.strerror}). Check its permissions.") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}). {encoding_hint}") from None
