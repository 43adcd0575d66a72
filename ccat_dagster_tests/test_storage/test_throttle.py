"""Throttled reads (the scrub's rate limit): the pacing, and a real file read at a rate."""

from __future__ import annotations

import hashlib
import io
import time

import pytest

from ccat_dagster.storage.local import LocalDiskStorage
from ccat_dagster.storage.throttle import MIN_CHUNK, ThrottledReader, throttled_checksum


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_the_reader_sleeps_until_the_average_is_the_rate():
    clock = _Clock()
    data = b"x" * (4 * MIN_CHUNK)
    reader = ThrottledReader(io.BytesIO(data), MIN_CHUNK, clock=clock, sleep=clock.sleep)
    out = b"".join(iter(lambda: reader.read(), b""))
    assert out == data
    assert reader.chunk_size == MIN_CHUNK
    assert clock.now == pytest.approx(4.0)  # 4 chunks at one chunk per second
    assert reader.waited == pytest.approx(4.0)


def test_a_reader_that_is_behind_does_not_sleep():
    clock = _Clock()
    reader = ThrottledReader(
        io.BytesIO(b"y" * MIN_CHUNK), MIN_CHUNK, clock=clock, sleep=clock.sleep
    )
    clock.now = 0.0
    reader.read(10)  # starts the clock
    clock.now = 100.0  # the storage was slow
    reader.read()
    assert clock.slept == [pytest.approx(10 / MIN_CHUNK)]


def test_a_throttled_checksum_of_a_real_file(tmp_path):
    data = bytes(range(256)) * 1024  # 256 KiB
    (tmp_path / "obj").write_bytes(data)
    storage = LocalDiskStorage("t/lta", str(tmp_path))
    start = time.monotonic()
    digest, size = throttled_checksum(storage, "obj", "sha256", bytes_per_second=512 * 1024)
    took = time.monotonic() - start
    assert (digest, size) == (hashlib.sha256(data).hexdigest(), len(data))
    assert took >= 0.45
    assert throttled_checksum(storage, "obj", "sha256", bytes_per_second=0) == (digest, size)


def test_a_rate_must_be_positive():
    with pytest.raises(ValueError, match="> 0"):
        ThrottledReader(io.BytesIO(b""), 0)
