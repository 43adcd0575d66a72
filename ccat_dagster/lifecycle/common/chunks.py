"""Rows per round trip: long id and path lists are sent in chunks, one ``IN (...)`` list or one
lookup/INSERT round each, so no statement reaches a driver's bound-parameter limit (SQLite:
32766) and no round holds an unbounded list (the drivers split INSERTs further)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")

#: items per chunk
CHUNK_ROWS = 5_000


def chunks(items: Sequence[T], size: int = CHUNK_ROWS) -> Iterator[Sequence[T]]:
    """``items`` in consecutive slices of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
