"""The clauses of ``ccat verify`` that read only the catalogue and the audit log, complete
whatever the sample (a few set-based queries, whatever the number of rows):

(b) every ARCHIVED package has a PRESENT copy in every active LONG_TERM_ARCHIVE location (the
bytes of those copies are read by :mod:`.reads`); a BAD or LOST archive copy stays a violation
until it is repaired.
(c) no LONG_TERM_ARCHIVE copy is, or ever was, put up for deletion or deleted (current status
and every audit record).
(d) every DELETED copy has an audit record with the rule (a non-empty reason), and every
deletion whose evidence says it removed the last copy outside the archives
(``"last_copy_outside_lta": true``) carries a passing live archive check
(``"lta_verification": [{"ok": true, ...}, ...]``, every entry passed), and so does every
deletion by a rule whose copies are always checked (the source-buffer package rule and the
DELETION_POSSIBLE raw-file rule, ``last_copy.ALWAYS_VERIFIED``), with or without the field.
Other rules need only the record.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.deletion.last_copy import ALWAYS_VERIFIED
from ccat_dagster.lifecycle.integrity.report import (
    DELETION_WITHOUT_AUDIT,
    DELETION_WITHOUT_LTA_EVIDENCE,
    LTA_COPY_DELETED,
    LTA_COPY_NOT_PRESENT,
    VerifyReport,
    Violation,
)
from ccat_dagster.lifecycle.integrity.scope import Scope
from ccat_ops_db.models import (
    AuditLog,
    CopyType,
    DataLocation,
    DataTransferPackage,
    PackageState,
    PhysicalCopy,
    PhysicalCopyStatus,
    RawDataFile,
    RawDataPackage,
    Site,
    table_of,
)

S = PhysicalCopyStatus
pc_t = table_of(PhysicalCopy)
rdp_t = table_of(RawDataPackage)
dtp_t = table_of(DataTransferPackage)
rdf_t = table_of(RawDataFile)
dl_t = table_of(DataLocation)
site_t = table_of(Site)
audit_t = table_of(AuditLog)

#: statuses that mean "on its way out or gone": never allowed for an archive copy
DELETION_STATUSES = (
    S.DELETION_POSSIBLE,
    S.DELETION_SCHEDULED,
    S.DELETION_IN_PROGRESS,
    S.DELETION_FAILED,
    S.DELETED,
)
_STATUS_DETAIL = {
    None: "no copy there: the package was never archived to this location",
    S.BAD: "the copy there is BAD (other bytes than recorded): repair pending",
    S.LOST: "the copy there is LOST (the object is gone): repair pending",
}


def _status_detail(status: S | None) -> str:
    """Why an archive copy does not count (``None``: there is no copy row at all)."""
    if status in _STATUS_DETAIL:
        return _STATUS_DETAIL[status]
    assert status is not None
    return f"the copy there is {status.value}"


_LABEL = {
    CopyType.RAW_DATA_PACKAGE: "RawDataPackage",
    CopyType.DATA_TRANSFER_PACKAGE: "DataTransferPackage",
    CopyType.RAW_DATA_FILE: "RawDataFile",
}


def _copy_columns() -> tuple[sa.FromClause, Any, Any]:
    """SELECT base over physical_copy with the object's name and key (any copy type)."""
    rdp, dtp, rdf = rdp_t.alias("o_rdp"), dtp_t.alias("o_dtp"), rdf_t.alias("o_rdf")
    joined = (
        pc_t.outerjoin(rdp, rdp.c.id == pc_t.c.raw_data_package_id)
        .outerjoin(dtp, dtp.c.id == pc_t.c.data_transfer_package_id)
        .outerjoin(rdf, rdf.c.id == pc_t.c.raw_data_file_id)
    )
    name = sa.func.coalesce(rdp.c.name, dtp.c.name, rdf.c.relative_path)
    key = sa.func.coalesce(rdp.c.relative_path, dtp.c.relative_path, rdf.c.relative_path)
    return joined, name, key


def _label(copy_type: CopyType, name: str | None) -> str:
    return f"{_LABEL[copy_type]} {name}"


def _in_scope(scope: Scope, column: Any) -> sa.ColumnElement[bool]:
    return column.in_(scope.location_ids) if scope.limited else sa.true()


# --------------------------------------------------------------------------- (b)


def check_archive_presence(session: Session, scope: Scope, report: VerifyReport) -> None:
    """(b): an ARCHIVED package without a PRESENT copy at an active LTA location in scope."""
    ltas = session.execute(
        sa.select(dl_t.c.id)
        .join(site_t, site_t.c.id == dl_t.c.site_id)
        .where(
            dl_t.c.id.in_(sorted(scope.lta_ids & scope.ids)),
            dl_t.c.active == sa.true(),
            site_t.c.active == sa.true(),
        )
        .order_by(dl_t.c.id)
    ).scalars()
    ltas = list(ltas)
    archived = session.scalar(
        sa.select(sa.func.count()).select_from(rdp_t).where(rdp_t.c.state == PackageState.ARCHIVED)
    )
    report.counters.archived_packages = archived or 0
    report.counters.lta_copies_expected = (archived or 0) * len(ltas)
    for lta_id in ltas:
        there = pc_t.alias("there")
        rows = session.execute(
            sa.select(rdp_t.c.name, rdp_t.c.relative_path, there.c.status, there.c.id)
            .select_from(
                rdp_t.outerjoin(
                    there,
                    sa.and_(
                        there.c.raw_data_package_id == rdp_t.c.id,
                        there.c.data_location_id == lta_id,
                        there.c.type == CopyType.RAW_DATA_PACKAGE,
                    ),
                )
            )
            .where(
                rdp_t.c.state == PackageState.ARCHIVED,
                sa.or_(there.c.id.is_(None), there.c.status != S.PRESENT),
            )
            .order_by(rdp_t.c.id)
        )
        for name, key, status, copy_id in rows:
            report.add(
                Violation(
                    kind=LTA_COPY_NOT_PRESENT,
                    location=scope.names[lta_id],
                    object=f"RawDataPackage {name}",
                    key=key,
                    detail=_status_detail(status),
                    copy_id=copy_id,
                )
            )


# --------------------------------------------------------------------------- (c)


def check_archive_deletions(session: Session, scope: Scope, report: VerifyReport) -> None:
    """(c): archive copies whose status or audit trail shows a deletion; one violation per
    copy, its current status first, else the first audit record that moved it."""
    ltas = sorted(scope.lta_ids & scope.ids)
    if not ltas:
        return
    joined, name, key = _copy_columns()
    current = session.execute(
        sa.select(pc_t.c.id, pc_t.c.type, pc_t.c.data_location_id, name, key, pc_t.c.status)
        .select_from(joined)
        .where(pc_t.c.data_location_id.in_(ltas), pc_t.c.status.in_(DELETION_STATUSES))
        .order_by(pc_t.c.id)
    ).all()
    reported: set[int] = set()
    for copy_id, copy_type, loc_id, obj, obj_key, status in current:
        reported.add(copy_id)
        report.add(
            Violation(
                kind=LTA_COPY_DELETED,
                location=scope.names[loc_id],
                object=_label(copy_type, obj),
                key=obj_key,
                detail=f"the archive copy is {status.value}",
                copy_id=copy_id,
            )
        )
    history = session.execute(
        sa.select(
            pc_t.c.id,
            pc_t.c.type,
            pc_t.c.data_location_id,
            name,
            key,
            audit_t.c.id,
            audit_t.c.created_at,
            audit_t.c.old_status,
            audit_t.c.new_status,
            audit_t.c.reason,
            audit_t.c.run_id,
        )
        .select_from(
            joined.join(
                audit_t,
                sa.and_(audit_t.c.entity_type == "physical_copy", audit_t.c.entity_id == pc_t.c.id),
            )
        )
        .where(
            pc_t.c.data_location_id.in_(ltas),
            audit_t.c.new_status.in_([s.value for s in DELETION_STATUSES]),
        )
        .order_by(audit_t.c.id)
    ).all()
    for copy_id, copy_type, loc_id, obj, obj_key, audit_id, at, old, new, reason, run in history:
        if copy_id in reported:
            continue
        reported.add(copy_id)
        report.add(
            Violation(
                kind=LTA_COPY_DELETED,
                location=scope.names[loc_id],
                object=_label(copy_type, obj),
                key=obj_key,
                detail=f"audit record {audit_id} ({at:%Y-%m-%d %H:%M}, run {run}): "
                f"{old} -> {new}: {reason}",
                copy_id=copy_id,
            )
        )


# --------------------------------------------------------------------------- (d)


def _has_reason() -> sa.ColumnElement[bool]:
    return sa.func.length(sa.func.trim(sa.func.coalesce(audit_t.c.reason, ""))) > 0


def _passing_lta_check() -> sa.ColumnElement[bool]:
    """A live archive check is recorded and every recorded check passed (the gate deletes
    only then): the first ``lta_verification`` entry has ``"ok": true`` and no entry has
    ``"ok": false`` (a text match, so it sees every entry of an array of any length; both
    backends store the JSON as Python's ``json.dumps`` writes it)."""
    evidence = audit_t.c.evidence
    first_ok = (
        sa.func.coalesce(evidence[("lta_verification", 0, "ok")].as_boolean(), sa.false())
        == sa.true()
    )
    failed_entry = sa.cast(evidence, sa.Text).like('%"ok": false%')
    return sa.and_(first_ok, ~failed_entry)


def _needs_lta_check() -> sa.ColumnElement[bool]:
    """The copy was the last one outside the archives, or its rule is one whose copies are
    always checked (where the data came from), whatever the record says about the rest."""
    evidence = audit_t.c.evidence
    last = evidence["last_copy_outside_lta"].as_boolean()
    rule = evidence["rule"].as_string()
    always = sa.or_(audit_t.c.reason.in_(ALWAYS_VERIFIED), rule.in_(ALWAYS_VERIFIED))
    return sa.or_(last == sa.true(), always)


def check_deletion_records(session: Session, scope: Scope, report: VerifyReport) -> None:
    """(d): DELETED copies outside the archives without a record naming their rule, and
    deletion records of a last copy outside the archives without a passing live check."""
    not_lta = pc_t.c.data_location_id.not_in(sorted(scope.lta_ids))
    where = [_in_scope(scope, pc_t.c.data_location_id), not_lta]
    report.counters.deleted_copies = (
        session.scalar(
            sa.select(sa.func.count()).select_from(pc_t).where(*where, pc_t.c.status == S.DELETED)
        )
        or 0
    )
    deleted_record = sa.and_(
        audit_t.c.entity_type == "physical_copy",
        audit_t.c.new_status == S.DELETED.value,
    )
    report.counters.deletion_records = (
        session.scalar(
            sa.select(sa.func.count())
            .select_from(audit_t.join(pc_t, pc_t.c.id == audit_t.c.entity_id))
            .where(deleted_record, *where)
        )
        or 0
    )
    joined, name, key = _copy_columns()
    recorded = (
        sa.exists()
        .where(deleted_record, audit_t.c.entity_id == pc_t.c.id, _has_reason())
        .correlate(pc_t)
    )
    for copy_id, copy_type, loc_id, obj, obj_key in session.execute(
        sa.select(pc_t.c.id, pc_t.c.type, pc_t.c.data_location_id, name, key)
        .select_from(joined)
        .where(*where, pc_t.c.status == S.DELETED, ~recorded)
        .order_by(pc_t.c.id)
    ):
        report.add(
            Violation(
                kind=DELETION_WITHOUT_AUDIT,
                location=scope.names[loc_id],
                object=_label(copy_type, obj),
                key=obj_key,
                detail="DELETED, but no audit record says by which rule",
                copy_id=copy_id,
            )
        )
    # An entry per archive location at most; a margin in case a check is recorded twice.
    unproven = session.execute(
        sa.select(
            pc_t.c.id,
            pc_t.c.type,
            pc_t.c.data_location_id,
            name,
            key,
            audit_t.c.id,
            audit_t.c.reason,
            audit_t.c.run_id,
            audit_t.c.evidence,
        )
        .select_from(joined.join(audit_t, audit_t.c.entity_id == pc_t.c.id))
        .where(*where, deleted_record, _needs_lta_check(), ~_passing_lta_check())
        .order_by(audit_t.c.id)
    )
    for copy_id, copy_type, loc_id, obj, obj_key, audit_id, reason, run, evidence in unproven:
        report.add(
            Violation(
                kind=DELETION_WITHOUT_LTA_EVIDENCE,
                location=scope.names[loc_id],
                object=_label(copy_type, obj),
                key=obj_key,
                detail=f"audit record {audit_id} (rule {reason}, run {run}): "
                + _evidence_problem(evidence),
                copy_id=copy_id,
            )
        )


def _evidence_problem(evidence: Any) -> str:
    evidence = evidence if isinstance(evidence, dict) else {}
    checks = evidence.get("lta_verification")
    last = evidence.get("last_copy_outside_lta")
    why = (
        "the last copy outside the archives"
        if last is True
        else "deleted by a rule that removes the last copy outside the archives"
    )
    if not checks:
        return f"{why}, but no live archive check is recorded"
    failed = "; ".join(
        f"{c.get('location')}: {c.get('detail') or 'not ok'}" for c in checks if isinstance(c, dict)
    )
    return f"{why}, but no recorded live archive check passed ({failed})"
