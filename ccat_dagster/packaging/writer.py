"""Write a RawDataPackage or DataTransferPackage tar in one read pass.

Each member is read once in 4 MiB chunks; the chunk feeds the member's checksum and the tar
(whose own checksum is computed as it is written). The manifest goes first, filled from the
expected values the caller passes (the ops DB's filed sizes and checksums); a member whose bytes
disagree with them aborts the write, so a changed or corrupt source never becomes a package. The
tar is POSIX (PAX) format: long and non-ASCII names, members over 8 GiB.
"""

from __future__ import annotations

import queue
import tarfile
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import BinaryIO, cast

from ccat_dagster.packaging.errors import (
    InvalidPackageMemberError,
    PackageSourceChangedError,
    PackageVerificationError,
)
from ccat_dagster.packaging.manifest import (
    KINDS,
    MANIFEST_NAME,
    Manifest,
    ManifestEntry,
    check_entries,
)
from ccat_ops_db.checksum import CHUNK_SIZE, DEFAULT_ALGORITHM, HashingWriter, new_hasher

_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE


@dataclass(frozen=True)
class PackageMember:
    """One file to put into a package, with the size and checksum the ops DB filed for it.

    ``open`` returns a context manager giving a readable binary stream, e.g.
    ``lambda: storage.open_read(key)`` or ``lambda: open(path, "rb")``. ``algorithm`` is the
    algorithm of ``checksum``; None means the package's algorithm.
    """

    arcname: str
    size: int
    checksum: str
    open: Callable[[], AbstractContextManager[BinaryIO]] = field(repr=False)
    algorithm: str | None = None
    mtime: int = 0  # tar header mtime; 0 keeps the tar bytes a function of the content alone


@dataclass(frozen=True)
class PackageResult:
    """Size and checksum of the whole tar as written, and its manifest entries."""

    size: int
    checksum: str
    algorithm: str
    entries: list[ManifestEntry]


def write_package(
    out: BinaryIO,
    members: Sequence[PackageMember],
    *,
    kind: str,
    name: str,
    algorithm: str = DEFAULT_ALGORITHM,
) -> PackageResult:
    """Write the package tar of ``members`` to ``out`` and return its size and checksum.

    Raises PackageSourceChangedError when a member's bytes differ from its filed size or
    checksum; ``out`` then holds an invalid partial tar that the caller must discard (an atomic
    ``Storage.open_write`` does so when the exception leaves its ``with`` block). Raises
    InvalidPackageMemberError, before writing anything, for an unsafe or duplicate member path.
    Both are PermanentStorageErrors.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown package kind {kind!r}; use one of {KINDS}")
    new_hasher(algorithm)  # fail early on an unknown algorithm
    entries = [
        ManifestEntry(m.arcname, m.size, _lower(m.checksum), m.algorithm or algorithm)
        for m in members
    ]
    try:
        check_entries(entries, package=name)
    except PackageVerificationError as exc:
        # Same rule as when unpacking, but here it is the caller's member list that is wrong.
        raise InvalidPackageMemberError(str(exc)) from None
    manifest = Manifest(kind=kind, name=name, algorithm=algorithm, entries=tuple(entries))

    tar = _TarOutput(out, algorithm)
    try:
        manifest_bytes = manifest.to_json_bytes()
        tar.write(_header(MANIFEST_NAME, len(manifest_bytes), 0))
        tar.write(manifest_bytes)
        tar.write(_padding(len(manifest_bytes)))
        for member, entry in zip(members, entries, strict=True):
            _write_member(tar, member, entry, package=name)
        # End of archive: two zero blocks, then pad to a full record as tar(1) does.
        tar.write(bytes(2 * _BLOCK))
        tar.write(bytes(-tar.offset % _RECORD))
        tar.finish()
    finally:
        tar.close()
    return PackageResult(
        size=tar.size, checksum=tar.hexdigest(), algorithm=algorithm, entries=entries
    )


def _lower(checksum: object) -> str:
    # Anything but a str (e.g. None from an unfiled row) is passed on as it is, for
    # check_entries to report.
    return checksum.lower() if isinstance(checksum, str) else cast(str, checksum)


def _header(arcname: str, size: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(arcname)
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    info.type = tarfile.REGTYPE
    return info.tobuf(tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


def _padding(size: int) -> bytes:
    return bytes(-size % _BLOCK)


def _write_member(
    tar: _TarOutput, member: PackageMember, entry: ManifestEntry, *, package: str
) -> None:
    def changed(what: str) -> PackageSourceChangedError:
        return PackageSourceChangedError(
            f"source file differs from what was filed: {what}; the package was not written. "
            "Check the source copy (was it modified or is the disk failing?) and re-file or "
            "remove the file before packaging again",
            package=package,
            member=entry.path,
        )

    tar.write(_header(entry.path, entry.size, member.mtime))
    hasher = new_hasher(entry.algorithm)
    remaining = entry.size
    with member.open() as src:
        while remaining:
            chunk = src.read(min(CHUNK_SIZE, remaining))
            if not chunk:
                raise changed(f"size is {entry.size - remaining} bytes, filed {entry.size}")
            hasher.update(chunk)
            tar.write(chunk)
            remaining -= len(chunk)
        if src.read(1):
            raise changed(f"larger than the filed {entry.size} bytes")
    actual = hasher.hexdigest()
    if actual != entry.checksum:
        raise changed(f"{entry.algorithm} is {actual}, filed {entry.checksum}")
    tar.write(_padding(entry.size))


class _TarOutput:
    """The tar byte stream: hashed and written to ``out`` by a background thread.

    hashlib releases the GIL on large updates, so the member checksum (reader thread) and the
    whole-tar checksum plus the write (this thread) run on two cores at once. The queue is
    bounded to keep memory at a few chunks.
    """

    _DONE = object()

    def __init__(self, out: BinaryIO, algorithm: str) -> None:
        self._writer = HashingWriter(out, algorithm)
        self._queue: queue.Queue[object] = queue.Queue(maxsize=4)
        self._error: BaseException | None = None
        self._abort = False
        self.offset = 0  # bytes handed to write() so far (touched by the caller's thread only)
        self._thread = threading.Thread(target=self._run, name="package-tar-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not self._DONE:
            if self._error is None and not self._abort:
                try:
                    self._writer.write(item)  # type: ignore[arg-type]
                except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                    self._error = exc

    @property
    def size(self) -> int:
        return self._writer.size

    def write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        if data:
            self.offset += len(data)
            self._queue.put(data)

    def finish(self) -> None:
        """Wait until every byte is written and flushed; raise the writer's error if any."""
        self._queue.put(self._DONE)
        self._thread.join()
        if self._error is not None:
            raise self._error
        self._writer.flush()

    def close(self) -> None:
        if self._thread.is_alive():
            self._abort = True
            self._queue.put(self._DONE)
            self._thread.join()

    def hexdigest(self) -> str:
        return self._writer.hexdigest()
