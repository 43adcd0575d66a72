"""Declaring raw data files lost: a SOURCE file that vanished before it was packaged.

Packaging a file that is gone fails its package (after the retries), and with it the other files
of that obs unit and module. An operator who knows the file is gone for good declares it lost
with a reason (``ccat files declare-lost``): its SOURCE copy becomes LOST, ``RawDataFile.lost_at``
and ``lost_reason`` are set, both audited with the reason and who declared it; its package, not
yet written, goes back to PENDING with its retries reset and is packaged without the lost files
(:func:`ccat_dagster.lifecycle.ingest.raw_data_packages.package_files`), or, when no file of it is
left, is closed with nothing to archive instead of becoming an empty tar. Nothing is changed for a
file that still exists on disk or whose bytes are safe elsewhere (a package copy, an archive, a
staged copy): such a file is not lost. Everything is checked before anything is written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.common.locations import resolve_location
from ccat_dagster.lifecycle.common.progress import set_status
from ccat_dagster.lifecycle.ingest.filing import shown_path
from ccat_dagster.lifecycle.ingest.raw_data_packages import close_package_without_files
from ccat_ops_db.audit import audit_many
from ccat_ops_db.models import (
    CopyType,
    DataLocation,
    DiskDataLocation,
    ExecutedObsUnit,
    InstrumentModule,
    LocationType,
    PackageState,
    PhysicalCopy,
    PhysicalCopyStatus,
    RawDataFile,
    RawDataPackage,
    Site,
    Status,
    qualified_location_name,
    utcnow,
)
from ccat_ops_db.results import count

MAX_LISTED_PROBLEMS = 20
#: copy statuses that no longer hold the bytes: a copy in any other status still does
GONE = (PhysicalCopyStatus.DELETED, PhysicalCopyStatus.BAD, PhysicalCopyStatus.LOST)
#: package statuses whose tar was never written (and is not being written)
NOT_WRITTEN = (Status.PENDING, Status.SCHEDULED, Status.FAILED)


class LostFileError(ValueError):
    """Files that cannot be declared lost; nothing was changed."""

    def __init__(self, location: str, problems: list[str]) -> None:
        self.problems = problems
        listed = problems[:MAX_LISTED_PROBLEMS]
        lines = [
            f"cannot declare files lost at {location}: {len(problems)} problem(s); nothing was "
            "changed",
            *(f"  - {p}" for p in listed),
        ]
        if len(problems) > len(listed):
            lines.append(f"  ... and {len(problems) - len(listed)} more")
        super().__init__("\n".join(lines))


@dataclass
class DeclaredLost:
    location: str
    declared: list[str] = field(default_factory=list)
    already_lost: list[str] = field(default_factory=list)
    #: package name -> files left; the package is packaged again without the lost files
    packages_reset: dict[str, int] = field(default_factory=dict)
    #: packages closed with nothing to archive (every file lost)
    packages_closed: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [
            f"declared {len(self.declared)} file(s) lost at {self.location}"
            + (f"; {len(self.already_lost)} already declared lost" if self.already_lost else "")
        ]
        out += [
            f"package {name}: back to PENDING, packaged and archived without the lost file(s) "
            f"({left} file(s) left)"
            for name, left in self.packages_reset.items()
        ]
        out += [
            f"package {name}: nothing to archive, every file of it is lost (closed as FAILED)"
            for name in self.packages_closed
        ]
        return out


def _source(session: Session, location: DataLocation | str) -> DiskDataLocation:
    if isinstance(location, str):
        location = resolve_location(session, location)
    name = location.qualified_name
    if location.location_type is not LocationType.SOURCE or not isinstance(
        location, DiskDataLocation
    ):
        raise LostFileError(
            name,
            [
                f"{name} is not a SOURCE disk location; only files filed at a SOURCE are "
                "declared lost"
            ],
        )
    if not os.path.isdir(location.path):
        # Without the root no file can be shown to be gone: a missing mount is not a loss.
        raise LostFileError(
            name,
            [
                f"the root {location.path} of {name} is not a directory on this machine; run the "
                "command where the location is mounted (a missing mount does not make files lost)"
            ],
        )
    return location


def _relative_path(root: str, given: str) -> str | None:
    """The catalogue's relative path of ``given`` (relative to the root, or absolute under it)."""
    roots = {os.path.abspath(root), os.path.realpath(root)}
    path = os.path.normpath(given if os.path.isabs(given) else os.path.join(root, given))
    for r in roots:
        if path.startswith(r.rstrip("/") + "/"):
            return path[len(r.rstrip("/")) + 1 :]
    return None


def _safe_elsewhere(session: Session, rdf: RawDataFile, source_id: int) -> list[str]:
    """Where the file's bytes still are: copies of it outside the SOURCE, copies of its package."""
    holds = [PhysicalCopy.raw_data_file_id == rdf.id, PhysicalCopy.data_location_id != source_id]
    if rdf.raw_data_package_id is not None:
        holds = [
            or_(
                and_(*holds),
                PhysicalCopy.raw_data_package_id == rdf.raw_data_package_id,
            )
        ]
    rows = session.execute(
        select(Site.short_name, DataLocation.name, PhysicalCopy.type, PhysicalCopy.status)
        .join(DataLocation, DataLocation.id == PhysicalCopy.data_location_id)
        .join(Site, Site.id == DataLocation.site_id)
        .where(*holds, PhysicalCopy.status.not_in(GONE))
        .order_by(Site.short_name, DataLocation.name)
    ).all()
    package = rdf.raw_data_package.name if rdf.raw_data_package else None
    return [
        f"{'package ' + str(package) if kind == CopyType.RAW_DATA_PACKAGE else 'a copy'} at "
        f"{qualified_location_name(site, loc)} ({status.value})"
        for site, loc, kind, status in rows
    ]


def _problem(
    session: Session, rdf: RawDataFile, source: DiskDataLocation, shown: str
) -> str | None:
    on_disk = os.path.join(source.path, rdf.relative_path)
    if os.path.lexists(on_disk):
        return (
            f"{shown}: still exists at {shown_path(on_disk)}, so it is not lost; if it is "
            "unreadable or changed, repair or restore it instead (`ccat retry` then)"
        )
    safe = _safe_elsewhere(session, rdf, source.id)
    if safe:
        return (
            f"{shown}: not lost, its bytes are safe in {', '.join(safe[:5])}; restore it from "
            "there if the SOURCE copy is needed"
        )
    package = rdf.raw_data_package
    if package is not None and package.status not in NOT_WRITTEN:
        return (
            f"{shown}: its package {package.name} is {package.status.value}; declare a file lost "
            "only while its package is PENDING or FAILED (not while a run packages it, nor after "
            "its tar was written)"
        )
    return None


def declare_files_lost(
    session: Session,
    location: DataLocation | str,
    paths: Sequence[str],
    *,
    reason: str,
    declared_by: str | None = None,
    run_id: str | None = None,
) -> DeclaredLost:
    """Declare the files at ``paths`` (relative to the location root, or absolute under it) of a
    SOURCE ``location`` lost, and let their packages go on without them (module docstring).

    Raises LostFileError, with nothing changed, for an empty reason, an unregistered path, a
    file still on disk or safe elsewhere, or a package already written or being written. Runs in
    the caller's transaction and flushes; the caller commits.
    """
    source = _source(session, location)
    name = source.qualified_name
    reason = (reason or "").strip()
    problems = [] if reason else ["give the reason (--reason): it is kept in the audit log"]
    wanted: dict[str, str] = {}  # relative path -> as shown
    for given in paths:
        relative = _relative_path(source.path, str(given))
        if relative is None:
            problems.append(f"{shown_path(given)}: outside the location root {source.path}")
        else:
            wanted[relative] = shown_path(relative)
    found = {
        rdf.relative_path: rdf
        for rdf in session.scalars(
            select(RawDataFile).where(
                RawDataFile.source_location_id == source.id,
                RawDataFile.relative_path.in_(list(wanted)),
            )
        )
    }
    result = DeclaredLost(location=name)
    new: list[RawDataFile] = []
    for relative, shown in wanted.items():
        rdf = found.get(relative)
        if rdf is None:
            problems.append(f"{shown}: not registered at {name} (see `ccat files register`)")
        elif rdf.lost_at is not None:
            result.already_lost.append(relative)
        elif problem := _problem(session, rdf, source, shown):
            problems.append(problem)
        else:
            new.append(rdf)
    if problems:
        raise LostFileError(name, problems)
    if new:
        _mark_lost(session, source, new, reason, declared_by, run_id)
        _settle_packages(
            session,
            {r.raw_data_package_id for r in new if r.raw_data_package_id is not None},
            result,
            run_id,
        )
    result.declared = [r.relative_path for r in new]
    session.flush()
    return result


def _mark_lost(
    session: Session,
    source: DiskDataLocation,
    files: list[RawDataFile],
    reason: str,
    declared_by: str | None,
    run_id: str | None,
) -> None:
    now = utcnow()
    who = declared_by or "an operator"
    text = f"declared lost by {who}: {reason}"
    ids = [r.id for r in files]
    copies = (
        session.execute(
            select(PhysicalCopy.id, PhysicalCopy.raw_data_file_id, PhysicalCopy.status).where(
                PhysicalCopy.raw_data_file_id.in_(ids), PhysicalCopy.data_location_id == source.id
            )
        )
        .tuples()
        .all()
    )
    session.execute(
        update(PhysicalCopy)
        .where(PhysicalCopy.id.in_([c for c, _, _ in copies]))
        .values(status=PhysicalCopyStatus.LOST, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(RawDataFile)
        .where(RawDataFile.id.in_(ids))
        .values(lost_at=now, lost_reason=reason)
        .execution_options(synchronize_session=False)
    )
    by_id = {r.id: r for r in files}
    evidence = {"declared_by": who, "declared_at": now.isoformat()}
    rows = [
        {
            "entity_type": "physical_copy",
            "entity_id": copy_id,
            "data_location_id": source.id,
            "old_status": status,
            "new_status": PhysicalCopyStatus.LOST,
            "reason": text,
            "run_id": run_id,
            "evidence": {**evidence, "relative_path": by_id[file_id].relative_path},
        }
        for copy_id, file_id, status in copies
        if file_id is not None  # the query asked for these files' copies
    ]
    rows += [
        {
            "entity_type": "raw_data_file",
            "entity_id": r.id,
            "data_location_id": source.id,
            "new_status": PhysicalCopyStatus.LOST,
            "reason": text,
            "run_id": run_id,
            "evidence": {
                **evidence,
                "relative_path": r.relative_path,
                "raw_data_package": r.raw_data_package.name if r.raw_data_package else None,
            },
        }
        for r in files
    ]
    audit_many(session, rows)


def _settle_packages(
    session: Session, package_ids: set[int], result: DeclaredLost, run_id: str | None
) -> None:
    """Each package of a newly lost file: packaged again without it, or closed if none is left."""
    for package in session.scalars(
        select(RawDataPackage).where(RawDataPackage.id.in_(package_ids)).order_by(RawDataPackage.id)
    ):
        left = count(
            session,
            select(func.count(RawDataFile.id)).where(
                RawDataFile.raw_data_package_id == package.id, RawDataFile.lost_at.is_(None)
            ),
        )
        if left == 0:
            close_package_without_files(session, package, run_id=run_id)
            result.packages_closed.append(package.name)
            continue
        why = f"file(s) declared lost: packaged without them ({left} file(s) left)"
        package.retry_count = 0
        package.failure_reason = None
        package.file_count = left
        if package.status != Status.PENDING:
            set_status(
                session,
                package,
                Status.PENDING,
                entity_type="raw_data_package",
                reason=why,
                run_id=run_id,
            )
        if package.state != PackageState.WAITING:
            set_status(
                session,
                package,
                PackageState.WAITING,
                entity_type="raw_data_package",
                reason=why,
                run_id=run_id,
                attr="state",
            )
        result.packages_reset[package.name] = left


def lost_files_by_package(session: Session) -> list[tuple[str, str, int, int, str]]:
    """For ``ccat status``: (package or "(no package)", obs unit x module, files lost, files in
    all, reasons) of every package (or unpackaged obs unit x module) with files declared lost,
    and what became of it, set-based."""
    rows = session.execute(
        select(
            RawDataFile.raw_data_package_id,
            ExecutedObsUnit.name,
            InstrumentModule.name,
            RawDataFile.lost_reason,
            func.count(RawDataFile.id),
        )
        .join(ExecutedObsUnit, ExecutedObsUnit.id == RawDataFile.executed_obs_unit_id)
        .join(InstrumentModule, InstrumentModule.id == RawDataFile.instrument_module_id)
        .where(RawDataFile.lost_at.is_not(None))
        .group_by(
            RawDataFile.raw_data_package_id,
            ExecutedObsUnit.name,
            InstrumentModule.name,
            RawDataFile.lost_reason,
        )
    ).all()
    if not rows:
        return []
    package_ids = {r[0] for r in rows} - {None}
    totals = dict(
        session.execute(
            select(RawDataFile.raw_data_package_id, func.count(RawDataFile.id))
            .where(RawDataFile.raw_data_package_id.in_(package_ids))
            .group_by(RawDataFile.raw_data_package_id)
        ).all()
    )
    packages = {
        p.id: p
        for p in session.scalars(select(RawDataPackage).where(RawDataPackage.id.in_(package_ids)))
    }
    merged: dict[tuple, list] = {}
    for package_id, unit, module, why, n in rows:
        entry = merged.setdefault((package_id, unit, module), [0, []])
        entry[0] += n
        entry[1].append(why or "")
    out = []
    for (package_id, unit, module), (lost, reasons) in sorted(
        merged.items(), key=lambda kv: (kv[0][1], kv[0][2])
    ):
        package = packages.get(package_id)
        name = package.name if package else "(no package)"
        total = totals.get(package_id, lost)
        if package is None:
            fate = "not packaged"
        elif lost == total:
            fate = "nothing to archive"
        else:
            fate = f"{package.state.value} without them"
        out.append(
            (name, f"{unit} x {module}", lost, total, f"{fate}; reason: " + "; ".join(reasons))
        )
    return out
