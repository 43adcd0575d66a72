"""Acting on a confirmed lost copy: look once more, live, then mark it.

An archive copy goes through the archive's repair path
(:func:`ccat_dagster.lifecycle.archive.repair.record_lta_check`): LOST when the object is
missing, BAD when it has another size, and the archive stage copies the package again from a
verified copy elsewhere (another archive, a buffer). A copy anywhere else is marked the same
way, audited; from then on no deletion rule counts it as evidence that data exists.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.archive.repair import record_lta_check
from ccat_dagster.lifecycle.archive.verification import LtaEvidence
from ccat_dagster.lifecycle.common.progress import set_status
from ccat_dagster.storage.base import ObjectStat, Storage
from ccat_ops_db.models import (
    AuditFinding,
    AuditFindingState,
    CopyType,
    DataLocation,
    LocationType,
    PhysicalCopy,
    PhysicalCopyStatus,
    RawDataPackage,
)

S = PhysicalCopyStatus
REASON = "consistency audit"


def _still_lost(stat: ObjectStat, expected: int | None) -> bool:
    return not stat.exists or (expected is not None and stat.size != expected)


def act_on_lost(
    session: Session,
    finding: AuditFinding,
    location: DataLocation,
    storage: Storage,
    *,
    now: datetime,
    run_id: str | None = None,
) -> bool:
    """Mark the copy of a confirmed lost finding (the caller commits); False when the object is
    back as recorded, or the copy is no longer PRESENT (the finding is closed)."""
    copy = session.get(PhysicalCopy, finding.physical_copy_id) if finding.physical_copy_id else None
    stat = storage.stat(finding.key)
    if copy is None or copy.status != S.PRESENT or not _still_lost(stat, copy.size):
        finding.state = AuditFindingState.GONE
        finding.detail = "present as recorded when acted on, or no longer PRESENT"
        return False
    detail = (
        f"{REASON}: object missing (seen by two scans from {finding.first_seen.isoformat()})"
        if not stat.exists
        else f"{REASON}: size {stat.size} != recorded {copy.size} (seen by two scans)"
    )
    if copy.type == CopyType.RAW_DATA_PACKAGE and (
        location.location_type == LocationType.LONG_TERM_ARCHIVE
    ):
        package = session.get_one(RawDataPackage, copy.raw_data_package_id)
        evidence = LtaEvidence(
            ok=False,
            exists=stat.exists,
            location=location.qualified_name,
            key=finding.key,
            checked_at=now,
            size=stat.size,
            expected_size=copy.size,
            detail=detail,
        )
        record_lta_check(session, package, location, evidence, run_id=run_id)
    else:
        set_status(
            session,
            copy,
            S.LOST if not stat.exists else S.BAD,
            entity_type="physical_copy",
            reason=detail,
            data_location_id=location.id,
            run_id=run_id,
            evidence={"key": finding.key, "size": stat.size, "expected_size": copy.size},
        )
        copy.failure_reason = detail
    finding.state = AuditFindingState.ACTED
    finding.acted_at = now
    finding.detail = detail
    return True
