"""The quarantine of dark objects: ``.ccat-quarantine/<date>/<key>`` under the same location.

A confirmed dark object is moved there (a rename on disk and over SFTP, copy then delete on S3),
never deleted by the audit. An operator lists what is there (``ccat quarantine list``) and
releases an object back under its key or purges it; each is a finding state and an audit_log
row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ccat_dagster.storage.base import Storage
from ccat_ops_db.audit import audit
from ccat_ops_db.models import (
    AuditFinding,
    AuditFindingKind,
    AuditFindingState,
    DataLocation,
    as_utc,
    utcnow,
)

QUARANTINE_DIR = ".ccat-quarantine"
F = AuditFindingState
StorageFor = Callable[[DataLocation], Storage]


def quarantine_key(key: str, when: datetime) -> str:
    return f"{QUARANTINE_DIR}/{as_utc(when).date().isoformat()}/{key}"


def _record(
    session: Session, finding: AuditFinding, new: AuditFindingState, reason: str, **extra
) -> None:
    audit(
        session,
        entity_type="audit_finding",
        entity_id=finding.id,
        old_status=finding.state.value,
        new_status=new.value,
        reason=reason,
        data_location_id=finding.data_location_id,
        run_id=extra.pop("run_id", None),
        evidence={"key": finding.key, "quarantine_key": finding.quarantine_key, **extra},
    )
    finding.state = new
    finding.acted_at = utcnow()


def quarantine(
    session: Session,
    finding: AuditFinding,
    storage: Storage,
    *,
    now: datetime,
    run_id: str | None = None,
) -> None:
    """Move a confirmed dark object into the quarantine and record where (the caller
    commits). Storage errors propagate and leave the finding open."""
    target = quarantine_key(finding.key, now)
    if _half_moved(storage, finding.key, target):
        # an earlier move copied it (S3) and failed before the delete: the bytes are safe in
        # the quarantine, only the old key is left to remove
        storage.delete(finding.key)
    else:
        storage.move(finding.key, target)
    finding.quarantine_key = target
    _record(
        session,
        finding,
        F.QUARANTINED,
        "consistency audit: dark object confirmed by a second scan; moved to the quarantine",
        size=finding.size,
        run_id=run_id,
    )


def _half_moved(storage: Storage, key: str, target: str) -> bool:
    """The quarantine already holds these very bytes (same size and checksum)."""
    there, here = storage.stat(target), storage.stat(key)
    if not (there.exists and here.exists and there.size == here.size):
        return False
    return storage.checksum(target)[0] == storage.checksum(key)[0]


def quarantined(session: Session, location_ids: Sequence[int] | None = None) -> list[AuditFinding]:
    """The objects in quarantine now, oldest first (of these locations, or everywhere)."""
    query = sa.select(AuditFinding).where(
        AuditFinding.kind == AuditFindingKind.DARK, AuditFinding.state == F.QUARANTINED
    )
    if location_ids is not None:
        query = query.where(AuditFinding.data_location_id.in_(list(location_ids)))
    return list(session.scalars(query.order_by(AuditFinding.acted_at, AuditFinding.id)))


def release(
    session: Session, finding: AuditFinding, storage: Storage, *, by: str | None = None
) -> None:
    """Move a quarantined object back under its key (an operator says it belongs there: file
    it, or the catalogue will find it dark again). Refuses when the key is taken."""
    assert finding.quarantine_key is not None
    storage.move(finding.quarantine_key, finding.key)
    _record(session, finding, F.RELEASED, f"released from the quarantine by {by or 'operator'}")


def purge(
    session: Session, finding: AuditFinding, storage: Storage, *, by: str | None = None
) -> bool:
    """Delete a quarantined object for good; False when it was already gone."""
    assert finding.quarantine_key is not None
    existed = storage.delete(finding.quarantine_key).existed
    _record(
        session,
        finding,
        F.PURGED,
        f"purged from the quarantine by {by or 'operator'}",
        existed=existed,
    )
    return existed
