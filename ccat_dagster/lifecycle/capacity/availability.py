"""Location availability: errors that belong to a location make it unavailable instead of failing
packages; it is probed with backoff and work resumes by itself when it answers again.

State is per observing site (``LocationAvailability``, one row per location and observer): the
site whose code met the error, because a link can be down while the location works locally. A
location error (``LocationUnavailableError``) marks the location unavailable from that site,
audited with entity_type ``data_location``; the next probe is due after a delay that doubles
with every consecutive failure (``PROBE_BACKOFF_BASE_SECONDS`` up to ``PROBE_BACKOFF_MAX_SECONDS``).
A probe looks at the location through the Storage interface (reachable, root a directory, a
probe object can be written and removed, free space below the policy's EMERGENCY level, not
empty while the catalogue records copies there); a passing probe marks it available again. A
full location (``LocationFullError``) still answers reads and deletions (deleting is what frees
it), so it blocks only work that writes there. No Dagster here.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.common.policy import Policy, get_policy
from ccat_dagster.storage.base import Storage
from ccat_dagster.storage.errors import LocationFullError, StorageError
from ccat_ops_db.audit import audit
from ccat_ops_db.models import (
    DataLocation,
    DiskDataLocation,
    LocationAvailability,
    LocationType,
    PhysicalCopy,
    PhysicalCopyStatus,
    Site,
    as_utc,
    qualified_location_name,
    table_of,
    utcnow,
)
from ccat_ops_db.results import count, rowcount
from ccat_ops_db.session import dialect_insert

#: first delay before re-probing an unavailable location; doubles per consecutive failure
PROBE_BACKOFF_BASE_SECONDS = 15
#: the delay never grows beyond this
PROBE_BACKOFF_MAX_SECONDS = 600
#: audit entity of availability changes
ENTITY = "data_location"
AVAILABLE = "AVAILABLE"
UNAVAILABLE = "UNAVAILABLE"
#: reason prefix of a location that answers but has no room: it blocks writes only
FULL_PREFIX = "no room for writes: "
#: object names of probes (written and removed at once; never a package key)
PROBE_PREFIX = ".ccat-probe-"


def probe_delay(consecutive_failures: int) -> timedelta:
    """How long to wait before the next probe after ``consecutive_failures`` failures (>= 1)."""
    exponent = max(consecutive_failures, 1) - 1
    seconds = PROBE_BACKOFF_BASE_SECONDS * 2 ** min(exponent, 32)
    return timedelta(seconds=min(seconds, PROBE_BACKOFF_MAX_SECONDS))


# --------------------------------------------------------------------------- state


@dataclass(frozen=True)
class UnavailableLocation:
    """A location that does not answer as seen from ``observer`` (what status screens show)."""

    location_id: int
    location: str  # site/name
    location_type: str
    observer: str
    since: datetime
    reason: str
    consecutive_failures: int
    last_probe_at: datetime | None
    next_probe_at: datetime | None

    @property
    def full(self) -> bool:
        """True when it answers but has no room: only writes there wait."""
        return self.reason.startswith(FULL_PREFIX)

    def describe(self) -> str:
        when = f"{self.since:%Y-%m-%d %H:%M:%S}Z"
        probe = (
            f"; next probe {self.next_probe_at:%H:%M:%S}Z" if self.next_probe_at is not None else ""
        )
        return f"unavailable from {self.observer or '?'} since {when}: {self.reason}{probe}"


def _view(row: LocationAvailability, site: str, name: str, kind: str) -> UnavailableLocation:
    return UnavailableLocation(
        location_id=row.data_location_id,
        location=qualified_location_name(site, name),
        location_type=kind,
        observer=row.observer,
        since=as_utc(row.since),
        reason=row.reason or "",
        consecutive_failures=row.consecutive_failures or 0,
        last_probe_at=as_utc(row.last_probe_at) if row.last_probe_at else None,
        next_probe_at=as_utc(row.next_probe_at) if row.next_probe_at else None,
    )


def unavailable_locations(
    session: Session, *, observer: str | None = None
) -> list[UnavailableLocation]:
    """Every location currently unavailable (from ``observer``, or from any site), oldest first."""
    stmt = (
        sa.select(LocationAvailability, Site.short_name, DataLocation.name, DataLocation)
        .join(DataLocation, DataLocation.id == LocationAvailability.data_location_id)
        .join(Site, Site.id == DataLocation.site_id)
        .where(LocationAvailability.available.is_(False))
        .order_by(LocationAvailability.since, Site.short_name, DataLocation.name)
        # bulk updates (make_probes_due, other processes) must show, not the identity map
        .execution_options(populate_existing=True)
    )
    if observer is not None:
        stmt = stmt.where(LocationAvailability.observer == observer)
    return [
        _view(row, site, name, loc.location_type.value)
        for row, site, name, loc in session.execute(stmt)
    ]


@dataclass(frozen=True)
class Needs:
    """The locations one work item uses: read, written (or both), and alternatives of which
    one readable is enough (staging reads from any verified archive copy)."""

    reads: tuple[int, ...] = ()
    writes: tuple[int, ...] = ()
    any_of_reads: tuple[int, ...] = ()


@dataclass
class Unavailability:
    """What one observer cannot use right now; answers "what does this item wait for"."""

    observer: str
    down: dict[int, UnavailableLocation] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.down)

    def blocks(self, location_id: int, *, write: bool) -> UnavailableLocation | None:
        row = self.down.get(location_id)
        if row is None or (row.full and not write):
            return None
        return row

    def waiting_for(self, needs: Needs) -> list[UnavailableLocation]:
        """The unavailable locations that keep an item with ``needs`` from running now."""
        blocking = [self.blocks(i, write=False) for i in needs.reads]
        blocking += [self.blocks(i, write=True) for i in needs.writes]
        alternatives = [self.blocks(i, write=False) for i in needs.any_of_reads]
        if alternatives and all(alternatives):
            blocking += alternatives
        seen: dict[int, UnavailableLocation] = {}
        for row in blocking:
            if row is not None:
                seen.setdefault(row.location_id, row)
        return list(seen.values())

    def add(self, row: UnavailableLocation) -> None:
        self.down[row.location_id] = row


def unavailability(session: Session, observer: str) -> Unavailability:
    """The locations unavailable from ``observer`` (one query)."""
    return Unavailability(
        observer, {u.location_id: u for u in unavailable_locations(session, observer=observer)}
    )


def describe_waits(rows: Iterable[UnavailableLocation]) -> str:
    return "; ".join(f"{r.location} {r.describe()}" for r in rows)


# --------------------------------------------------------------------------- changes


def location_for_error(session: Session, exc: StorageError) -> DataLocation | None:
    """The DataLocation a storage error names (``site/location``), None if it names none."""
    name = exc.location or ""
    site, sep, location = name.partition("/")
    if not sep or not site or not location or "/" in location:
        return None
    return session.scalar(
        sa.select(DataLocation)
        .join(Site, Site.id == DataLocation.site_id)
        .where(Site.short_name == site, DataLocation.name == location)
    )


def _row(session: Session, location: DataLocation, observer: str) -> LocationAvailability:
    """The (location, observer) row as the database holds it now, created if missing and locked
    until the caller commits (FOR UPDATE on PostgreSQL; on SQLite the insert took the write
    lock): runs failing on one location at once record it one after the other, each seeing
    what the one before wrote, instead of both creating the row (one failing) and both
    auditing the change."""
    session.execute(
        dialect_insert(session, LocationAvailability)
        .values(
            data_location_id=location.id,
            observer=observer,
            available=True,
            since=utcnow(),
            consecutive_failures=0,
        )
        .on_conflict_do_nothing()
    )
    return session.scalars(
        sa.select(LocationAvailability)
        .where(
            LocationAvailability.data_location_id == location.id,
            LocationAvailability.observer == observer,
        )
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()


def _audit(
    session: Session,
    location: DataLocation,
    old: str | None,
    new: str,
    reason: str,
    observer: str,
    failures: int,
    run_id: str | None,
) -> None:
    audit(
        session,
        entity_type=ENTITY,
        entity_id=location.id,
        old_status=old,
        new_status=new,
        reason=f"{reason} (seen from {observer or 'an unknown site'})",
        data_location_id=location.id,
        run_id=run_id,
        evidence={"observer": observer, "consecutive_failures": failures},
    )


def mark_unavailable(
    session: Session,
    location: DataLocation,
    *,
    observer: str,
    reason: str,
    full: bool = False,
    probed: bool = False,
    now: datetime | None = None,
    run_id: str | None = None,
) -> UnavailableLocation:
    """Record that ``location`` does not answer from ``observer``: one more consecutive
    failure, the next probe after the backoff delay; audited when it was available before.
    ``full``: it answers but has no room (blocks writes only). The caller commits."""
    now = now or utcnow()
    row = _row(session, location, observer)
    was_available = row.available is not False
    previous = row.consecutive_failures or 0
    if was_available and previous:
        # Back only briefly (a probe passed, the next write failed again, e.g. a disk with
        # room for the probe but not for the work): the backoff goes on growing.
        flapping = now - as_utc(row.since) < 2 * probe_delay(previous)
        previous = previous if flapping else 0
    failures = previous + 1
    text = f"{FULL_PREFIX}{reason}" if full and not reason.startswith(FULL_PREFIX) else reason
    if was_available:
        row.since = now
        _audit(session, location, AVAILABLE, UNAVAILABLE, text, observer, failures, run_id)
    row.available = False
    row.reason = text
    row.consecutive_failures = failures
    row.next_probe_at = now + probe_delay(failures)
    if probed:
        row.last_probe_at = now
    session.flush()
    return _view(row, location.site.short_name, location.name, location.location_type.value)


def mark_available(
    session: Session,
    location: DataLocation,
    *,
    observer: str,
    detail: str = "probe passed",
    now: datetime | None = None,
    run_id: str | None = None,
) -> bool:
    """Record that ``location`` answers again from ``observer``; True when that is a change
    (audited). The last reason and failure count stay on the row for the record (a failure
    soon after continues the backoff instead of starting it again). The caller commits."""
    now = now or utcnow()
    row = session.get(LocationAvailability, (location.id, observer), populate_existing=True)
    if row is None:
        return False
    changed = row.available is False
    if changed:
        _audit(session, location, UNAVAILABLE, AVAILABLE, detail, observer, 0, run_id)
        row.since = now
    row.available = True
    row.last_probe_at = now
    row.next_probe_at = None
    session.flush()
    return changed


def record_location_error(
    session: Session, exc: StorageError, *, observer: str, run_id: str | None = None
) -> UnavailableLocation | None:
    """Mark the location an error belongs to unavailable from ``observer`` and commit; None
    (nothing recorded) when the error names no known location."""
    location = location_for_error(session, exc)
    if location is None:
        return None
    row = mark_unavailable(
        session,
        location,
        observer=observer,
        reason=str(exc),
        full=isinstance(exc, LocationFullError),
        run_id=run_id,
    )
    session.commit()
    return row


def due_probes(
    session: Session, *, observer: str, now: datetime | None = None
) -> list[DataLocation]:
    """Active locations unavailable from ``observer`` whose next probe is due (few rows: in
    Python, so that naive SQLite timestamps compare correctly). A location switched off in the
    topology is not probed: no work waits for it any more."""
    now = now or utcnow()
    rows = session.execute(
        sa.select(LocationAvailability, DataLocation)
        .join(DataLocation, DataLocation.id == LocationAvailability.data_location_id)
        .join(Site, Site.id == DataLocation.site_id)
        .where(
            LocationAvailability.observer == observer,
            LocationAvailability.available.is_(False),
            DataLocation.active.is_(True),
            Site.active.is_(True),
        )
        .order_by(LocationAvailability.data_location_id)
        .execution_options(populate_existing=True)
    ).all()
    return [
        loc for row, loc in rows if row.next_probe_at is None or as_utc(row.next_probe_at) <= now
    ]


def make_probes_due(
    session: Session, *, observer: str | None = None, now: datetime | None = None
) -> int:
    """Make the probe of every unavailable location (from ``observer``, or every observer)
    due now, e.g. at the start of ``ccat run-until-idle``; returns how many. Commits."""
    table = table_of(LocationAvailability)
    stmt = (
        sa.update(table)
        .where(table.c.available.is_(False))
        .values(next_probe_at=now or utcnow())
        .execution_options(synchronize_session=False)
    )
    if observer is not None:
        stmt = stmt.where(table.c.observer == observer)
    due = rowcount(session.execute(stmt))
    session.commit()
    return due


# --------------------------------------------------------------------------- probing


@dataclass(frozen=True)
class ProbeResult:
    location: str
    ok: bool
    detail: str
    full: bool = False
    #: True when the probe changed the recorded state (unavailable -> available)
    recovered: bool = False


def _has_present_copies(session: Session, location: DataLocation) -> int:
    return count(
        session,
        sa.select(sa.func.count())
        .select_from(PhysicalCopy)
        .where(
            PhysicalCopy.data_location_id == location.id,
            PhysicalCopy.status == PhysicalCopyStatus.PRESENT,
        ),
    )


def probe_location(
    session: Session, location: DataLocation, storage: Storage, *, policy: Policy | None = None
) -> ProbeResult:
    """Look at ``location`` through ``storage`` as the observing site reaches it: reachable
    (disk root a directory, SSH host answering, S3 bucket there), a probe object can be written
    and removed (disk locations the pipeline writes to), not empty while the catalogue records
    PRESENT copies there (a mount that is gone), and, for disks, usage below the EMERGENCY level.
    Nothing is recorded here."""
    name = location.qualified_name
    policy = policy or get_policy(session)
    try:
        storage.stat(f"{PROBE_PREFIX}reachable")
        if isinstance(location, DiskDataLocation) and location.location_type != LocationType.SOURCE:
            key = f"{PROBE_PREFIX}{uuid.uuid4().hex}"
            storage.write_stream(key, io.BytesIO(b"ccat location probe\n"))
            storage.delete(key)
        copies = _has_present_copies(session, location)
        if copies and next(iter(storage.list()), None) is None:
            return ProbeResult(
                name,
                ok=False,
                detail=(
                    f"the location holds no objects although the catalogue records {copies} "
                    "PRESENT copies there (mount gone?)"
                ),
            )
        if isinstance(location, DiskDataLocation):
            usage = storage.disk_usage()
            emergency = policy.buffer_thresholds_percent.emergency
            if usage.percent >= emergency:
                return ProbeResult(
                    name,
                    ok=False,
                    full=True,
                    detail=(
                        f"disk {usage.percent:.1f}% used, at or above the EMERGENCY level "
                        f"({emergency}%); free space there"
                    ),
                )
    except LocationFullError as exc:
        return ProbeResult(name, ok=False, full=True, detail=str(exc))
    except StorageError as exc:
        return ProbeResult(name, ok=False, detail=str(exc))
    return ProbeResult(name, ok=True, detail="probe passed: reachable, writable, with room")


def probe_and_record(
    session: Session,
    location: DataLocation,
    storage: Storage,
    *,
    observer: str,
    policy: Policy | None = None,
    now: datetime | None = None,
    run_id: str | None = None,
) -> ProbeResult:
    """Probe ``location`` from ``observer`` and record the outcome (commits): available again,
    or one more failure and a later next probe."""
    now = now or utcnow()
    result = probe_location(session, location, storage, policy=policy)
    if result.ok:
        recovered = mark_available(
            session, location, observer=observer, detail=result.detail, now=now, run_id=run_id
        )
        result = ProbeResult(result.location, True, result.detail, recovered=recovered)
    else:
        mark_unavailable(
            session,
            location,
            observer=observer,
            reason=f"probe failed: {result.detail}",
            full=result.full,
            probed=True,
            now=now,
            run_id=run_id,
        )
    session.commit()
    return result


def probe_due_locations(
    session: Session,
    storage_for: Callable[[DataLocation], Storage],
    *,
    observer: str,
    now: datetime | None = None,
    run_id: str | None = None,
) -> list[tuple[DataLocation, ProbeResult]]:
    """Probe every location unavailable from ``observer`` whose probe is due."""
    policy = get_policy(session)
    results = []
    for location in due_probes(session, observer=observer, now=now):
        try:
            storage = storage_for(location)
        except StorageError as exc:
            result = ProbeResult(location.qualified_name, False, str(exc))
            mark_unavailable(
                session, location, observer=observer, reason=str(exc), probed=True, now=now
            )
            session.commit()
        else:
            result = probe_and_record(
                session, location, storage, observer=observer, policy=policy, now=now, run_id=run_id
            )
        results.append((location, result))
    return results


def waiting_items(
    items: Sequence[str], needs_of: Callable[[str], Needs], unavailable: Unavailability
) -> dict[str, list[UnavailableLocation]]:
    """item -> the unavailable locations it waits for, for the items that wait (no work at all
    when nothing is unavailable)."""
    if not unavailable:
        return {}
    waits = {}
    for item in items:
        blocking = unavailable.waiting_for(needs_of(item))
        if blocking:
            waits[item] = blocking
    return waits
