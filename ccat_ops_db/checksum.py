"""The one checksum helper of the project: streaming, algorithm always named (default sha256)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

DEFAULT_ALGORITHM = "sha256"
CHUNK_SIZE = 4 * 1024 * 1024


def new_hasher(algorithm: str = DEFAULT_ALGORITHM) -> hashlib._Hash:
    """A hashlib object for ``algorithm``; a clear error for an unknown name."""
    try:
        return hashlib.new(algorithm)
    except ValueError as exc:
        raise ValueError(
            f"unknown checksum algorithm {algorithm!r}; use one of hashlib's, e.g. 'sha256'"
        ) from exc


def checksum_chunks(chunks: Iterable[bytes], algorithm: str = DEFAULT_ALGORITHM) -> tuple[str, int]:
    """Hex digest and total size of a stream of byte chunks."""
    hasher = new_hasher(algorithm)
    size = 0
    for chunk in chunks:
        hasher.update(chunk)
        size += len(chunk)
    return hasher.hexdigest(), size


def iter_stream(stream: BinaryIO, chunk_size: int = CHUNK_SIZE) -> Iterable[bytes]:
    while chunk := stream.read(chunk_size):
        yield chunk


def checksum_stream(stream: BinaryIO, algorithm: str = DEFAULT_ALGORITHM) -> tuple[str, int]:
    """Hex digest and size of everything left in ``stream``, read in bounded chunks."""
    return checksum_chunks(iter_stream(stream), algorithm)


def checksum_file(path: str | Path, algorithm: str = DEFAULT_ALGORITHM) -> tuple[str, int]:
    """Hex digest and size of the file at ``path``."""
    with open(path, "rb", buffering=0) as fh:
        return checksum_stream(fh, algorithm)


class HashingReader:
    """Wraps a binary stream; hashes and counts every byte read through it (one read pass)."""

    def __init__(self, stream: BinaryIO, algorithm: str = DEFAULT_ALGORITHM) -> None:
        self._stream = stream
        self.algorithm = algorithm
        self._hasher = new_hasher(algorithm)
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self._hasher.update(data)
        self.size += len(data)
        return data

    def hexdigest(self) -> str:
        return self._hasher.hexdigest()


class HashingWriter:
    """Wraps a binary stream; hashes and counts every byte written through it."""

    def __init__(self, stream: BinaryIO, algorithm: str = DEFAULT_ALGORITHM) -> None:
        self._stream = stream
        self.algorithm = algorithm
        self._hasher = new_hasher(algorithm)
        self.size = 0

    def write(self, data: bytes) -> int:
        self._hasher.update(data)
        self.size += len(data)
        return self._stream.write(data)

    def flush(self) -> None:
        self._stream.flush()

    def hexdigest(self) -> str:
        return self._hasher.hexdigest()
