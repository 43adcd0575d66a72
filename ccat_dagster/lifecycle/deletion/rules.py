"""The deletion matrix (docs/lifecycle.md, row by row) as set-based SQL.

Each row of the matrix is one named rule (``RULE_*``: the name is the reason in the audit log),
built by a ``_rule_*`` function whose docstring is that row. :func:`find_deletable` returns
lightweight :class:`DeletableCopy` rows (never ORM objects) of the copies a rule allows to delete
*now*, optionally restricted to one location or one object, with one SQL statement regardless of
how many copies exist; :func:`explain_blocked` returns the copies the same rule refuses and why;
:func:`still_allowed` evaluates again, after the claim, the rules a user can make false again.
LONG_TERM_ARCHIVE locations are excluded by every rule; only PRESENT copies (STAGED where the
rule says so) ever count as evidence that data exists elsewhere. Retries of failed deletions and
claims abandoned by a crashed run re-enter through the same rules, so a rule is re-checked every
time a copy is about to be deleted. No Dagster, no storage I/O, no writes: this module only
decides (the matrix's side effect, ``mark_raw_data_files_for_deletion``, is done by
:mod:`ccat_dagster.lifecycle.deletion.executor` after a source-buffer package copy is deleted).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import ColumnElement, FunctionElement

from ccat_dagster.lifecycle.archive.repair import unusable_lta_copy
from ccat_dagster.lifecycle.capacity.availability import unavailable_locations
from ccat_dagster.lifecycle.capacity.buffer_policy import (
    latest_buffer_statuses,
    should_delete_based_on_buffer_status,
)
from ccat_dagster.lifecycle.common.chunks import chunks
from ccat_dagster.lifecycle.common.policy import Policy, get_policy
from ccat_ops_db.models import (
    CopyType,
    DataLocation,
    DataTransfer,
    DataTransferPackage,
    LocationType,
    PackageState,
    PhysicalCopy,
    PhysicalCopyStatus,
    RawDataFile,
    RawDataPackage,
    StagingJob,
    Status,
    named_alias,
    staging_job_raw_data_package,
    table_of,
    utcnow,
)

# --------------------------------------------------------------------------- rule names
# The rule name is the audit reason of every status change it causes.
RULE_RDP_SOURCE_BUFFER = "can_delete_raw_data_package_from_source_buffer"
RULE_RDP_LTA_BUFFER = "can_delete_raw_data_package_from_lta_buffer"
RULE_DTP_SOURCE_BUFFER = "can_delete_data_transfer_package_from_source_buffer"
RULE_DTP_LTA_BUFFER = "can_delete_data_transfer_package_from_lta_buffer"
RULE_DTP_RELAY_BUFFER = "can_delete_data_transfer_package_from_relay_buffer"
RULE_RDF_DELETION_POSSIBLE = "process_deletion_possible_raw_data_files"
RULE_RDF_PROCESSING = "find_deletable_processing_raw_data_files"
RULE_RDF_STAGED = "find_deletable_staged_raw_data_files_by_location"
RULE_RDP_STAGED_CLOSE = "staged_raw_data_package_cleanup"
RULE_MARK_DELETION_POSSIBLE = "mark_raw_data_files_for_deletion"

REASON_ARCHIVE_UNREACHABLE = (
    "an archive holding the package does not answer from this site; waiting for it"
)
REASON_REPAIR_PENDING = (
    "an archive copy of the package failed a live check (BAD or LOST) and waits for its repair"
)

#: A claim older than this is treated as abandoned by a crashed run and may be taken over.
DEFAULT_STALE_CLAIM_AFTER = timedelta(minutes=60)

pc_t = table_of(PhysicalCopy)
dl_t = table_of(DataLocation)
rdp_t = table_of(RawDataPackage)
dtp_t = table_of(DataTransferPackage)
rdf_t = table_of(RawDataFile)
dt_t = table_of(DataTransfer)
sj_t = table_of(StagingJob)
sjp_t = staging_job_raw_data_package

S = PhysicalCopyStatus
_LTA = LocationType.LONG_TERM_ARCHIVE
_CLAIMED = (S.DELETION_SCHEDULED, S.DELETION_IN_PROGRESS)


class DeletableCopy(NamedTuple):
    """One copy a rule allows to delete now (or, in a plan, would allow)."""

    copy_id: int
    copy_type: CopyType
    data_location_id: int
    entity_id: int  # the RawDataFile / RawDataPackage / DataTransferPackage id
    raw_data_package_id: int | None  # the package itself, or the file's package
    name: str
    key: str  # the object key at the location: the entity's relative_path
    size: int | None
    status: PhysicalCopyStatus
    rule: str


class BlockedCopy(NamedTuple):
    """One copy a rule refuses to delete now, and why."""

    copy_id: int
    copy_type: CopyType
    data_location_id: int
    entity_id: int
    name: str
    status: PhysicalCopyStatus
    rule: str
    reason: str


@dataclass(frozen=True)
class RuleContext:
    """Everything the rules read besides the copies: the clock, the policy and buffer pressure.

    Built once per cycle so every rule of one cycle decides against the same ``now``.
    """

    now: datetime
    policy: Policy
    stale_claim_after: timedelta = DEFAULT_STALE_CLAIM_AFTER
    #: locations whose latest buffer status is CRITICAL or worse (delete DELETION_POSSIBLE now)
    pressured_location_ids: frozenset[int] = field(default_factory=frozenset)
    #: locations that do not answer from the site running the cycle: a deletion that must
    #: first check an archive there waits instead of failing every cycle
    unreachable_location_ids: frozenset[int] = field(default_factory=frozenset)

    @property
    def stale_cutoff(self) -> datetime:
        return self.now - self.stale_claim_after


def rule_context(
    session: Session,
    *,
    now: datetime | None = None,
    policy: Policy | None = None,
    stale_claim_after: timedelta = DEFAULT_STALE_CLAIM_AFTER,
    observer: str | None = None,
) -> RuleContext:
    """The context of one cycle: policy from the ops DB, latest buffer status per location,
    and (with ``observer``, the site running the cycle) the locations that do not answer from
    there."""
    policy = policy or get_policy(session)
    now = now or utcnow()
    statuses = latest_buffer_statuses(session, policy=policy)
    locations = session.execute(sa.select(dl_t.c.id, dl_t.c.location_type)).all()
    pressured = frozenset(
        loc_id
        for loc_id, loc_type in locations
        if should_delete_based_on_buffer_status(loc_type, statuses.get(loc_id))
    )
    unreachable = (
        frozenset(
            row.location_id
            for row in unavailable_locations(session, observer=observer)
            if not row.full  # a full disk still answers reads
        )
        if observer is not None
        else frozenset()
    )
    return RuleContext(
        now=now,
        policy=policy,
        stale_claim_after=stale_claim_after,
        pressured_location_ids=pressured,
        unreachable_location_ids=unreachable,
    )


# --------------------------------------------------------------------------- SQL helpers


class minutes_after(FunctionElement):
    """``timestamp + minutes`` on both backends (PostgreSQL interval, SQLite strftime)."""

    type = sa.DateTime(timezone=True)
    name = "minutes_after"
    inherit_cache = True


@compiles(minutes_after)
def _minutes_after_pg(element: minutes_after, compiler: Any, **kw: Any) -> str:
    ts, minutes = list(element.clauses)
    return (
        f"({compiler.process(ts, **kw)} + make_interval(mins => "
        f"CAST({compiler.process(minutes, **kw)} AS INTEGER)))"
    )


@compiles(minutes_after, "sqlite")
def _minutes_after_sqlite(element: minutes_after, compiler: Any, **kw: Any) -> str:
    # SQLAlchemy stores SQLite datetimes as 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC, no offset);
    # strftime keeps that layout, so the result compares correctly as text.
    ts, minutes = list(element.clauses)
    return (
        f"strftime('%Y-%m-%d %H:%M:%f', {compiler.process(ts, **kw)}, "
        f"'+' || ({compiler.process(minutes, **kw)}) || ' minutes')"
    )


def _active_sites_with(location_type: LocationType) -> sa.Select:
    # a subquery of its own, never correlated with the statement it is used in (which may read
    # data_location too), so one shared alias serves every use
    loc = named_alias(dl_t, "active_site_location")
    return (
        sa.select(loc.c.site_id)
        .where(loc.c.location_type == location_type, loc.c.active == sa.true())
        .correlate(None)
    )


def source_site_ids() -> sa.Select:
    """Sites with an active SOURCE location."""
    return _active_sites_with(LocationType.SOURCE)


def lta_site_ids() -> sa.Select:
    """Sites with an active LONG_TERM_ARCHIVE location."""
    return _active_sites_with(_LTA)


def retry_or_stale(pc: Any, ctx: RuleContext) -> ColumnElement[bool]:
    """A failed deletion with retries left, or a claim abandoned by a crashed run (older than
    the stale timeout, or released at once because its run is known dead: ``claimed_by`` NULL)."""
    return sa.or_(
        sa.and_(pc.c.status == S.DELETION_FAILED, pc.c.retry_count < ctx.policy.max_retries),
        sa.and_(pc.c.status.in_(_CLAIMED), pc.c.claimed_at < ctx.stale_cutoff),
        sa.and_(pc.c.status.in_(_CLAIMED), pc.c.claimed_by.is_(None)),
    )


def _candidate(pc: Any, ctx: RuleContext, *statuses: PhysicalCopyStatus) -> ColumnElement[bool]:
    return sa.or_(pc.c.status.in_(statuses), retry_or_stale(pc, ctx))


def _present_copy_of_package(
    package_id: Any, *, at: Callable[[Any], ColumnElement[bool]], verified: bool
) -> sa.Exists:
    """EXISTS a PRESENT RawDataPackage copy of ``package_id`` at a location matching ``at``."""
    pc2 = named_alias(pc_t, "evidence_copy")
    dl2 = named_alias(dl_t, "evidence_location")
    conditions = [
        pc2.c.type == CopyType.RAW_DATA_PACKAGE,
        pc2.c.raw_data_package_id == package_id,
        pc2.c.status == S.PRESENT,
        at(dl2),
    ]
    if verified:
        conditions.append(pc2.c.verified_at.is_not(None))
    return (
        sa.exists()
        .where(dl2.c.id == pc2.c.data_location_id, *conditions)
        .correlate_except(pc2, dl2)
    )


def _archive_unreachable(package_id: Any, ctx: RuleContext) -> ColumnElement[bool]:
    """A PRESENT archive copy of the package sits where this site cannot reach now: the live
    check before the deletion would fail, so the rule waits (no failing cycle after cycle)."""
    if not ctx.unreachable_location_ids:
        return sa.false()
    return _present_copy_of_package(
        package_id,
        at=lambda d: sa.and_(
            d.c.location_type == _LTA, d.c.id.in_(sorted(ctx.unreachable_location_ids))
        ),
        verified=False,
    )


def _completed_transfer(dtp_id: Any, *conditions: Any) -> sa.Exists:
    dt = named_alias(dt_t, "done_transfer")
    return (
        sa.exists()
        .where(
            dt.c.data_transfer_package_id == dtp_id,
            dt.c.status == Status.COMPLETED,
            dt.c.unpack_status == Status.COMPLETED,
            *[c(dt) for c in conditions],
        )
        .correlate_except(dt)
    )


def _live_staging_job(package_id: Any, location_id: Any) -> sa.Exists:
    """EXISTS an active StagingJob to ``location_id`` for ``package_id``. Staged files stay
    while any job using them is active, whatever its retention (PROCESSING files go once
    every StagingJob using them has ``active=False``); a job's retention is only the date its
    requester expects to be done by
    (:func:`ccat_dagster.lifecycle.staging.requests.retention_ends_at`)."""
    return (
        sa.exists()
        .where(
            sjp_t.c.staging_job_id == sj_t.c.id,
            sjp_t.c.raw_data_package_id == package_id,
            sj_t.c.destination_location_id == location_id,
            sj_t.c.active == sa.true(),
        )
        .correlate_except(sj_t, sjp_t)
    )


def _text(prefix: str, column: Any) -> ColumnElement[str]:
    return sa.literal(prefix, sa.String) + sa.cast(column, sa.String)


# --------------------------------------------------------------------------- rule definitions


@dataclass(frozen=True)
class _Rule:
    """A matrix row as SQL: the copies it looks at, the condition that allows deletion, and the
    reason shown for the copies it refuses."""

    name: str
    copy_type: CopyType
    select_from: Any
    entity: Any  # the table whose id/name/relative_path identify the copy's object
    package_id: Any
    base: list[ColumnElement[bool]]
    allow: ColumnElement[bool]
    reason: ColumnElement[str]


def _columns(rule: _Rule, pc: Any) -> list[Any]:
    return [
        pc.c.id,
        pc.c.type,
        pc.c.data_location_id,
        rule.entity.c.id,
        rule.package_id,
        rule.entity.c.name,
        rule.entity.c.relative_path,
        sa.func.coalesce(pc.c.size, rule.entity.c.size),
        pc.c.status,
    ]


def _copies(pc: Any, dl: Any, copy_type: CopyType, location_types: Iterable[LocationType]):
    return [
        pc.c.type == copy_type,
        dl.c.location_type.in_(list(location_types)),
        # Belt and braces: no rule ever looks at a LONG_TERM_ARCHIVE copy.
        dl.c.location_type != _LTA,
    ]


def _rule_rdp_source_buffer(ctx: RuleContext) -> _Rule:
    """RawDataPackage | SOURCE Buffer | Exists in LTA DataLocation | >=1 LTA DataLocation copy with
    PRESENT status.

    A copy at a BUFFER of a SOURCE site is deletable when the package state is ARCHIVED and a
    PRESENT (verified) copy exists in at least one LONG_TERM_ARCHIVE location -- an LTA-site
    buffer does not count -- and no archive copy of the package is BAD or LOST (a repair is
    pending). Side effect at deletion time: mark_raw_data_files_for_deletion.
    """
    pc, dl, rdp = named_alias(pc_t, "pc"), named_alias(dl_t, "dl"), named_alias(rdp_t, "rdp")
    in_lta = _present_copy_of_package(
        rdp.c.id, at=lambda d: d.c.location_type == _LTA, verified=True
    )
    same_site_lta = _present_copy_of_package(
        rdp.c.id,
        at=lambda d: sa.and_(d.c.location_type == _LTA, d.c.site_id == dl.c.site_id),
        verified=True,
    )
    archived = rdp.c.state == PackageState.ARCHIVED
    repair_pending = unusable_lta_copy(rdp.c.id)
    unreachable = _archive_unreachable(rdp.c.id, ctx)
    return _Rule(
        name=RULE_RDP_SOURCE_BUFFER,
        copy_type=CopyType.RAW_DATA_PACKAGE,
        select_from=pc.join(dl, dl.c.id == pc.c.data_location_id).join(
            rdp, rdp.c.id == pc.c.raw_data_package_id
        ),
        entity=rdp,
        package_id=rdp.c.id,
        base=[
            *_copies(pc, dl, CopyType.RAW_DATA_PACKAGE, [LocationType.BUFFER]),
            dl.c.site_id.in_(source_site_ids()),
            _candidate(pc, ctx, S.PRESENT),
        ],
        allow=sa.and_(
            archived,
            in_lta,
            # A site that is SOURCE and LTA at once: its buffer also waits for its own LTA.
            sa.or_(dl.c.site_id.not_in(lta_site_ids()), same_site_lta),
            ~repair_pending,
            ~unreachable,
        ),
        reason=sa.case(
            (~archived, _text("package state is not ARCHIVED: ", rdp.c.state)),
            (~in_lta, sa.literal("no PRESENT, verified copy in any LONG_TERM_ARCHIVE location")),
            (repair_pending, sa.literal(REASON_REPAIR_PENDING)),
            (unreachable, sa.literal(REASON_ARCHIVE_UNREACHABLE)),
            else_=sa.literal("not yet PRESENT, verified in this site's LONG_TERM_ARCHIVE"),
        ),
    )


def _rule_rdp_lta_buffer(ctx: RuleContext) -> _Rule:
    """RawDataPackage | LTA Site Buffer | Exists in same site's LTA DataLocation | Same site LTA
    DataLocation copy with PRESENT status.

    A copy at a BUFFER of an LTA site is deletable when a PRESENT (verified) copy exists in the
    LONG_TERM_ARCHIVE location of the same site and no archive copy of the package is BAD or
    LOST.
    """
    pc, dl, rdp = named_alias(pc_t, "pc"), named_alias(dl_t, "dl"), named_alias(rdp_t, "rdp")
    same_site_lta = _present_copy_of_package(
        rdp.c.id,
        at=lambda d: sa.and_(d.c.location_type == _LTA, d.c.site_id == dl.c.site_id),
        verified=True,
    )
    repair_pending = unusable_lta_copy(rdp.c.id)
    unreachable = _archive_unreachable(rdp.c.id, ctx)
    return _Rule(
        name=RULE_RDP_LTA_BUFFER,
        copy_type=CopyType.RAW_DATA_PACKAGE,
        select_from=pc.join(dl, dl.c.id == pc.c.data_location_id).join(
            rdp, rdp.c.id == pc.c.raw_data_package_id
        ),
        entity=rdp,
        package_id=rdp.c.id,
        base=[
            *_copies(pc, dl, CopyType.RAW_DATA_PACKAGE, [LocationType.BUFFER]),
            dl.c.site_id.in_(lta_site_ids()),
            dl.c.site_id.not_in(source_site_ids()),
            _candidate(pc, ctx, S.PRESENT),
        ],
        allow=sa.and_(same_site_lta, ~repair_pending, ~unreachable),
        reason=sa.case(
            (repair_pending, sa.literal(REASON_REPAIR_PENDING)),
            (unreachable, sa.literal(REASON_ARCHIVE_UNREACHABLE)),
            else_=sa.literal(
                "not yet PRESENT, verified in the LONG_TERM_ARCHIVE location of the same site"
            ),
        ),
    )


def _rule_dtp_source_buffer(ctx: RuleContext) -> _Rule:
    """DataTransferPackage | SOURCE Buffer | Verified at LTA site buffer | Completed transfer +
    unpack to >=1 LTA site.

    Deletable when a DataTransfer of the bundle to an LTA site is COMPLETED with unpack_status
    COMPLETED -- from this buffer, or onwards from a relay site's buffer (a RELAY route) -- and
    every DataTransfer of the bundle from this buffer is done: COMPLETED and unpacked, or, for a
    hop to a relay site without an archive (never unpacked there), COMPLETED. A pending or
    failed one keeps the copy: it may still need to be sent.
    """
    return _forwarded_bundle_rule(
        RULE_DTP_SOURCE_BUFFER, ctx, lambda dl: dl.c.site_id.in_(source_site_ids()), at_source=True
    )


def _rule_dtp_relay_buffer(ctx: RuleContext) -> _Rule:
    """DataTransferPackage | BUFFER of a relay site (neither a source nor an LTA site) |
    Forwarded to the destination | Completed transfer + unpack to >=1 LTA site.

    A RELAY route leaves the bundle in the relay site's buffer, where nothing unpacks it;
    deletable on the same condition as at a source buffer: the bundle was unpacked at an LTA
    site and every DataTransfer of it from this buffer is done.
    """
    return _forwarded_bundle_rule(
        RULE_DTP_RELAY_BUFFER,
        ctx,
        lambda dl: sa.and_(
            dl.c.site_id.not_in(source_site_ids()), dl.c.site_id.not_in(lta_site_ids())
        ),
        at_source=False,
    )


def _forwarded_bundle_rule(
    name: str,
    ctx: RuleContext,
    sites: Callable[[Any], ColumnElement[bool]],
    *,
    at_source: bool,
) -> _Rule:
    """A bundle copy at a buffer that forwards it (a source or relay site's): it goes once the
    data is unpacked at an LTA site and every transfer from this buffer is done."""
    pc, dl, dtp = named_alias(pc_t, "pc"), named_alias(dl_t, "dl"), named_alias(dtp_t, "dtp")
    dest = named_alias(dl_t, "dest")
    to_lta_site = _completed_transfer(
        dtp.c.id,
        lambda dt: (
            sa.exists()
            .where(dest.c.id == dt.c.destination_location_id, dest.c.site_id.in_(lta_site_ids()))
            .correlate_except(dest)
        ),
    )
    other, other_dest = named_alias(dt_t, "any_transfer"), named_alias(dl_t, "any_destination")
    # a hop to a site without an archive (a relay) is never unpacked: arrived is done
    unpacked_or_relayed = sa.or_(
        other.c.unpack_status == Status.COMPLETED,
        sa.exists()
        .where(
            other_dest.c.id == other.c.destination_location_id,
            other_dest.c.site_id.not_in(lta_site_ids()),
        )
        .correlate_except(other_dest),
    )
    unfinished = (
        sa.exists()
        .where(
            other.c.data_transfer_package_id == dtp.c.id,
            other.c.origin_location_id == pc.c.data_location_id,
            sa.or_(other.c.status != Status.COMPLETED, ~unpacked_or_relayed),
        )
        .correlate_except(other)
    )
    return _Rule(
        name=name,
        copy_type=CopyType.DATA_TRANSFER_PACKAGE,
        select_from=pc.join(dl, dl.c.id == pc.c.data_location_id).join(
            dtp, dtp.c.id == pc.c.data_transfer_package_id
        ),
        entity=dtp,
        package_id=sa.null(),
        base=[
            *_copies(pc, dl, CopyType.DATA_TRANSFER_PACKAGE, [LocationType.BUFFER]),
            sites(dl),
            _candidate(pc, ctx, S.PRESENT),
        ],
        allow=sa.and_(to_lta_site, ~unfinished),
        reason=sa.case(
            (~to_lta_site, sa.literal("no COMPLETED, unpacked DataTransfer to an LTA site yet")),
            else_=sa.literal(
                "a DataTransfer from this buffer is not yet COMPLETED and unpacked"
                if at_source
                else "a DataTransfer from this relay buffer is not yet COMPLETED"
            ),
        ),
    )


def _rule_dtp_lta_buffer(ctx: RuleContext) -> _Rule:
    """DataTransferPackage | LTA Site Buffer | Replicated to all other LTA sites | Completed
    transfers to all LTA sites.

    Deletable when it was unpacked here and a DataTransfer to every OTHER active LTA site (the
    secondary routes the routing expects) is COMPLETED with unpack_status COMPLETED.
    """
    pc, dl, dtp = named_alias(pc_t, "pc"), named_alias(dl_t, "dl"), named_alias(dtp_t, "dtp")
    unpacked_here = _completed_transfer(
        dtp.c.id, lambda dt: dt.c.destination_location_id == pc.c.data_location_id
    )
    other_lta = named_alias(dl_t, "other_lta")
    dest = named_alias(dl_t, "dest")
    # Every other active LTA site is a destination the routing expects (secondary routes).
    missing_site = (
        sa.exists()
        .where(
            other_lta.c.location_type == _LTA,
            other_lta.c.active == sa.true(),
            other_lta.c.site_id != dl.c.site_id,
            ~_completed_transfer(
                dtp.c.id,
                lambda dt: (
                    sa.exists()
                    .where(
                        dest.c.id == dt.c.destination_location_id,
                        dest.c.site_id == other_lta.c.site_id,
                    )
                    .correlate_except(dest)
                ),
            ),
        )
        .correlate_except(other_lta)
    )
    return _Rule(
        name=RULE_DTP_LTA_BUFFER,
        copy_type=CopyType.DATA_TRANSFER_PACKAGE,
        select_from=pc.join(dl, dl.c.id == pc.c.data_location_id).join(
            dtp, dtp.c.id == pc.c.data_transfer_package_id
        ),
        entity=dtp,
        package_id=sa.null(),
        base=[
            *_copies(pc, dl, CopyType.DATA_TRANSFER_PACKAGE, [LocationType.BUFFER]),
            dl.c.site_id.in_(lta_site_ids()),
            dl.c.site_id.not_in(source_site_ids()),
            _candidate(pc, ctx, S.PRESENT),
        ],
        allow=sa.and_(unpacked_here, ~missing_site),
        reason=sa.case(
            (~unpacked_here, sa.literal("not yet unpacked at this buffer")),
            else_=sa.literal("not yet transferred and unpacked at every other active LTA site"),
        ),
    )


def _rule_rdf_deletion_possible(ctx: RuleContext) -> _Rule:
    """RawDataFile | SOURCE/BUFFER | Parent package deleted + retention/buffer rules |
    DELETION_POSSIBLE status + policy compliance.

    Stage 2 of the two-stage deletion: a DELETION_POSSIBLE copy is deletable once the retention
    period (the location's override, else the policy's retention_period_minutes) has passed since
    it became DELETION_POSSIBLE (its ``updated_at``), or at once while the location's latest buffer
    status is CRITICAL or worse (``should_delete_based_on_buffer_status``) -- and only while its
    package has a PRESENT, verified copy in a LONG_TERM_ARCHIVE and none that is BAD or LOST.
    The executor re-verifies those archive copies live before each deletion.
    """
    pc, dl, rdf = named_alias(pc_t, "pc"), named_alias(dl_t, "dl"), named_alias(rdf_t, "rdf")
    retention = sa.func.coalesce(dl.c.retention_period_minutes, ctx.policy.retention_period_minutes)
    # The retention clock starts when the copy became DELETION_POSSIBLE: physical_copy.updated_at,
    # which mark_raw_data_files_for_deletion sets and nothing else touches in that status.
    retention_over = minutes_after(pc.c.updated_at, retention) <= ctx.now
    pressured = dl.c.id.in_(sorted(ctx.pressured_location_ids))
    package = rdf.c.raw_data_package_id
    # The raw file is the origin of everything: it goes only while the catalogue holds a
    # verified archive copy of its package and no archive copy of it waits for a repair (the
    # executor then re-verifies the archive copies live before deleting).
    in_lta = _present_copy_of_package(
        package, at=lambda d: d.c.location_type == _LTA, verified=True
    )
    repair_pending = unusable_lta_copy(package)
    unreachable = _archive_unreachable(package, ctx)
    return _Rule(
        name=RULE_RDF_DELETION_POSSIBLE,
        copy_type=CopyType.RAW_DATA_FILE,
        select_from=pc.join(dl, dl.c.id == pc.c.data_location_id).join(
            rdf, rdf.c.id == pc.c.raw_data_file_id
        ),
        entity=rdf,
        package_id=rdf.c.raw_data_package_id,
        base=[
            *_copies(pc, dl, CopyType.RAW_DATA_FILE, [LocationType.SOURCE, LocationType.BUFFER]),
            _candidate(pc, ctx, S.DELETION_POSSIBLE),
        ],
        allow=sa.and_(
            in_lta,
            ~repair_pending,
            ~unreachable,
            sa.or_(
                retry_or_stale(pc, ctx),
                sa.and_(pc.c.status == S.DELETION_POSSIBLE, sa.or_(retention_over, pressured)),
            ),
        ),
        reason=sa.case(
            (~in_lta, sa.literal("no PRESENT, verified copy of its package in any LTA")),
            (repair_pending, sa.literal(REASON_REPAIR_PENDING)),
            (unreachable, sa.literal(REASON_ARCHIVE_UNREACHABLE)),
            else_=_text("retention period not over (minutes: ", retention)
            + sa.literal(") and buffer pressure below CRITICAL"),
        ),
    )


def _staged_here(pc: Any, package_id: Any) -> sa.Exists:
    staged = named_alias(pc_t, "staged_copy")
    return (
        sa.exists()
        .where(
            staged.c.type == CopyType.RAW_DATA_PACKAGE,
            staged.c.raw_data_package_id == package_id,
            staged.c.data_location_id == pc.c.data_location_id,
            staged.c.status == S.STAGED,
        )
        .correlate_except(staged)
    )


def _rule_rdf_processing(ctx: RuleContext, *, staged: bool) -> _Rule:
    """RawDataFile | PROCESSING | No active staging jobs | All StagingJobs have active=False.

    A PRESENT file copy at a PROCESSING location (not part of a STAGED package there) is
    deletable when no active StagingJob to that location references the file's RawDataPackage
    (a job's retention does not matter: an active job keeps its files).

    With ``staged``, the STAGED variant (``find_deletable_staged_raw_data_files_by_location``):
    file copies at a PROCESSING location whose RawDataPackage copy there is STAGED and whose
    staging jobs are all inactive (whatever their retention). After they are deleted the STAGED
    package copy is marked DELETED (:func:`find_closable_staged_raw_data_packages`).
    """
    pc, dl, rdf = named_alias(pc_t, "pc"), named_alias(dl_t, "dl"), named_alias(rdf_t, "rdf")
    staged_here = _staged_here(pc, rdf.c.raw_data_package_id)
    return _Rule(
        name=RULE_RDF_STAGED if staged else RULE_RDF_PROCESSING,
        copy_type=CopyType.RAW_DATA_FILE,
        select_from=pc.join(dl, dl.c.id == pc.c.data_location_id).join(
            rdf, rdf.c.id == pc.c.raw_data_file_id
        ),
        entity=rdf,
        package_id=rdf.c.raw_data_package_id,
        base=[
            *_copies(pc, dl, CopyType.RAW_DATA_FILE, [LocationType.PROCESSING]),
            _candidate(pc, ctx, S.PRESENT),
            # Files of a STAGED package belong to the staged rule, the rest to this one.
            staged_here if staged else ~staged_here,
        ],
        allow=~_live_staging_job(rdf.c.raw_data_package_id, pc.c.data_location_id),
        reason=sa.literal("an active StagingJob still uses it (`ccat staging complete` frees it)"),
    )


_RULES: dict[str, Callable[[RuleContext], _Rule]] = {
    RULE_DTP_SOURCE_BUFFER: _rule_dtp_source_buffer,
    RULE_DTP_LTA_BUFFER: _rule_dtp_lta_buffer,
    RULE_DTP_RELAY_BUFFER: _rule_dtp_relay_buffer,
    RULE_RDP_SOURCE_BUFFER: _rule_rdp_source_buffer,
    RULE_RDP_LTA_BUFFER: _rule_rdp_lta_buffer,
    RULE_RDF_PROCESSING: lambda ctx: _rule_rdf_processing(ctx, staged=False),
    RULE_RDF_STAGED: lambda ctx: _rule_rdf_processing(ctx, staged=True),
    RULE_RDF_DELETION_POSSIBLE: _rule_rdf_deletion_possible,
}
#: The order of one cleanup cycle (docs/lifecycle.md: the deletion matrix).
RULE_ORDER: tuple[str, ...] = tuple(_RULES)
#: Rules whose condition a concurrent user action can make false again (see still_allowed).
RECHECKED_AFTER_CLAIM = frozenset({RULE_RDF_PROCESSING, RULE_RDF_STAGED})


def _location_id(location: DataLocation | int | None) -> int | None:
    return location if isinstance(location, int) or location is None else location.id


def _restrict(rule: _Rule, location: DataLocation | int | None, entity_id: int | None = None):
    pc = rule.select_from.left.left  # pc.join(dl).join(entity): the physical_copy alias
    where = list(rule.base)
    if entity_id is not None:
        where.append(rule.entity.c.id == entity_id)
    loc_id = _location_id(location)
    if loc_id is not None:
        where.append(pc.c.data_location_id == loc_id)
    return pc, where


def find_deletable(
    session: Session,
    rule_name: str,
    *,
    location: DataLocation | int | None = None,
    ctx: RuleContext | None = None,
    entity_id: int | None = None,
) -> list[DeletableCopy]:
    """The copies ``rule_name`` allows to delete now (one SELECT), optionally only at
    ``location`` and only of one object (``entity_id``: the package, bundle or file the rule
    looks at)."""
    ctx = ctx or rule_context(session)
    rule = _RULES[rule_name](ctx)
    pc, where = _restrict(rule, location, entity_id)
    stmt = (
        sa.select(*_columns(rule, pc))
        .select_from(rule.select_from)
        .where(*where, rule.allow)
        .order_by(pc.c.data_location_id, pc.c.id)
    )
    name = rule.name
    # fetchall and positional tuples: iterating the Result fetches row by row (1M copies: ~1 s)
    return [DeletableCopy._make((*row, name)) for row in session.execute(stmt).all()]


def any_deletable(
    session: Session, rule_name: str, location_ids: Sequence[int], *, ctx: RuleContext
) -> bool:
    """Whether ``rule_name`` allows deleting any copy at ``location_ids`` now: the rule built
    once for all of them and one SELECT of at most one row (a schedule asks this every tick)."""
    if not location_ids:
        return False
    rule = _RULES[rule_name](ctx)
    pc, where = _restrict(rule, None)
    stmt = (
        sa.select(pc.c.id)
        .select_from(rule.select_from)
        .where(*where, pc.c.data_location_id.in_(location_ids), rule.allow)
        .limit(1)
    )
    return session.execute(stmt).first() is not None


def still_allowed(
    session: Session, copies: Sequence[DeletableCopy], *, ctx: RuleContext
) -> set[int]:
    """Of ``copies`` (already claimed), the ids whose rule still allows deletion now.

    Between finding a processing file and claiming it a scientist may create a StagingJob that
    needs it; the processing rules' condition (no live StagingJob) is therefore evaluated again
    after the claim is committed, in one SELECT per rule. The other rules' conditions only grow
    true (a package does not leave the archive, a completed transfer stays completed) or depend
    on the copy's own status and clock, which the claim itself changed, so they pass through.
    """
    allowed: set[int] = {c.copy_id for c in copies if c.rule not in RECHECKED_AFTER_CLAIM}
    by_rule: dict[str, list[int]] = {}
    for c in copies:
        if c.rule in RECHECKED_AFTER_CLAIM:
            by_rule.setdefault(c.rule, []).append(c.copy_id)
    for rule_name, ids in by_rule.items():
        rule = _RULES[rule_name](ctx)
        pc = rule.select_from.left.left
        for chunk in chunks(ids):
            allowed.update(
                session.scalars(
                    sa.select(pc.c.id)
                    .select_from(rule.select_from)
                    .where(pc.c.id.in_(chunk), rule.allow)
                )
            )
    return allowed


def explain_blocked(
    session: Session,
    rule_name: str,
    *,
    location: DataLocation | int | None = None,
    ctx: RuleContext | None = None,
) -> list[BlockedCopy]:
    """The copies ``rule_name`` looks at but refuses now, each with the reason (one SELECT)."""
    ctx = ctx or rule_context(session)
    rule = _RULES[rule_name](ctx)
    pc, where = _restrict(rule, location)
    entity = rule.entity
    stmt = (
        sa.select(
            pc.c.id,
            pc.c.type,
            pc.c.data_location_id,
            entity.c.id,
            entity.c.name,
            pc.c.status,
            rule.reason,
        )
        .select_from(rule.select_from)
        .where(*where, ~rule.allow)
        .order_by(pc.c.data_location_id, pc.c.id)
    )
    rule_name = rule.name
    return [
        BlockedCopy(cid, ctype, loc, eid, name, status, rule_name, reason)
        for cid, ctype, loc, eid, name, status, reason in session.execute(stmt).all()
    ]


# --------------------------------------------------------------------------- closing STAGED copies


def find_closable_staged_raw_data_packages(
    session: Session,
    *,
    location: DataLocation | int | None = None,
    ctx: RuleContext | None = None,
) -> list[DeletableCopy]:
    """STAGED RawDataPackage copies at PROCESSING locations to mark DELETED: no live staging job
    uses them and none of the package's file copies there is left undeleted (the tar itself was
    removed when it was staged, so nothing is deleted from storage). ``ctx`` is accepted like
    every finder's, but no clock matters here: only whether a job is active."""
    pc, dl, rdp = named_alias(pc_t, "pc"), named_alias(dl_t, "dl"), named_alias(rdp_t, "rdp")
    files, rdf = named_alias(pc_t, "file_copy"), named_alias(rdf_t, "rdf")
    undeleted_file = (
        sa.exists()
        .where(
            files.c.type == CopyType.RAW_DATA_FILE,
            files.c.data_location_id == pc.c.data_location_id,
            files.c.status != S.DELETED,
            files.c.raw_data_file_id == rdf.c.id,
            rdf.c.raw_data_package_id == rdp.c.id,
        )
        .correlate_except(files, rdf)
    )
    where = [
        pc.c.type == CopyType.RAW_DATA_PACKAGE,
        pc.c.status == S.STAGED,
        dl.c.location_type == LocationType.PROCESSING,
        ~_live_staging_job(rdp.c.id, pc.c.data_location_id),
        ~undeleted_file,
    ]
    loc_id = _location_id(location)
    if loc_id is not None:
        where.append(pc.c.data_location_id == loc_id)
    stmt = (
        sa.select(
            pc.c.id,
            pc.c.type,
            pc.c.data_location_id,
            rdp.c.id,
            rdp.c.id,
            rdp.c.name,
            rdp.c.relative_path,
            sa.literal(0, sa.BigInteger),
            pc.c.status,
        )
        .select_from(
            pc.join(dl, dl.c.id == pc.c.data_location_id).join(
                rdp, rdp.c.id == pc.c.raw_data_package_id
            )
        )
        .where(*where)
        .order_by(pc.c.id)
    )
    return [DeletableCopy(*row, rule=RULE_RDP_STAGED_CLOSE) for row in session.execute(stmt)]


def group_by_location(rows: Iterable[DeletableCopy]) -> dict[int, list[DeletableCopy]]:
    grouped: dict[int, list[DeletableCopy]] = {}
    for row in rows:
        grouped.setdefault(row.data_location_id, []).append(row)
    return grouped
