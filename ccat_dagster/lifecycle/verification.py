"""Live verification of a RawDataPackage copy in a LONG_TERM_ARCHIVE location (``lta_presence``).

Used by the archive stage (only a verified copy makes a package ARCHIVED) and by the cleanup
right before the last copy outside an LTA is deleted. The evidence it returns is written into the
audit log verbatim.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ccat_dagster.storage.base import Storage
from ccat_dagster.storage.errors import StorageError
from ccat_ops_db.models import DataLocation, RawDataPackage, utcnow


@dataclass(frozen=True)
class LtaEvidence:
    """What a live look at an archived object showed."""

    ok: bool
    location: str
    key: str
    exists: bool
    size: int | None = None
    expected_size: int | None = None
    checksum: str | None = None
    expected_checksum: str | None = None
    algorithm: str | None = None
    method: str = "none"  # "computed" (bytes streamed) or "stored-metadata"
    error: str | None = None
    checked_at: str = field(default_factory=lambda: utcnow().isoformat())

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def verify_lta_copy(
    storage: Storage,
    package: RawDataPackage,
    location: DataLocation,
    *,
    deep: bool = True,
) -> LtaEvidence:
    """Does ``location`` hold ``package`` with its recorded size and checksum, right now?

    ``deep`` streams the object and recomputes the checksum; otherwise a checksum stored with
    the object at write time (S3 metadata) is accepted when present. Storage errors (endpoint
    down) give ``ok=False`` with the error: an unverifiable copy is never treated as verified.
    """
    algorithm = package.checksum_algorithm or "sha256"
    base = {
        "location": location.qualified_name,
        "key": package.relative_path,
        "expected_size": package.size,
        "expected_checksum": package.checksum,
        "algorithm": algorithm,
    }
    try:
        stat = storage.stat(package.relative_path)
        if not stat.exists:
            return LtaEvidence(ok=False, exists=False, error="object is missing", **base)
        if stat.size != package.size:
            return LtaEvidence(
                ok=False,
                exists=True,
                size=stat.size,
                error=f"size {stat.size} != recorded {package.size}",
                **base,
            )
        stored = None if deep else storage.stored_checksum(package.relative_path)
        if stored is not None and stored[0] == algorithm:
            checksum, method = stored[1], "stored-metadata"
        else:
            checksum, _ = storage.checksum(package.relative_path, algorithm)
            method = "computed"
    except StorageError as exc:
        return LtaEvidence(ok=False, exists=False, error=f"cannot verify: {exc}", **base)
    ok = checksum == package.checksum
    return LtaEvidence(
        ok=ok,
        exists=True,
        size=stat.size,
        checksum=checksum,
        method=method,
        error=None if ok else f"checksum {checksum} != recorded {package.checksum}",
        **base,
    )
