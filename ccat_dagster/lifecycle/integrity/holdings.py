"""What a location holds now, by package (or bundle) name, and what ended each copy that no
longer holds its data: the catalogue's answer that the UI's partitions of a location's asset
mirror (``ccat status`` reads the same rows).

A copy holds its data until the rules delete it (DELETED) or a live check finds it BAD or LOST;
a copy waiting for deletion, or whose deletion failed, still holds it.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.common.chunks import chunks
from ccat_ops_db.models import (
    AuditLog,
    CopyType,
    DataTransferPackage,
    PhysicalCopy,
    PhysicalCopyStatus,
    RawDataPackage,
)

S = PhysicalCopyStatus

#: statuses of a copy whose bytes are (still) at its location
HOLDING_STATUSES = (
    S.PRESENT,
    S.STAGED,
    S.DELETION_SCHEDULED,
    S.DELETION_IN_PROGRESS,
    S.DELETION_POSSIBLE,
    S.DELETION_FAILED,
)

_ENTITY = {
    CopyType.RAW_DATA_PACKAGE: (RawDataPackage, PhysicalCopy.raw_data_package_id),
    CopyType.DATA_TRANSFER_PACKAGE: (DataTransferPackage, PhysicalCopy.data_transfer_package_id),
}


class EndedCopy(NamedTuple):
    """A copy that no longer holds its data, with the audit-log entry that ended it."""

    name: str
    status: PhysicalCopyStatus
    ended_at: datetime | None
    reason: str | None
    evidence: dict[str, Any] | None
    run_id: str | None


def ended_copies(
    session: Session, location_id: int, copy_type: CopyType, names: Collection[str]
) -> list[EndedCopy]:
    """Those of ``names`` (packages or bundles, by ``copy_type``) whose copy at the location no
    longer holds its data, each with the copy's status and latest audit-log entry (rule or
    check, time, evidence, run). A name without a copy row there is not ended: it is planned
    (a package about to be written to its buffer)."""
    model, fk = _ENTITY[copy_type]
    ended: list[EndedCopy] = []
    for chunk in chunks(list(names)):
        rows = session.execute(
            sa.select(model.name, PhysicalCopy.id, PhysicalCopy.status, PhysicalCopy.updated_at)
            .join(PhysicalCopy, fk == model.id)
            .where(
                model.name.in_(chunk),
                PhysicalCopy.data_location_id == location_id,
                PhysicalCopy.status.not_in(HOLDING_STATUSES),
            )
        ).all()
        if not rows:
            continue
        latest = dict(
            session.execute(
                sa.select(AuditLog.entity_id, sa.func.max(AuditLog.id))
                .where(
                    AuditLog.entity_type == "physical_copy",
                    AuditLog.entity_id.in_([copy_id for _, copy_id, _, _ in rows]),
                )
                .group_by(AuditLog.entity_id)
            )
            .tuples()
            .all()
        )
        audits = {
            a.entity_id: a
            for a in session.scalars(sa.select(AuditLog).where(AuditLog.id.in_(latest.values())))
        }
        for name, copy_id, status, updated_at in rows:
            audit = audits.get(copy_id)
            ended.append(
                EndedCopy(
                    name,
                    status,
                    audit.created_at if audit else updated_at,
                    audit.reason if audit else None,
                    audit.evidence if audit else None,
                    audit.run_id if audit else None,
                )
            )
    return ended
