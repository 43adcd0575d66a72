"""Live verification of a RawDataPackage copy in a LONG_TERM_ARCHIVE location (``lta_presence``).

The one place that looks at an archived object: the archive stage (only a verified copy makes a
package ARCHIVED) and the cleanup right before the last copy outside an LTA is deleted both use
it, and the evidence it returns goes into the audit log verbatim.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from ccat_dagster.storage.base import Storage
from ccat_dagster.storage.throttle import throttled_checksum
from ccat_ops_db.models import DataLocation, RawDataPackage, utcnow


@dataclass(frozen=True)
class LtaEvidence:
    """The result of checking one archive copy live."""

    ok: bool
    exists: bool
    location: str
    key: str
    checked_at: datetime
    size: int | None = None
    expected_size: int | None = None
    checksum: str | None = None
    expected_checksum: str | None = None
    checksum_algorithm: str | None = None
    #: "computed" (streamed) or "stored" (checksum metadata kept with the object)
    checksum_source: str | None = None
    detail: str = ""
    #: False when the object could not be examined (the archive did not answer): such a result
    #: proves nothing either way, so it keeps data but never marks the copy bad
    examined: bool = True

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["checked_at"] = self.checked_at.isoformat()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LtaEvidence:
        """The inverse of :meth:`as_dict` (evidence handed from one step of a run to the next)."""
        return cls(**{**data, "checked_at": datetime.fromisoformat(data["checked_at"])})

    @property
    def definite_failure(self) -> bool:
        """The object was examined and is not what the catalogue says (missing or other bytes)."""
        return not self.ok and self.examined

    @classmethod
    def cannot_verify(
        cls, package: RawDataPackage, lta: DataLocation, error: BaseException | str
    ) -> LtaEvidence:
        """The evidence of a check of ``package``'s copy in ``lta`` that could not look at the
        object (``error``: why)."""
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        return cls(
            ok=False,
            exists=False,
            location=lta.qualified_name,
            key=package.relative_path,
            checked_at=utcnow(),
            detail=f"cannot verify: {text}",
            examined=False,
        )


VerifyLtaCopy = Callable[[RawDataPackage, DataLocation], LtaEvidence]


def verify_lta_copy(
    storage: Storage,
    package: RawDataPackage,
    *,
    prefer_stored_checksum: bool = True,
    bytes_per_second: int = 0,
) -> LtaEvidence:
    """Does ``storage`` hold ``package`` with its recorded size and checksum, right now?

    With ``prefer_stored_checksum`` a checksum stored with the object at write time (S3
    metadata, written only after the streamed bytes matched) is accepted; otherwise the object
    is streamed and hashed, at most ``bytes_per_second`` (0: as fast as the storage goes; the
    scrub's rate limit). Storage errors propagate: callers treat them as "cannot prove it".
    """
    key = package.relative_path
    base = {
        "location": storage.name,
        "key": key,
        "expected_size": package.size,
        "expected_checksum": package.checksum,
        "checksum_algorithm": package.checksum_algorithm,
    }
    stat = storage.stat(key)
    if not stat.exists:
        return LtaEvidence(
            ok=False, exists=False, checked_at=utcnow(), detail="object missing", **base
        )
    if package.size is not None and stat.size != package.size:
        return LtaEvidence(
            ok=False,
            exists=True,
            size=stat.size,
            checked_at=utcnow(),
            detail=f"size {stat.size} != recorded {package.size}",
            **base,
        )
    if not package.checksum or not package.checksum_algorithm:
        return LtaEvidence(
            ok=False,
            exists=True,
            size=stat.size,
            checked_at=utcnow(),
            detail="the package has no recorded checksum to compare with",
            **base,
        )
    stored = storage.stored_checksum(key) if prefer_stored_checksum else None
    if stored is not None and stored[0] == package.checksum_algorithm:
        actual, source = stored[1], "stored"
    else:
        actual, _ = throttled_checksum(
            storage, key, package.checksum_algorithm, bytes_per_second=bytes_per_second
        )
        source = "computed"
    ok = actual == package.checksum
    return LtaEvidence(
        ok=ok,
        exists=True,
        size=stat.size,
        checksum=actual,
        checksum_source=source,
        checked_at=utcnow(),
        detail=""
        if ok
        else f"{package.checksum_algorithm} checksum mismatch: {actual} != recorded",
        **base,
    )


def make_storage_lta_verifier(
    storage_for: Callable[[DataLocation], Storage], *, prefer_stored_checksum: bool = True
) -> VerifyLtaCopy:
    """A ``verify_lta_copy(package, location)`` callable over the Storage of each location."""

    def verify(package: RawDataPackage, location: DataLocation) -> LtaEvidence:
        return verify_lta_copy(
            storage_for(location), package, prefer_stored_checksum=prefer_stored_checksum
        )

    return verify
