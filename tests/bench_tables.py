"""Reading the markdown tables the benchmarks print, for the tests that run them on tiny data."""

from __future__ import annotations


def numbered_rows(printed: str) -> list[list[str]]:
    """The stripped cells of every table row whose first cell starts with a digit (header and rule rows don't)."""
    return [
        [cell.strip() for cell in line.split("|")[1:-1]]
        for line in printed.splitlines()
        if line.startswith("| ") and line[2:3].isdigit()
    ]


def count(cell: str) -> int:
    """A count as the benchmarks print it, with thousands separators (``1,234``)."""
    return int(cell.replace(",", ""))
