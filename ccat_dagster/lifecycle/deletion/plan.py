"""What a cleanup would do now, and why, without changing anything: every rule's deletable and
blocked copies, bytes per location, permanent failures (``ccat deletion-plan``, a dry-run cycle).
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.deletion.claims import find_permanent_deletion_failures
from ccat_dagster.lifecycle.deletion.rules import (
    RULE_ORDER,
    BlockedCopy,
    DeletableCopy,
    RuleContext,
    any_deletable,
    dl_t,
    explain_blocked,
    find_closable_staged_raw_data_packages,
    find_deletable,
    rule_context,
)
from ccat_ops_db.models import (
    CopyType,
    DataLocation,
    qualified_location_name,
)


@dataclass
class DeletionPlan:
    """What a cleanup cycle would do now, and why; computing it changes nothing."""

    now: datetime
    deletable: list[DeletableCopy]
    blocked: list[BlockedCopy]
    staged_packages_to_close: list[DeletableCopy]
    permanent_failures: list[tuple[int, int, CopyType, int, str | None]]
    location_names: dict[int, str]

    @property
    def bytes_by_location(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for c in self.deletable:
            total[self.location_names[c.data_location_id]] += c.size or 0
        return dict(total)

    @property
    def count_by_rule(self) -> dict[str, int]:
        return dict(Counter(c.rule for c in self.deletable))

    @property
    def blocked_by_rule(self) -> dict[str, dict[str, int]]:
        """rule -> reason -> number of copies."""
        out: dict[str, Counter[str]] = {}
        for b in self.blocked:
            out.setdefault(b.rule, Counter())[b.reason] += 1
        return {rule: dict(reasons) for rule, reasons in out.items()}

    def summary(self) -> str:
        lines = [f"deletion plan at {self.now.isoformat()}"]
        for rule, n in sorted(self.count_by_rule.items()):
            lines.append(f"  deletable by {rule}: {n}")
        for loc, nbytes in sorted(self.bytes_by_location.items()):
            lines.append(f"  bytes to free at {loc}: {nbytes}")
        if self.staged_packages_to_close:
            lines.append(f"  STAGED package copies to close: {len(self.staged_packages_to_close)}")
        for rule, reasons in sorted(self.blocked_by_rule.items()):
            for reason, n in sorted(reasons.items()):
                lines.append(f"  blocked by {rule}: {n} ({reason})")
        for copy_id, loc, ctype, retries, reason in self.permanent_failures:
            lines.append(
                f"  PERMANENT FAILURE: {ctype.value} copy {copy_id} at "
                f"{self.location_names.get(loc, loc)} after {retries} attempts: {reason}"
            )
        return "\n".join(lines)


def location_names(session: Session) -> dict[int, str]:
    from ccat_ops_db.models import Site

    rows = session.execute(
        sa.select(dl_t.c.id, Site.short_name, dl_t.c.name).join(Site, Site.id == dl_t.c.site_id)
    )
    return {loc_id: qualified_location_name(site, name) for loc_id, site, name in rows}


@contextmanager
def _without_gc() -> Iterator[None]:
    """The cyclic garbage collector paused while a plan's result rows are built: they are
    hundreds of thousands of tuples and no cycles, and each generation-0 threshold crossed
    scanned them again (1M copies: 1.2-1.4 s of a 1.7-2.1 s client CPU; docs/performance.md)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def plan_deletions(
    session: Session,
    *,
    location: DataLocation | None = None,
    now: datetime | None = None,
    ctx: RuleContext | None = None,
    observer: str | None = None,
) -> DeletionPlan:
    """Every rule's deletable and blocked copies (two SELECTs per rule, whatever the row count);
    ``observer``: the site that would run the cleanup (what it cannot reach waits)."""
    ctx = ctx or rule_context(session, now=now, observer=observer)
    deletable: list[DeletableCopy] = []
    blocked: list[BlockedCopy] = []
    with _without_gc():
        for rule in RULE_ORDER:
            deletable += find_deletable(session, rule, location=location, ctx=ctx)
            blocked += explain_blocked(session, rule, location=location, ctx=ctx)
    return DeletionPlan(
        now=ctx.now,
        deletable=deletable,
        blocked=blocked,
        staged_packages_to_close=find_closable_staged_raw_data_packages(
            session, location=location, ctx=ctx
        ),
        permanent_failures=find_permanent_deletion_failures(
            session, policy=ctx.policy, location_id=location.id if location else None
        ),
        location_names=location_names(session),
    )


def has_deletable(
    session: Session,
    locations: Sequence[DataLocation],
    *,
    now: datetime | None = None,
    observer: str | None = None,
) -> bool:
    """Whether :func:`plan_deletions` would find anything deletable at any of ``locations``,
    stopping at the first rule that finds one (the question a schedule asks on every tick)."""
    ctx = rule_context(session, now=now, observer=observer)
    ids = [location.id for location in locations]
    return any(any_deletable(session, rule, ids, ctx=ctx) for rule in RULE_ORDER)
