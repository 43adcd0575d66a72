"""One storage interface for every kind of location: local disk, SSH (SFTP) and S3.

Keys are relative, '/'-separated object names under the location root (disk path or S3
prefix). Backends move bytes and decide nothing. A write in progress is a *temporary* (a file in
the location's ``.ccat-partial/`` directory, an unfinished S3 multipart upload) until it becomes
the object; ``list_temporaries`` and ``remove_temporary`` find and remove the ones a killed
process left behind, without walking the objects.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO

from ccat_dagster.storage.errors import ChecksumMismatchError, PermanentStorageError
from ccat_ops_db.checksum import CHUNK_SIZE, DEFAULT_ALGORITHM, HashingWriter

#: the directory under a disk location's root that holds its writes in progress (one directory,
#: so finding what a killed process left never walks the location's objects); no key may use it
PARTIAL_DIR = ".ccat-partial"


def check_key(key: str, *, location: str) -> str:
    """Return ``key`` if it is a valid relative '/'-separated object name under a location root;
    otherwise raise PermanentStorageError naming the location and the key. Absolute keys, empty
    keys and '..' components are refused so that no key can reach outside the location."""
    reason = None
    if not isinstance(key, str) or not key or not key.strip("/"):
        reason = "empty key"
    elif key.startswith("/") or key.startswith("\\"):
        reason = "absolute key"
    elif any(part in ("..", ".") for part in key.split("/")):
        reason = "'.' or '..' component"
    elif "\x00" in key:
        reason = "NUL byte"
    elif key.endswith("/") or "//" in key:
        reason = "empty path component"
    elif key.split("/", 1)[0] == PARTIAL_DIR:
        reason = f"{PARTIAL_DIR}/ is reserved for writes in progress"
    if reason:
        raise PermanentStorageError(
            f"invalid object key ({reason}); keys are relative '/'-separated names under the "
            "location root",
            location=location,
            key=repr(key),
        )
    return key


def check_prefix(prefix: str, *, location: str) -> str:
    """A listing prefix: '' (everything) or the start of a valid key, e.g. 'raw/' or 'raw/pkg_'."""
    if prefix == "":
        return prefix
    check_key(prefix.rstrip("/") if prefix.rstrip("/") else prefix, location=location)
    return prefix


def sort_key(name: str, *, is_directory: bool) -> str:
    """How a walk orders the entries of one directory so that the keys it yields come out in
    ascending order: a directory ``a`` sorts as ``a/`` (``a.txt`` < ``a/x`` < ``a0``)."""
    return f"{name}/" if is_directory else name


def may_hold_keys_after(directory_key: str, start_after: str) -> bool:
    """Whether a directory (its key, relative) may hold a key greater than ``start_after``."""
    return not start_after or f"{directory_key}/" >= start_after[: len(directory_key) + 1]


@dataclass(frozen=True)
class ObjectStat:
    exists: bool
    size: int | None = None
    #: last change of the content (UTC; whole seconds over SFTP), when the backend knows it
    modified_at: datetime | None = None


@dataclass(frozen=True)
class WriteResult:
    key: str
    size: int
    checksum: str
    checksum_algorithm: str


@dataclass(frozen=True)
class DeleteResult:
    key: str
    existed: bool  # False: it was already missing, which counts as deleted


@dataclass(frozen=True)
class TemporaryObject:
    """A write (or unpack) in progress, or left behind by a process that died: never visible as
    an object. ``name`` is the backend's handle (a path under the location root, or the S3 key
    of an unfinished multipart upload with its ``upload_id``); ``modified_at`` (UTC) is its last
    write, or when the upload was initiated."""

    name: str
    size: int
    modified_at: datetime
    upload_id: str | None = None

    def describe(self) -> str:
        upload = f" (multipart upload {self.upload_id})" if self.upload_id else ""
        return f"{self.name}{upload}, {self.size} bytes, {self.modified_at.isoformat()}"


@dataclass(frozen=True)
class DiskUsage:
    total_bytes: int
    used_bytes: int

    @property
    def percent(self) -> float:
        return 100.0 * self.used_bytes / self.total_bytes if self.total_bytes else 0.0


class Storage(abc.ABC):
    """A place that holds objects under relative keys."""

    #: human-readable location name for messages, e.g. "ccat/telescope_buffer"
    name: str

    @abc.abstractmethod
    def stat(self, key: str) -> ObjectStat: ...

    @abc.abstractmethod
    def open_read(self, key: str) -> AbstractContextManager[BinaryIO]:
        """A readable binary stream of the object."""

    @abc.abstractmethod
    def open_write(self, key: str) -> AbstractContextManager[BinaryIO]:
        """A writable stream whose bytes appear under ``key`` only when the ``with`` block exits
        normally (temporary name then rename; S3 multipart completed). If the block raises, the
        partial object is removed (multipart aborted) and nothing is left under ``key``."""

    def write_stream(
        self,
        key: str,
        stream: BinaryIO,
        *,
        expected_checksum: str | None = None,
        algorithm: str = DEFAULT_ALGORITHM,
        size_hint: int | None = None,
    ) -> WriteResult:
        """Write ``stream`` atomically under ``key``, hashing it on the way; when
        ``expected_checksum`` is given and differs, raise ChecksumMismatchError and leave
        nothing under ``key``. Backends may override for speed, keeping this contract."""
        with self.open_write(key) as out:
            writer = HashingWriter(out, algorithm)
            while chunk := stream.read(CHUNK_SIZE):
                writer.write(chunk)
            actual = writer.hexdigest()
            if expected_checksum is not None and actual != expected_checksum:
                # Raising inside the block aborts the write: nothing appears under ``key``.
                raise ChecksumMismatchError(
                    expected=expected_checksum,
                    actual=actual,
                    algorithm=algorithm,
                    location=self.name,
                    key=key,
                )
        return WriteResult(key=key, size=writer.size, checksum=actual, checksum_algorithm=algorithm)

    @abc.abstractmethod
    def delete(self, key: str) -> DeleteResult:
        """Idempotent: a missing object counts as deleted (``existed=False``)."""

    @abc.abstractmethod
    def list(self, prefix: str = "", *, start_after: str = "") -> Iterator[tuple[str, int]]:
        """(key, size) of every object under ``prefix``, in ascending key order (code point
        order, which is the order S3 lists UTF-8 keys in); with ``start_after`` only the keys
        after it, so a long listing can be taken in slices (:func:`sort_key` of a directory
        entry gives the order a walk must visit them in)."""

    @abc.abstractmethod
    def move(self, key: str, new_key: str) -> None:
        """Give the object under ``key`` the name ``new_key`` (a rename on disk and over SFTP,
        copy then delete on S3). PermanentStorageError when ``key`` is missing or ``new_key``
        exists: an object is never overwritten by a move."""

    @abc.abstractmethod
    def checksum(self, key: str, algorithm: str = DEFAULT_ALGORITHM) -> tuple[str, int]:
        """Checksum and size of the stored object, computed by streaming it."""

    def stored_checksum(self, key: str) -> tuple[str, str] | None:
        """(algorithm, hexdigest) recorded with the object when it was written, if the backend
        keeps one (S3 object metadata); None means: compute it with ``checksum``."""
        return None

    def list_temporaries(self) -> Iterator[TemporaryObject]:
        """Every temporary at the location (writes in progress and leftovers of dead ones)."""
        return iter(())

    def remove_temporary(self, temporary: TemporaryObject) -> bool:
        """Remove a temporary ``list_temporaries`` returned; False if it was already gone. Only
        for temporaries no live process writes any more: the caller decides that."""
        return False

    def disk_usage(self) -> DiskUsage:
        raise NotImplementedError(f"{self.name}: disk usage is only defined for disk locations")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
