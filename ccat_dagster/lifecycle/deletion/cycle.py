"""The cleanup cycle: every rule of the deletion matrix in the order of docs/lifecycle.md
(transfer packages, raw data packages, processing files, staged files, DELETION_POSSIBLE files),
each rule's copies handed to :mod:`ccat_dagster.lifecycle.deletion.executor`, then the STAGED
package copies whose files are all gone closed. A dry run only computes the plan
(:mod:`ccat_dagster.lifecycle.deletion.plan`) and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.archive.verification import VerifyLtaCopy
from ccat_dagster.lifecycle.common.chunks import chunks
from ccat_dagster.lifecycle.deletion.claims import find_permanent_deletion_failures
from ccat_dagster.lifecycle.deletion.executor import (
    DEFAULT_BATCH_SIZE,
    CleanupReport,
    CycleState,
    execute_deletions,
)
from ccat_dagster.lifecycle.deletion.plan import plan_deletions
from ccat_dagster.lifecycle.deletion.rules import (
    RULE_ORDER,
    RULE_RDF_STAGED,
    RULE_RDP_STAGED_CLOSE,
    DeletableCopy,
    RuleContext,
    find_closable_staged_raw_data_packages,
    find_deletable,
    pc_t,
    rule_context,
)
from ccat_dagster.storage.base import Storage
from ccat_ops_db.audit import audit_many
from ccat_ops_db.models import (
    DataLocation,
    PhysicalCopyStatus,
)

S = PhysicalCopyStatus


def close_staged_packages(
    session: Session, *, run_id: str, ctx: RuleContext, location: DataLocation | None = None
) -> int:
    """Mark STAGED package copies DELETED once their files are gone (conditional bulk UPDATE,
    so a concurrent run cannot close one twice)."""
    rows = find_closable_staged_raw_data_packages(session, location=location, ctx=ctx)
    closed: list[DeletableCopy] = []
    by_id = {r.copy_id: r for r in rows}
    for chunk in chunks(list(by_id)):
        got = session.scalars(
            sa.update(pc_t)
            .where(pc_t.c.id.in_(chunk), pc_t.c.status == S.STAGED)
            .values(status=S.DELETED, deleted_at=ctx.now, claimed_by=run_id)
            .returning(pc_t.c.id)
        ).all()
        closed.extend(by_id[i] for i in got)
    audit_many(
        session,
        [
            {
                "entity_type": "physical_copy",
                "entity_id": c.copy_id,
                "data_location_id": c.data_location_id,
                "old_status": S.STAGED,
                "new_status": S.DELETED,
                "reason": RULE_RDP_STAGED_CLOSE,
                "run_id": run_id,
                # the tar was removed when it was staged: this row holds no bytes
                "evidence": {
                    "rule": RULE_RDP_STAGED_CLOSE,
                    "files": "all deleted",
                    "last_copy_outside_lta": False,
                },
            }
            for c in closed
        ],
    )
    session.commit()
    return len(closed)


def run_cleanup_cycle(
    session_factory_or_session: Session | Callable[[], Session],
    *,
    storage_for: Callable[[DataLocation], Storage],
    verify_lta_copy: VerifyLtaCopy,
    run_id: str,
    location: DataLocation | None = None,
    dry_run: bool = False,
    now: datetime | None = None,
    stale_claim_after: Any = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    observer: str | None = None,
) -> CleanupReport:
    """One cleanup cycle over every rule (or only ``location``'s copies).

    With a Session it commits on it; with a factory it opens and closes its own. ``dry_run``
    computes the plan and changes nothing (no claims, no storage calls, no verification).
    """
    own = not isinstance(session_factory_or_session, Session)
    session = session_factory_or_session() if own else session_factory_or_session
    try:
        kwargs = {"stale_claim_after": stale_claim_after} if stale_claim_after else {}
        ctx = rule_context(session, now=now, observer=observer, **kwargs)
        report = CleanupReport(run_id=run_id, dry_run=dry_run)
        if location is not None:
            location = session.get(DataLocation, location.id)
        if dry_run:
            report.plan = plan_deletions(session, location=location, ctx=ctx)
            report.permanent_failures = report.plan.permanent_failures
            session.rollback()
            return report
        cycle = CycleState(
            session,
            storage_for=storage_for,
            verify_lta_copy=verify_lta_copy,
            run_id=run_id,
            ctx=ctx,
            report=report,
            batch_size=batch_size,
        )
        # Storages come from the caller (possibly shared resources): the caller closes them.
        for rule in RULE_ORDER:
            rows = find_deletable(session, rule, location=location, ctx=ctx)
            session.commit()
            execute_deletions(
                session,
                rows,
                storage_for=storage_for,
                verify_lta_copy=verify_lta_copy,
                run_id=run_id,
                ctx=ctx,
                report=report,
                _cycle=cycle,
            )
            if rule == RULE_RDF_STAGED:
                report.staged_packages_closed += close_staged_packages(
                    session, run_id=run_id, ctx=ctx, location=location
                )
        report.permanent_failures = find_permanent_deletion_failures(
            session, policy=ctx.policy, location_id=location.id if location else None
        )
        session.commit()
        return report
    except BaseException:
        session.rollback()
        raise
    finally:
        if own:
            session.close()
