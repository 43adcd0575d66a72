"""Reads at a bounded rate: the scrub re-reads whole archives, and must not take all of an
archive's bandwidth from the writes and restores that share it.

``throttled_checksum`` streams an object through ``Storage.open_read`` (never a server-side
shortcut: the bytes are read, at most ``bytes_per_second`` of them per second on average) and
hashes it. The pacing sleeps whenever the bytes read so far are ahead of ``rate x elapsed``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import BinaryIO

from ccat_dagster.storage.base import Storage
from ccat_ops_db.checksum import CHUNK_SIZE, DEFAULT_ALGORITHM, checksum_chunks

#: the smallest read of a throttled stream (a very low rate still reads in useful pieces)
MIN_CHUNK = 64 * 1024


class ThrottledReader:
    """Wraps a binary stream; ``read`` returns at most ``bytes_per_second`` bytes per second
    on average since the first read (``bytes_per_second`` > 0)."""

    def __init__(
        self,
        stream: BinaryIO,
        bytes_per_second: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if bytes_per_second <= 0:
            raise ValueError(f"bytes_per_second must be > 0, got {bytes_per_second}")
        self._stream = stream
        self.rate = bytes_per_second
        self._clock = clock
        self._sleep = sleep
        self._start: float | None = None
        self.size = 0
        #: seconds spent waiting for the rate
        self.waited = 0.0
        #: one read: about a quarter second's worth of bytes, within [MIN_CHUNK, CHUNK_SIZE]
        self.chunk_size = min(CHUNK_SIZE, max(MIN_CHUNK, bytes_per_second // 4))

    def read(self, n: int = -1) -> bytes:
        if self._start is None:
            self._start = self._clock()
        want = self.chunk_size if n is None or n < 0 else min(n, self.chunk_size)
        data = self._stream.read(want)
        self.size += len(data)
        ahead = self.size / self.rate - (self._clock() - self._start)
        if ahead > 0:
            self._sleep(ahead)
            self.waited += ahead
        return data


def throttled_checksum(
    storage: Storage, key: str, algorithm: str = DEFAULT_ALGORITHM, *, bytes_per_second: int
) -> tuple[str, int]:
    """Checksum and size of ``key``, streamed at most ``bytes_per_second`` (0: unthrottled,
    the backend's own ``checksum``, which may compute it where the bytes are)."""
    if bytes_per_second <= 0:
        return storage.checksum(key, algorithm)
    with storage.open_read(key) as stream:
        reader = ThrottledReader(stream, bytes_per_second)
        return checksum_chunks(iter(lambda: reader.read(), b""), algorithm)
