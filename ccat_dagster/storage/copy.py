"""Streaming any-to-any copy: bytes flow from one Storage's ``open_read`` into another's
``write_stream`` in bounded chunks, hashed on the way; the destination object appears only if the
checksum matches, so a corrupt or truncated transfer leaves nothing at the destination.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ccat_dagster.storage.base import Storage
from ccat_dagster.storage.errors import ChecksumMismatchError, PermanentStorageError
from ccat_ops_db.checksum import DEFAULT_ALGORITHM


@dataclass(frozen=True)
class CopyResult:
    size: int
    checksum: str
    algorithm: str
    seconds: float
    bytes_per_s: float


def copy_object(
    src: Storage,
    src_key: str,
    dst: Storage,
    dst_key: str,
    *,
    expected_checksum: str | None,
    algorithm: str = DEFAULT_ALGORITHM,
    size_hint: int | None = None,
) -> CopyResult:
    """Copy ``src_key`` at ``src`` to ``dst_key`` at ``dst``, streaming with bounded memory.

    With ``expected_checksum`` (the checksum recorded in the ops DB) the copy is verified before
    it becomes visible: a mismatch raises ChecksumMismatchError naming both locations and leaves
    nothing at ``dst_key``. Without it the checksum of the bytes copied is returned for the caller
    to record. ``size_hint`` (else a stat of the source) sizes S3 multipart parts.
    """
    started = time.monotonic()
    if size_hint is None:
        stat = src.stat(src_key)
        if not stat.exists:
            raise PermanentStorageError(
                f"missing source: nothing to copy to {dst.name}:{dst_key}; check the recorded "
                "path or copy from another copy",
                location=src.name,
                key=src_key,
            )
        size_hint = stat.size
    try:
        with src.open_read(src_key) as stream:
            written = dst.write_stream(
                dst_key,
                stream,
                expected_checksum=expected_checksum,
                algorithm=algorithm,
                size_hint=size_hint,
            )
    except ChecksumMismatchError as exc:
        raise ChecksumMismatchError(
            expected=exc.expected,
            actual=exc.actual,
            algorithm=exc.algorithm,
            location=f"{src.name} -> {dst.name}",
            key=f"{src_key} -> {dst_key}",
            detail=(
                "nothing was stored at the destination; the source copy or the transfer is "
                "corrupt: verify the source checksum before retrying"
            ),
        ) from exc
    seconds = max(time.monotonic() - started, 1e-9)
    return CopyResult(
        size=written.size,
        checksum=written.checksum,
        algorithm=written.checksum_algorithm,
        seconds=seconds,
        bytes_per_s=written.size / seconds,
    )
