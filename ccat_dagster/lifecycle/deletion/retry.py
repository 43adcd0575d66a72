"""Give permanently failed deletions their retries back after an operator fixed the cause
(``ccat retry``).

A copy whose deletion failed ``max_retries`` times stays DELETION_FAILED, out of every cleanup,
until someone looks (a permission, a missing mount, an unreachable host). Resetting its
``retry_count`` to 0 makes it a candidate of the deletion rules again (``retry_or_stale``): the
next cleanup evaluates it like any other copy, through the claims, the re-check and the
last-copy gate, and deletes it only if the rules still allow it. Nothing here deletes anything
or changes a status; every reset is in the audit log, with the attempts and the last failure.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.common.chunks import chunks
from ccat_dagster.lifecycle.common.policy import Policy, get_policy
from ccat_dagster.lifecycle.deletion.claims import find_permanent_deletion_failures
from ccat_dagster.lifecycle.deletion.plan import location_names
from ccat_dagster.lifecycle.deletion.rules import pc_t
from ccat_ops_db.audit import audit_many
from ccat_ops_db.models import DataLocation, PhysicalCopyStatus

S = PhysicalCopyStatus
REASON = "deletion retries reset by an operator (ccat retry)"


def retry_failed_deletions(
    session: Session,
    *,
    location: DataLocation | None = None,
    policy: Policy | None = None,
    run_id: str | None = None,
    reset_by: str | None = None,
) -> dict[str, int]:
    """Reset ``retry_count`` of every permanently failed deletion (at ``location``, or
    everywhere); returns how many per location (``site/name``). The caller commits."""
    policy = policy or get_policy(session)
    failures = find_permanent_deletion_failures(
        session, policy=policy, location_id=location.id if location else None
    )
    if not failures:
        return {}
    for chunk in chunks([copy_id for copy_id, *_ in failures]):
        # Only rows still permanently failed: a copy reset meanwhile by another `ccat retry`
        # keeps the attempts a cleanup made since.
        session.execute(
            sa.update(pc_t)
            .where(
                pc_t.c.id.in_(chunk),
                pc_t.c.status == S.DELETION_FAILED,
                pc_t.c.retry_count >= policy.max_retries,
            )
            .values(retry_count=0)
            .execution_options(synchronize_session=False)
        )
    rows: list[dict[str, Any]] = [
        {
            "entity_type": "physical_copy",
            "entity_id": copy_id,
            "data_location_id": location_id,
            "old_status": S.DELETION_FAILED,
            "new_status": S.DELETION_FAILED,
            "reason": REASON,
            "run_id": run_id,
            "evidence": {
                "retry_count": 0,
                "attempts": attempts,
                "failure_reason": failure_reason,
                "copy_type": copy_type.value,
                "reset_by": reset_by,
            },
        }
        for copy_id, location_id, copy_type, attempts, failure_reason in failures
    ]
    audit_many(session, rows)
    names = location_names(session)
    return dict(Counter(names.get(loc_id, str(loc_id)) for _, loc_id, *_ in failures))


__all__ = ["retry_failed_deletions"]
