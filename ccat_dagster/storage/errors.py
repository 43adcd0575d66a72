"""Storage errors: transient (retry with backoff) versus permanent (needs a person or a re-copy)."""

from __future__ import annotations


class StorageError(Exception):
    """Base class; ``location`` and ``key`` name where it happened."""

    def __init__(self, message: str, *, location: str | None = None, key: str | None = None):
        where = " ".join(
            p
            for p in (f"location={location}" if location else "", f"object={key}" if key else "")
            if p
        )
        super().__init__(f"{message} [{where}]" if where else message)
        self.location = location
        self.key = key


class TransientStorageError(StorageError):
    """Connection dropped, timeout, S3 5xx/throttling: retrying later may succeed."""


class LocationUnavailableError(TransientStorageError):
    """The *location* does not answer, not one object: its root is missing or not a directory,
    the mount is gone, the disk is full, the S3 endpoint is down or answering 5xx, the SSH host
    is unreachable. Nothing is wrong with the package being moved: the location is marked
    unavailable and probed with backoff, and work that needs it waits without counting against
    any package's retries."""


class LocationFullError(LocationUnavailableError):
    """The location answers but has no room for writes (disk full, quota exceeded). Reads and
    deletions there still work, and deleting is what frees it, so only work that writes there
    waits."""


class PermanentStorageError(StorageError):
    """Missing source, permission denied, disk full, bad configuration: retrying will not help."""


class ChecksumMismatchError(PermanentStorageError):
    """The bytes that arrived are not the bytes that were recorded."""

    def __init__(
        self,
        *,
        expected: str,
        actual: str,
        algorithm: str,
        location: str | None = None,
        key: str | None = None,
        detail: str | None = None,
    ):
        super().__init__(
            f"{algorithm} checksum mismatch: expected {expected}, got {actual}"
            + (f"; {detail}" if detail else ""),
            location=location,
            key=key,
        )
        self.expected = expected
        self.actual = actual
        self.algorithm = algorithm


class NotImplementedStorageError(PermanentStorageError, NotImplementedError):
    """A storage kind that is declared but not implemented (tape)."""
