"""The audit trail: every status change of a copy or package, with reason, run and evidence."""

from __future__ import annotations

import enum
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from ccat_ops_db.models import AuditLog, utcnow


def _value(status: Any) -> str | None:
    if status is None:
        return None
    return status.value if isinstance(status, enum.Enum) else str(status)


def audit(
    session: Session,
    *,
    entity_type: str,
    entity_id: int,
    new_status: Any,
    reason: str,
    old_status: Any = None,
    data_location_id: int | None = None,
    run_id: str | None = None,
    evidence: dict[str, Any] | None = None,
) -> None:
    """Record one status change (flushed with the caller's transaction)."""
    session.add(
        AuditLog(
            entity_type=entity_type,
            entity_id=entity_id,
            data_location_id=data_location_id,
            old_status=_value(old_status),
            new_status=_value(new_status),
            reason=reason,
            run_id=run_id,
            evidence=evidence,
        )
    )


def audit_many(session: Session, rows: list[dict[str, Any]]) -> None:
    """Record many status changes in one INSERT (bulk operations).

    Each row has the keyword arguments of :func:`audit`.
    """
    if not rows:
        return
    now = utcnow()
    values = [
        {
            "created_at": now,
            "entity_type": r["entity_type"],
            "entity_id": r["entity_id"],
            "data_location_id": r.get("data_location_id"),
            "old_status": _value(r.get("old_status")),
            "new_status": _value(r["new_status"]),
            "reason": r["reason"],
            "run_id": r.get("run_id"),
            "evidence": r.get("evidence"),
        }
        for r in rows
    ]
    session.execute(insert(AuditLog), values)
