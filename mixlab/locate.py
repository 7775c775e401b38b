"""Map a key path in a TOML document back to the line that defines it (tomllib keeps no positions)."""

from __future__ import annotations

import re

_HEADER = re.compile(r"^\s*(\[\[?)\s*(.+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=""")


def _split_key(text: str) -> tuple[str, ...]:
    parts = re.findall(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""", text)
    return tuple(p[1:-1] if p[0] in "\"'" else p for p in parts)


def key_lines(text: str) -> dict[tuple, int]:
    """Every table header and ``key =`` line, as full key path → 1-based line number.

    Arrays of tables get their index in the path, like the parsed document: ``("arms", 0, "sources")``.
    Lines inside multi-line strings and arrays are skipped well enough for recipes (keys start a line).
    """
    lines: dict[tuple, int] = {}
    table: tuple = ()
    counts: dict[tuple, int] = {}
    in_string = False
    for number, line in enumerate(text.splitlines(), start=1):
        starts_in_string = in_string
        if line.count('"""') % 2 or line.count("'''") % 2:
            in_string = not in_string
        if starts_in_string:
            continue
        header = _HEADER.match(line)
        if header and not _KEY.match(line):
            path = _split_key(header.group(2))
            if header.group(1) == "[[":
                index = counts.get(path, -1) + 1
                counts[path] = index
                table = (*path, index)
            else:
                table = path
            lines.setdefault(table, number)
            for i in range(1, len(table)):
                lines.setdefault(table[:i], number)
            continue
        key = _KEY.match(line)
        if key:
            path = (*table, *_split_key(key.group(1)))
            lines.setdefault(path, number)
    return lines


def line_of(path: tuple, lines: dict[tuple, int]) -> int | None:
    """The line of the longest known prefix of path (an unknown key reports its table's line)."""
    for end in range(len(path), 0, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None
