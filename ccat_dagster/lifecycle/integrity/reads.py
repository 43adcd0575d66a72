"""Reading copies back for ``ccat verify``: every copy the catalogue says holds data at a checked
location (PRESENT, and DELETION_POSSIBLE raw-file copies, which are still on disk) is stat'ed
for existence and size, and the sampled ones are read in full and checksummed through the
Storage interface (``Storage.checksum`` streams the bytes: an S3 object's stored checksum
metadata is not trusted, the bytes at rest may have rotted behind it).

Copies are selected per location and type in pages (keyset on the copy id), so memory stays
bounded and the read transaction is ended between pages. Sampling is deterministic: a copy is
read when a hash of (seed, object) falls below the fraction, so the same package is read at
every location, a run can be repeated, and another seed picks another subset; every location
with copies gets at least one read. A failed check is re-selected before it is reported: a copy
the pipeline changed meanwhile is not judged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.integrity.report import (
    CHECKSUM_MISMATCH,
    OBJECT_MISSING,
    SIZE_MISMATCH,
    UNREADABLE,
    VerifyReport,
    Violation,
)
from ccat_dagster.lifecycle.integrity.scope import Scope
from ccat_dagster.storage.base import Storage
from ccat_ops_db.models import (
    UNUSABLE_COPY_STATUSES,
    CopyType,
    DataLocation,
    DataTransferPackage,
    PhysicalCopy,
    PhysicalCopyStatus,
    RawDataFile,
    RawDataPackage,
    StorageType,
    table_of,
)

S = PhysicalCopyStatus
pc_t = table_of(PhysicalCopy)
rdp_t = table_of(RawDataPackage)
dtp_t = table_of(DataTransferPackage)
rdf_t = table_of(RawDataFile)

#: outcome of one copy, ordered so that max() is the best of several copies
BAD, UNPROVEN, GOOD = 0, 1, 2

StorageFor = Callable[[DataLocation], Storage]
Progress = Callable[[str, int, int], None]

#: statuses of copies whose object must exist: the catalogue relies on them
CHECKED_STATUSES: dict[CopyType, tuple[PhysicalCopyStatus, ...]] = {
    CopyType.RAW_DATA_PACKAGE: (S.PRESENT,),
    CopyType.DATA_TRANSFER_PACKAGE: (S.PRESENT,),
    CopyType.RAW_DATA_FILE: (S.PRESENT, S.DELETION_POSSIBLE),
}
_LABEL = {
    CopyType.RAW_DATA_PACKAGE: "RawDataPackage",
    CopyType.DATA_TRANSFER_PACKAGE: "DataTransferPackage",
    CopyType.RAW_DATA_FILE: "RawDataFile",
}


@dataclass(frozen=True)
class CopyRow:
    """One copy to check, with what the catalogue records for its object."""

    copy_id: int
    copy_type: CopyType
    entity_id: int
    package_id: int | None  # the package itself, or the file's package
    name: str
    key: str
    size: int | None
    checksum: str | None
    algorithm: str | None

    @property
    def label(self) -> str:
        return f"{_LABEL[self.copy_type]} {self.name}"


@dataclass(frozen=True)
class Outcome:
    state: int
    kind: str | None = None  # the violation, when the copy is bad or could not be read
    detail: str = ""
    read: bool = False
    bytes_read: int = 0

    @property
    def error(self) -> bool:
        return self.kind == UNREADABLE


@dataclass
class CopyStates:
    """What the reads established, for the file-level check."""

    #: package id -> best outcome over its checked PRESENT copies
    packages: dict[int, int] = field(default_factory=dict)
    #: package id -> why its checked copies are bad ("site/name: kind")
    package_problems: dict[int, list[str]] = field(default_factory=dict)
    #: ids of the package copies found bad
    bad_package_copies: set[int] = field(default_factory=set)
    #: raw-file copy id -> outcome (checked copies only)
    file_copies: dict[int, int] = field(default_factory=dict)
    #: raw-file copy id -> why it is bad
    file_copy_problems: dict[int, str] = field(default_factory=dict)
    #: raw file id -> its package id, for files proven by reading their own copy
    good_files: dict[int, int | None] = field(default_factory=dict)
    #: locations whose storage could not be used at all (their copies are unproven)
    unreadable_locations: set[int] = field(default_factory=set)


def sample_point(seed: int, *what: object) -> float:
    """A stable pseudo-random number in [0, 1) per (seed, what), e.g. (seed, type, object id)."""
    text = "/".join(str(w.value if isinstance(w, CopyType) else w) for w in (seed, *what))
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def check_copy(storage: Storage, row: CopyRow, *, read: bool) -> Outcome:
    """Stat the object (exists, size) and, with ``read``, stream it and compare the checksum.
    Never raises: a storage error is an UNREADABLE outcome."""
    try:
        stat = storage.stat(row.key)
        if not stat.exists:
            return Outcome(BAD, OBJECT_MISSING, "the catalogue says it is there; no such object")
        if row.size is not None and stat.size != row.size:
            return Outcome(BAD, SIZE_MISMATCH, f"{stat.size} bytes, recorded {row.size}")
        if not read:
            return Outcome(UNPROVEN)
        if not row.checksum or not row.algorithm:
            return Outcome(BAD, CHECKSUM_MISMATCH, "no checksum recorded to compare with")
        actual, size = storage.checksum(row.key, row.algorithm)
    except Exception as exc:  # noqa: BLE001 - any failure to read is reported, not raised
        return Outcome(UNPROVEN, UNREADABLE, f"{type(exc).__name__}: {exc}")
    if actual != row.checksum:
        return Outcome(
            BAD,
            CHECKSUM_MISMATCH,
            f"{row.algorithm} of the bytes read is {actual}, recorded {row.checksum}",
            read=True,
            bytes_read=size,
        )
    return Outcome(GOOD, read=True, bytes_read=size)


def _entity(copy_type: CopyType):
    if copy_type == CopyType.RAW_DATA_PACKAGE:
        return rdp_t, rdp_t.c.id, rdp_t.c.name, pc_t.c.raw_data_package_id
    if copy_type == CopyType.DATA_TRANSFER_PACKAGE:
        return dtp_t, sa.null(), dtp_t.c.name, pc_t.c.data_transfer_package_id
    return rdf_t, rdf_t.c.raw_data_package_id, rdf_t.c.relative_path, pc_t.c.raw_data_file_id


def _copies(copy_type: CopyType) -> sa.Select:
    """The copies of ``copy_type`` that must hold their bytes, with their object's record."""
    entity, package_id, name, fk = _entity(copy_type)
    stmt = (
        sa.select(
            pc_t.c.id,
            entity.c.id,
            package_id,
            name,
            entity.c.relative_path,
            sa.func.coalesce(entity.c.size, pc_t.c.size),
            entity.c.checksum,
            entity.c.checksum_algorithm,
        )
        .select_from(pc_t.join(entity, entity.c.id == fk))
        .where(pc_t.c.type == copy_type, pc_t.c.status.in_(CHECKED_STATUSES[copy_type]))
    )
    if copy_type == CopyType.RAW_DATA_FILE:
        # a file declared lost is not expected anywhere any more
        stmt = stmt.where(rdf_t.c.lost_at.is_(None))
    return stmt


def select_copies(copy_type: CopyType, location_id: int) -> sa.Select:
    """The copies of ``copy_type`` to check at ``location_id``, by copy id."""
    return _copies(copy_type).where(pc_t.c.data_location_id == location_id).order_by(pc_t.c.id)


def _rows(result: Sequence[sa.Row], copy_type: CopyType) -> list[CopyRow]:
    return [
        CopyRow(cid, copy_type, eid, pkg, name, key, size, checksum, alg)
        for cid, eid, pkg, name, key, size, checksum, alg in result
    ]


class LocationReader:
    """Checks the copies of each location and records the outcomes in the report and states."""

    def __init__(
        self,
        session: Session,
        scope: Scope,
        report: VerifyReport,
        states: CopyStates,
        *,
        storage_for: StorageFor,
        sample: float,
        seed: int,
        workers: int,
        page_size: int,
        max_errors: int,
        progress: Progress | None,
    ) -> None:
        self.session = session
        self.scope = scope
        self.report = report
        self.states = states
        self.storage_for = storage_for
        self.sample = sample
        self.seed = seed
        self.workers = workers
        self.page_size = page_size
        self.max_errors = max_errors
        self.progress = progress

    def totals(self) -> dict[int, dict[CopyType, int]]:
        """location id -> copy type -> copies to check there (one GROUP BY); counts the BAD and
        LOST copies the system already knows about on the way."""
        counts = self.session.execute(
            sa.select(pc_t.c.data_location_id, pc_t.c.type, pc_t.c.status, sa.func.count())
            .where(pc_t.c.data_location_id.in_(self.scope.location_ids))
            .group_by(pc_t.c.data_location_id, pc_t.c.type, pc_t.c.status)
        ).all()
        totals: dict[int, dict[CopyType, int]] = {}
        for loc_id, copy_type, status, n in counts:
            if status in CHECKED_STATUSES[copy_type]:
                per_type = totals.setdefault(loc_id, {})
                per_type[copy_type] = per_type.get(copy_type, 0) + n
            elif status in UNUSABLE_COPY_STATUSES:
                self.report.counters.copies_known_unusable += n
        return totals

    def read(self, location_id: int, per_type: dict[CopyType, int]) -> None:
        """Check every copy to check at one location (stat; read the sampled ones)."""
        total = sum(per_type.values())
        if total == 0:
            return
        name = self.scope.names[location_id]
        try:
            location = self.session.get_one(DataLocation, location_id)
            storage = self.storage_for(location)
            if location.storage_type == StorageType.DISK:
                # a missing root or an unreachable host is one location problem, not a
                # missing object per copy
                storage.disk_usage()
        except Exception as exc:  # noqa: BLE001 - the location is reported, the others go on
            self._give_up(location_id, total, f"cannot use its storage: {exc}")
            return
        always_read = self._fallback(location_id, per_type)
        done = errors = 0
        pool = ThreadPoolExecutor(self.workers) if self.workers > 1 else None
        try:
            for rows in self._pages(location_id):
                decisions = [(r, r.copy_id == always_read or self._sampled(r)) for r in rows]
                outcomes = self._check(storage, decisions, pool)
                changed = self._changed(
                    [r for r, o in zip(rows, outcomes, strict=True) if o.state == BAD]
                )
                for row, outcome in zip(rows, outcomes, strict=True):
                    if row.copy_id in changed:
                        self.report.counters.copies_changed_meanwhile += 1
                        continue
                    self._record(location_id, row, outcome)
                    errors += outcome.error
                done += len(rows)
                if self.progress:
                    self.progress(f"reading {name}", done, total)
                if errors >= self.max_errors:
                    self._give_up(location_id, total - done, f"stopped after {errors} read errors")
                    return
        finally:
            if pool is not None:
                pool.shutdown()
            self.session.rollback()  # end the read transaction: no snapshot held for hours

    def _fallback(self, location_id: int, per_type: dict[CopyType, int]) -> int | None:
        """With sampling, one copy per location is read whatever the sample: the copy at a
        seeded position in the location's list, so every location gets at least one read."""
        if self.sample >= 1:
            return None
        total = sum(per_type.values())
        position = int(sample_point(self.seed, "location", location_id) * total)
        for copy_type in CHECKED_STATUSES:
            n = per_type.get(copy_type, 0)
            if position < n:
                return self.session.scalar(
                    select_copies(copy_type, location_id)
                    .with_only_columns(pc_t.c.id)
                    .offset(position)
                    .limit(1)
                )
            position -= n
        return None

    def _pages(self, location_id: int) -> Iterator[list[CopyRow]]:
        for copy_type in CHECKED_STATUSES:
            after = 0
            while True:
                stmt = select_copies(copy_type, location_id).where(pc_t.c.id > after)
                rows = _rows(self.session.execute(stmt.limit(self.page_size)).all(), copy_type)
                self.session.rollback()
                if not rows:
                    break
                yield rows
                after = rows[-1].copy_id

    def _sampled(self, row: CopyRow) -> bool:
        if self.sample >= 1:
            return True
        return sample_point(self.seed, row.copy_type, row.entity_id) < self.sample

    def _check(
        self,
        storage: Storage,
        decisions: list[tuple[CopyRow, bool]],
        pool: ThreadPoolExecutor | None,
    ) -> list[Outcome]:
        if pool is None:
            return [check_copy(storage, row, read=read) for row, read in decisions]
        return list(pool.map(lambda d: check_copy(storage, d[0], read=d[1]), decisions))

    def _changed(self, rows: Sequence[CopyRow]) -> set[int]:
        """Of copies that failed, those whose catalogue row changed since they were selected
        (deleted, re-made or marked bad by the pipeline meanwhile): they are not judged."""
        changed: set[int] = set()
        for copy_type in {r.copy_type for r in rows}:
            mine = {r.copy_id: r for r in rows if r.copy_type == copy_type}
            stmt = _copies(copy_type).where(pc_t.c.id.in_(list(mine)))
            now = {r.copy_id: r for r in _rows(self.session.execute(stmt).all(), copy_type)}
            changed |= {cid for cid, row in mine.items() if now.get(cid) != row}
        if rows:
            self.session.rollback()
        return changed

    def _record(self, location_id: int, row: CopyRow, outcome: Outcome) -> None:
        c = self.report.counters
        if outcome.error:
            c.copies_not_checked += 1
        else:
            c.copies_checked += 1
            c.copies_read += outcome.read
            c.bytes_read += outcome.bytes_read
            c.copies_skipped_by_sampling += outcome.state == UNPROVEN
        where = self.scope.names[location_id]
        if outcome.kind is not None:
            lta = location_id in self.scope.lta_ids
            self.report.add(
                Violation(
                    kind=outcome.kind,
                    location=where,
                    object=row.label,
                    key=row.key,
                    detail=outcome.detail,
                    copy_id=row.copy_id,
                    # a bad archive copy also breaks "a verified copy in every active LTA"
                    check="b" if lta and not outcome.error else "",
                )
            )
        if row.copy_type == CopyType.RAW_DATA_PACKAGE:
            best = self.states.packages.get(row.entity_id, BAD)
            self.states.packages[row.entity_id] = max(best, outcome.state)
            if outcome.state == BAD:
                self.states.bad_package_copies.add(row.copy_id)
                problems = self.states.package_problems.setdefault(row.entity_id, [])
                problems.append(f"{where}: {outcome.kind}")
        elif row.copy_type == CopyType.RAW_DATA_FILE:
            self.states.file_copies[row.copy_id] = outcome.state
            if outcome.state == BAD:
                self.states.file_copy_problems[row.copy_id] = f"{where}: {outcome.kind}"
            elif outcome.state == GOOD:
                self.states.good_files[row.entity_id] = row.package_id

    def _give_up(self, location_id: int, remaining: int, why: str) -> None:
        self.states.unreadable_locations.add(location_id)
        self.report.counters.copies_not_checked += remaining
        self.report.add(
            Violation(
                kind=UNREADABLE,
                location=self.scope.names[location_id],
                object="location",
                key=None,
                detail=f"{why}; {remaining} copies there were not checked",
            )
        )
