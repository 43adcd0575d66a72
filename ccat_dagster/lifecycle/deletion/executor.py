"""Deleting the copies the rules returned, per location in batches: claim, re-check the rules
that can change back, pass the gate of :mod:`ccat_dagster.lifecycle.deletion.last_copy`, delete
through the Storage interface, record. Copies the gate keeps go back to their status and the
report carries an error for the operator. A copy at a LONG_TERM_ARCHIVE location is never
deleted: the rules never return one and the executor raises, before touching anything, if
handed one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.archive.verification import VerifyLtaCopy
from ccat_dagster.lifecycle.common.chunks import chunks
from ccat_dagster.lifecycle.deletion.claims import (
    claim_for_deletion,
    give_back,
    mark_deleted,
    mark_failed,
    mark_in_progress,
)
from ccat_dagster.lifecycle.deletion.last_copy import (
    RULE_LTA_VERIFICATION_FAILED,
    GateResult,
    LtaCheck,
    gate_deletions,
)
from ccat_dagster.lifecycle.deletion.plan import DeletionPlan, location_names
from ccat_dagster.lifecycle.deletion.rules import (
    RULE_MARK_DELETION_POSSIBLE,
    RULE_RDP_SOURCE_BUFFER,
    DeletableCopy,
    RuleContext,
    dl_t,
    group_by_location,
    pc_t,
    rdf_t,
    source_site_ids,
    still_allowed,
)
from ccat_dagster.storage.base import Storage
from ccat_dagster.storage.errors import LocationUnavailableError
from ccat_ops_db.audit import audit_many
from ccat_ops_db.models import (
    CopyType,
    DataLocation,
    LocationType,
    PhysicalCopyStatus,
    RawDataFile,
    RawDataPackage,
    as_utc,
    table_of,
    utcnow,
)

S = PhysicalCopyStatus
DEFAULT_BATCH_SIZE = 1000


class RefusedDeletionError(RuntimeError):
    """The executor was handed a copy it must never delete (a LONG_TERM_ARCHIVE copy)."""


@dataclass(frozen=True)
class CopyFailure:
    copy_id: int
    location: str
    name: str
    rule: str
    error: str
    retry_count: int
    permanent: bool


@dataclass
class CleanupReport:
    """What one cycle did. ``errors`` are for the operator: the Dagster step fails on them."""

    run_id: str
    dry_run: bool
    deleted_by_rule: Counter[str] = field(default_factory=Counter)
    bytes_by_location: Counter[str] = field(default_factory=Counter)
    deleted_copy_ids: list[int] = field(default_factory=list)
    marked_deletion_possible: int = 0
    staged_packages_closed: int = 0
    failures: list[CopyFailure] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    permanent_failures: list[tuple[int, int, CopyType, int, str | None]] = field(
        default_factory=list
    )
    plan: DeletionPlan | None = None
    #: every live check of an archive copy this cycle made (for the lta_presence evaluations)
    lta_checks: list[LtaCheck] = field(default_factory=list)
    #: location errors met while deleting (the copies were given back, nothing counted); the
    #: Dagster step marks these locations unavailable from its site
    unavailable: list[LocationUnavailableError] = field(default_factory=list)

    @property
    def deleted(self) -> int:
        return sum(self.deleted_by_rule.values())

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        head = f"cleanup {self.run_id}{' (dry run)' if self.dry_run else ''}: "
        if self.dry_run and self.plan is not None:
            return head + "nothing changed\n" + self.plan.summary()
        lines = [head + f"{self.deleted} copies deleted"]
        lines += [f"  {rule}: {n}" for rule, n in sorted(self.deleted_by_rule.items())]
        lines += [
            f"  freed at {loc}: {n} bytes" for loc, n in sorted(self.bytes_by_location.items())
        ]
        if self.marked_deletion_possible:
            lines.append(
                f"  raw-file copies now DELETION_POSSIBLE: {self.marked_deletion_possible}"
            )
        lines += [
            f"  FAILED (retry {f.retry_count}): {f.location} {f.name}: {f.error}"
            for f in self.failures
        ]
        lines += [f"  ERROR: {e}" for e in self.errors]
        return "\n".join(lines)


class CycleState:
    """State of one cycle: caches of locations/storages, the report."""

    def __init__(
        self,
        session: Session,
        *,
        storage_for: Callable[[DataLocation], Storage],
        verify_lta_copy: VerifyLtaCopy,
        run_id: str,
        ctx: RuleContext,
        report: CleanupReport,
        batch_size: int,
    ) -> None:
        self.session = session
        self.storage_for = storage_for
        self.verify_lta_copy = verify_lta_copy
        self.run_id = run_id
        self.ctx = ctx
        self.report = report
        self.batch_size = batch_size
        self.names = location_names(session)
        self._storages: dict[int, Storage | Exception] = {}

    def location(self, loc_id: int) -> DataLocation:
        loc = self.session.get(DataLocation, loc_id)
        if loc is None:
            raise RefusedDeletionError(f"data location id {loc_id} does not exist")
        return loc

    def storage(self, loc: DataLocation) -> Storage:
        if loc.id not in self._storages:
            try:
                self._storages[loc.id] = self.storage_for(loc)
            except Exception as exc:  # noqa: BLE001 - a broken location fails its copies only
                self._storages[loc.id] = exc
        got = self._storages[loc.id]
        if isinstance(got, Exception):
            raise got
        return got


def _refuse_lta(cycle: CycleState, copies: Sequence[DeletableCopy]) -> None:
    for loc_id in sorted({c.data_location_id for c in copies}):
        loc = cycle.location(loc_id)
        if loc.location_type == LocationType.LONG_TERM_ARCHIVE:
            n = sum(1 for c in copies if c.data_location_id == loc_id)
            raise RefusedDeletionError(
                f"refusing to delete {n} copies at {cycle.names[loc_id]}: it is a "
                "LONG_TERM_ARCHIVE location, which is never cleaned up automatically; nothing "
                "was deleted. Remove LTA data only by hand, after checking the other archives."
            )


def _keep_refused(cycle: CycleState, gate: GateResult) -> None:
    """Give back the claims of copies whose archive copies failed their live check, flag their
    packages and tell the operator; nothing of them was deleted."""
    session = cycle.session
    copies = gate.refused
    if not copies:
        return
    error_evidence = {
        c.copy_id: {
            "level": "ERROR",
            **gate.evidence.get(c.copy_id, {}),
            "error": "; ".join(gate.kept[p] for p in _held(gate, c)),
        }
        for c in copies
    }
    for loc_id, group in group_by_location(copies).items():
        give_back(
            session,
            group,
            run_id=cycle.run_id,
            location_type=cycle.location(loc_id).location_type,
            reason=RULE_LTA_VERIFICATION_FAILED,
            evidence=error_evidence,
        )
    rdp_t = table_of(RawDataPackage)
    session.execute(
        sa.update(rdp_t)
        .where(rdp_t.c.id == sa.bindparam("b_id"))
        .values(failure_reason=sa.bindparam("b_reason"))
        .execution_options(synchronize_session=False),
        [
            {"b_id": pkg, "b_reason": f"{RULE_LTA_VERIFICATION_FAILED}: {reason}"}
            for pkg, reason in gate.kept.items()
        ],
    )
    states = dict(
        session.execute(sa.select(rdp_t.c.id, rdp_t.c.state).where(rdp_t.c.id.in_(list(gate.kept))))
        .tuples()
        .all()
    )
    audit_many(
        session,
        [
            {
                "entity_type": "raw_data_package",
                "entity_id": pkg,
                "old_status": states.get(pkg),
                "new_status": states.get(pkg),
                "reason": RULE_LTA_VERIFICATION_FAILED,
                "run_id": cycle.run_id,
                "evidence": {"level": "ERROR", "error": reason},
            }
            for pkg, reason in gate.kept.items()
        ],
    )
    for c in copies:
        if all(p in gate.waiting for p in _held(gate, c)):
            continue  # an archive that does not answer: the location is marked, the copy waits
        why = "; ".join(gate.kept[p] for p in _held(gate, c))
        cycle.report.errors.append(
            f"kept {_KIND[c.copy_type]} {c.name} at {cycle.names[c.data_location_id]}: {why}. "
            "A copy found BAD or LOST is re-archived from a good copy by the archive stage "
            "(`ccat status` lists them); an archive that did not answer is checked again next "
            "cycle. Nothing was deleted."
        )


_KIND = {
    CopyType.RAW_DATA_PACKAGE: "RawDataPackage",
    CopyType.RAW_DATA_FILE: "RawDataFile",
    CopyType.DATA_TRANSFER_PACKAGE: "DataTransferPackage",
}


def _held(gate: GateResult, copy: DeletableCopy) -> list[int]:
    return [p for p in gate.held.get(copy.copy_id, []) if p in gate.kept]


def execute_deletions(
    session: Session,
    copies: Sequence[DeletableCopy],
    *,
    storage_for: Callable[[DataLocation], Storage],
    verify_lta_copy: VerifyLtaCopy,
    run_id: str,
    ctx: RuleContext,
    report: CleanupReport | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    _cycle: CycleState | None = None,
) -> CleanupReport:
    """Delete ``copies`` (rows the rules returned): claim, verify, delete, record -- per location
    in batches of ``batch_size``, committing after each step so other runs see the claims.

    Raises RefusedDeletionError, before touching anything, if any copy is at a
    LONG_TERM_ARCHIVE location.
    """
    report = report or CleanupReport(run_id=run_id, dry_run=False)
    cycle = _cycle or CycleState(
        session,
        storage_for=storage_for,
        verify_lta_copy=verify_lta_copy,
        run_id=run_id,
        ctx=ctx,
        report=report,
        batch_size=batch_size,
    )
    _refuse_lta(cycle, copies)
    for loc_id, group in group_by_location(copies).items():
        for batch in chunks(group, batch_size):
            _delete_batch(cycle, cycle.location(loc_id), batch)
    return report


def _recheck_after_claim(
    cycle: CycleState, loc: DataLocation, claimed: Sequence[DeletableCopy]
) -> list[DeletableCopy]:
    """Release the claimed copies whose rule no longer allows deletion (changed meanwhile)."""
    allowed = still_allowed(cycle.session, claimed, ctx=cycle.ctx)
    changed = [c for c in claimed if c.copy_id not in allowed]
    give_back(
        cycle.session,
        changed,
        run_id=cycle.run_id,
        location_type=loc.location_type,
        reason="no longer allowed by its rule when re-checked after the claim",
    )
    cycle.session.commit()
    return [c for c in claimed if c.copy_id in allowed]


def _delete_batch(cycle: CycleState, loc: DataLocation, batch: Sequence[DeletableCopy]) -> None:
    session, run_id, report = cycle.session, cycle.run_id, cycle.report
    claimed = claim_for_deletion(session, batch, run_id=run_id, ctx=cycle.ctx)
    session.commit()
    claimed = _recheck_after_claim(cycle, loc, claimed)
    if not claimed:
        return
    gate = gate_deletions(
        session,
        claimed,
        verify=cycle.verify_lta_copy,
        location=cycle.location,
        names=cycle.names,
        run_id=run_id,
    )
    _keep_refused(cycle, gate)
    cycle.report.lta_checks += gate.checks
    cycle.report.unavailable += gate.unavailable
    proceed, evidence = gate.proceed, gate.evidence
    session.commit()
    started = mark_in_progress(session, proceed, run_id=run_id)
    session.commit()

    done: list[DeletableCopy] = []
    failures: list[tuple[DeletableCopy, str]] = []
    try:
        storage = cycle.storage(loc)
    except Exception as exc:  # noqa: BLE001
        failures = [(c, f"cannot open storage of {cycle.names[loc.id]}: {exc}") for c in started]
        storage = None
    if storage is not None:
        filed_at = _filed_times(session, loc, started)
        for i, c in enumerate(started):
            try:
                changed = _changed_since_filed(storage, loc, c, filed_at.get(c.entity_id))
                if changed:
                    failures.append((c, changed))
                    continue
                result = storage.delete(c.key)
            except LocationUnavailableError as exc:
                # The location does not answer: not this copy's fault. Its claim and the rest
                # of the batch are given back uncounted; the location is marked unavailable.
                _release_uncounted(cycle, loc, started[i:], exc)
                break
            except Exception as exc:  # noqa: BLE001 - the copy goes DELETION_FAILED, retried
                failures.append((c, f"{type(exc).__name__}: {exc}"))
                continue
            evidence.setdefault(c.copy_id, {})["object_existed"] = result.existed
            done.append(c)

    deleted = mark_deleted(session, done, run_id=run_id, evidence=evidence)
    for copy, retries, permanent in mark_failed(
        session, failures, run_id=run_id, policy=cycle.ctx.policy
    ):
        reason = next(r for c, r in failures if c.copy_id == copy.copy_id)
        report.failures.append(
            CopyFailure(
                copy.copy_id, cycle.names[loc.id], copy.name, copy.rule, reason, retries, permanent
            )
        )
        if permanent:
            report.errors.append(
                f"deleting {copy.name} at {cycle.names[loc.id]} failed {retries} times "
                f"({reason}); it stays DELETION_FAILED until an operator fixes the storage"
            )
    source_packages = [c.entity_id for c in deleted if c.rule == RULE_RDP_SOURCE_BUFFER]
    if source_packages:
        report.marked_deletion_possible += len(
            mark_raw_data_files_for_deletion(
                session,
                source_packages,
                run_id=run_id,
                evidence={"trigger": RULE_RDP_SOURCE_BUFFER},
            )
        )
    session.commit()
    for c in deleted:
        report.deleted_by_rule[c.rule] += 1
        report.bytes_by_location[cycle.names[loc.id]] += c.size or 0
        report.deleted_copy_ids.append(c.copy_id)


@dataclass(frozen=True)
class _Filed:
    """What a raw data file was filed with: when, and its checksum."""

    at: datetime
    checksum: str
    algorithm: str


def _filed_times(
    session: Session, loc: DataLocation, copies: Sequence[DeletableCopy]
) -> dict[int, _Filed]:
    """RawDataFile id -> when and with what checksum it was filed, for the raw data files of
    ``copies`` at a SOURCE (one query per chunk, none elsewhere)."""
    if loc.location_type is not LocationType.SOURCE:
        return {}
    ids = [c.entity_id for c in copies if c.copy_type == CopyType.RAW_DATA_FILE]
    found: dict[int, _Filed] = {}
    for start in range(0, len(ids), 5_000):
        rows = session.execute(
            sa.select(
                RawDataFile.id,
                RawDataFile.created_at,
                RawDataFile.checksum,
                RawDataFile.checksum_algorithm,
            ).where(RawDataFile.id.in_(ids[start : start + 5_000]))
        )
        found.update(
            (i, _Filed(as_utc(t), checksum, algorithm or "sha256"))
            for i, t, checksum, algorithm in rows
            if t is not None
        )
    return found


def _changed_since_filed(
    storage: Storage, loc: DataLocation, c: DeletableCopy, filed: _Filed | None
) -> str | None:
    """Why a raw data file at a SOURCE must not go although its rule allows it: its size is no
    longer the one it was filed (and archived) with, or it was written after it was filed and
    its bytes are no longer the filed ones (a same-size rewrite in place; a file written back
    with its original bytes, e.g. restored from a backup, reads the same and may go). A file
    that is already gone is left to the delete (it records that the object did not exist).
    Staged copies at PROCESSING are copies of the archive and may go whatever became of them."""
    if loc.location_type is not LocationType.SOURCE or c.size is None:
        return None
    if c.copy_type != CopyType.RAW_DATA_FILE:
        return None
    found = storage.stat(c.key)
    if not found.exists:
        return None
    advice = (
        "its new bytes are in no archive, so it is kept; file the new content under a new name "
        "(or restore the archived one) and delete this copy by hand"
    )
    if found.size != c.size:
        return (
            f"changed since it was filed (size now {found.size}, filed and archived with "
            f"{c.size}): {advice}"
        )
    if found.modified_at is None or filed is None or found.modified_at <= filed.at:
        return None
    # written after its filing: only its bytes can tell whether they are still the filed ones
    checksum, _size = storage.checksum(c.key, filed.algorithm)
    if checksum == filed.checksum:
        return None
    return (
        f"rewritten since it was filed (modified {found.modified_at.isoformat()}, filed "
        f"{filed.at.isoformat()}; {filed.algorithm} now {checksum[:16]}..., filed "
        f"{filed.checksum[:16]}...): {advice}"
    )


def _release_uncounted(
    cycle: CycleState,
    loc: DataLocation,
    copies: Sequence[DeletableCopy],
    exc: LocationUnavailableError,
) -> None:
    give_back(
        cycle.session,
        copies,
        run_id=cycle.run_id,
        location_type=loc.location_type,
        reason=f"not deleted, the location does not answer (not counted): {exc}",
    )
    cycle.report.unavailable.append(exc)


# --------------------------------------------------------------------------- side effect


def mark_raw_data_files_for_deletion(
    session: Session,
    raw_data_package_ids: Sequence[int],
    *,
    run_id: str | None = None,
    evidence: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> list[int]:
    """Stage 1 of the two-stage RawDataFile deletion: when a RawDataPackage was deleted from its
    SOURCE-site buffer, its RawDataFile copies PRESENT at SOURCE (or BUFFER) locations of a
    SOURCE site become DELETION_POSSIBLE -- one bulk UPDATE per 5000 packages plus one bulk audit
    INSERT, never a loop over copies. ``updated_at`` is set to ``now``: the retention clock of
    stage 2. Returns the ids of the copies marked."""
    now = now or utcnow()
    marked: list[int] = []
    for chunk in chunks(list(raw_data_package_ids)):
        files = sa.select(rdf_t.c.id).where(rdf_t.c.raw_data_package_id.in_(chunk))
        at_source = sa.select(dl_t.c.id).where(
            dl_t.c.location_type.in_([LocationType.SOURCE, LocationType.BUFFER]),
            dl_t.c.site_id.in_(source_site_ids()),
        )
        stmt = (
            sa.update(pc_t)
            .where(
                pc_t.c.type == CopyType.RAW_DATA_FILE,
                pc_t.c.status == S.PRESENT,
                pc_t.c.raw_data_file_id.in_(files),
                pc_t.c.data_location_id.in_(at_source),
            )
            .values(status=S.DELETION_POSSIBLE, updated_at=now)
            .returning(pc_t.c.id, pc_t.c.data_location_id, pc_t.c.raw_data_file_id)
        )
        rows = session.execute(stmt).all()
        audit_many(
            session,
            [
                {
                    "entity_type": "physical_copy",
                    "entity_id": copy_id,
                    "data_location_id": loc_id,
                    "old_status": S.PRESENT,
                    "new_status": S.DELETION_POSSIBLE,
                    "reason": RULE_MARK_DELETION_POSSIBLE,
                    "run_id": run_id,
                    "evidence": {"raw_data_file_id": file_id, **(evidence or {})},
                }
                for copy_id, loc_id, file_id in rows
            ],
        )
        marked.extend(r[0] for r in rows)
    return marked
