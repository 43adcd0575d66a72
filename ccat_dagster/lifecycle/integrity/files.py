"""Clause (a) of ``ccat verify``: every raw data file not declared lost has at least one copy
whose bytes match, as established by the reads (:mod:`.reads`).

A file is held by its own copies (PRESENT or DELETION_POSSIBLE, at SOURCE or PROCESSING) and by
every PRESENT copy of its RawDataPackage (the tar was built from the file with its checksum
verified, so a tar that matches the package's checksum holds the file's bytes). The work is per
package, not per file: one GROUP BY counts the files of each package, a package with a copy read
good proves all its files, one whose copies were not all read leaves them unproven (sampling,
outside the scope, unreadable); only the files of packages whose every PRESENT copy was found
bad (or that have none, e.g. not packaged yet) are looked at one by one, with their own copies.
A file is a violation when every copy that could hold it was checked and found bad, or there
is none.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import groupby
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.common.chunks import CHUNK_ROWS, chunks
from ccat_dagster.lifecycle.integrity.reads import BAD, GOOD, UNPROVEN, CopyStates
from ccat_dagster.lifecycle.integrity.report import NO_GOOD_COPY, VerifyReport, Violation
from ccat_dagster.lifecycle.integrity.scope import Scope
from ccat_ops_db.models import (
    CopyType,
    PhysicalCopy,
    PhysicalCopyStatus,
    RawDataFile,
    RawDataPackage,
    table_of,
)

S = PhysicalCopyStatus
pc_t = table_of(PhysicalCopy)
rdf_t = table_of(RawDataFile)
rdp_t = table_of(RawDataPackage)
_FILE_COPY_STATUSES = (S.PRESENT, S.DELETION_POSSIBLE)


class FileCheck:
    """Evaluates clause (a) over the files of the scope."""

    def __init__(
        self, session: Session, scope: Scope, report: VerifyReport, states: CopyStates
    ) -> None:
        self.session = session
        self.scope = scope
        self.report = report
        self.states = states
        #: locations whose copies were all checked (a copy elsewhere was not read)
        self.checked = frozenset(scope.ids - states.unreadable_locations)

    def run(self) -> None:
        c = self.report.counters
        lost = sa.select(sa.func.count()).select_from(rdf_t).where(rdf_t.c.lost_at.is_not(None))
        if self.scope.limited:
            lost = lost.where(rdf_t.c.source_location_id.in_(self.scope.location_ids))
        c.files_declared_lost = self.session.scalar(lost) or 0

        candidates: dict[int, int] = {}  # package id -> files, for the per-file look
        unproven_packages: set[int] = set()
        good_file_packages = {p for p in self.states.good_files.values() if p is not None}
        for package_id, source_id, n, outside in self._files_per_package():
            in_scope = source_id in self.scope
            if package_id is None:
                continue  # unpackaged files are looked at one by one below
            state = self.states.packages.get(package_id)
            if state is None and self.scope.limited and not in_scope:
                continue  # neither its SOURCE nor a copy of its package is in the scope
            if state == GOOD:
                c.files_checked += n
                c.files_proven += n
            elif state == UNPROVEN or outside:
                c.files_checked += n
                c.files_unproven += n
                if package_id in good_file_packages:
                    unproven_packages.add(package_id)
            else:
                candidates[package_id] = candidates.get(package_id, 0) + n
        at_risk, still_held = self._without_a_usable_package_copy(sorted(candidates))
        for package_id in still_held:
            c.files_checked += candidates[package_id]
            c.files_unproven += candidates[package_id]
            if package_id in good_file_packages:
                unproven_packages.add(package_id)
        # files counted unproven with their package although a copy of their own was read good
        for package_id in self.states.good_files.values():
            if package_id in unproven_packages:
                c.files_unproven -= 1
                c.files_proven += 1
        for chunk in chunks(at_risk):
            self._look_at_files(rdf_t.c.raw_data_package_id.in_(chunk))
        unpackaged = rdf_t.c.raw_data_package_id.is_(None)
        if self.scope.limited:
            unpackaged = sa.and_(
                unpackaged, rdf_t.c.source_location_id.in_(self.scope.location_ids)
            )
        self._look_at_files(unpackaged)

    def _files_per_package(self) -> Iterable[tuple[int | None, int, int, bool]]:
        """(package id, source location id, files not declared lost, whether the package has a
        PRESENT copy at a location this run did not read) in one GROUP BY."""
        counts = (
            sa.select(
                rdf_t.c.raw_data_package_id.label("package_id"),
                rdf_t.c.source_location_id.label("source_id"),
                sa.func.count().label("n"),
            )
            .where(rdf_t.c.lost_at.is_(None))
            .group_by(rdf_t.c.raw_data_package_id, rdf_t.c.source_location_id)
            .subquery()
        )
        if self.checked == frozenset(self.scope.names):
            outside: sa.ColumnElement[bool] = sa.false()
        else:
            elsewhere = pc_t.alias("elsewhere")
            outside = (
                sa.exists()
                .where(
                    elsewhere.c.type == CopyType.RAW_DATA_PACKAGE,
                    elsewhere.c.raw_data_package_id == counts.c.package_id,
                    elsewhere.c.status == S.PRESENT,
                    elsewhere.c.data_location_id.not_in(sorted(self.checked)),
                )
                .correlate(counts)
            )
        stmt = sa.select(counts.c.package_id, counts.c.source_id, counts.c.n, outside)
        result = self.session.execute(stmt.execution_options(yield_per=10_000))
        for package_id, source_id, n, is_outside in result:
            yield package_id, source_id, n, bool(is_outside)

    def _without_a_usable_package_copy(
        self, package_ids: Sequence[int]
    ) -> tuple[list[int], list[int]]:
        """Split packages into those whose every PRESENT copy is known bad (or that have none)
        and those that still have a PRESENT copy not found bad (e.g. made meanwhile)."""
        bad = self.states.bad_package_copies
        held: set[int] = set()
        for chunk in chunks(package_ids):
            rows = self.session.execute(
                sa.select(pc_t.c.raw_data_package_id, pc_t.c.id).where(
                    pc_t.c.type == CopyType.RAW_DATA_PACKAGE,
                    pc_t.c.raw_data_package_id.in_(chunk),
                    pc_t.c.status == S.PRESENT,
                )
            )
            held.update(package_id for package_id, copy_id in rows if copy_id not in bad)
        return [p for p in package_ids if p not in held], sorted(held)

    def _look_at_files(self, condition: sa.ColumnElement[bool]) -> None:
        """The per-file verdict for files matching ``condition``, a page of files at a time."""
        after = 0
        while True:
            files = self.session.execute(
                sa.select(
                    rdf_t.c.id,
                    rdf_t.c.relative_path,
                    rdf_t.c.source_location_id,
                    rdf_t.c.raw_data_package_id,
                )
                .where(condition, rdf_t.c.lost_at.is_(None), rdf_t.c.id > after)
                .order_by(rdf_t.c.id)
                .limit(CHUNK_ROWS)
            ).all()
            if not files:
                return
            after = files[-1][0]
            copies = self.session.execute(
                sa.select(pc_t.c.raw_data_file_id, pc_t.c.id, pc_t.c.data_location_id)
                .where(
                    pc_t.c.type == CopyType.RAW_DATA_FILE,
                    pc_t.c.raw_data_file_id.in_([f[0] for f in files]),
                    pc_t.c.status.in_(_FILE_COPY_STATUSES),
                )
                .order_by(pc_t.c.raw_data_file_id)
            ).all()
            by_file = {k: list(g) for k, g in groupby(copies, key=lambda r: r[0])}
            for file_id, path, source_id, package_id in files:
                self._verdict(file_id, path, source_id, package_id, by_file.get(file_id, []))
            self.session.rollback()

    def _verdict(
        self,
        file_id: int,
        path: str,
        source_id: int,
        package_id: int | None,
        copies: Sequence[Any],  # rows of (file id, location id, status)
    ) -> None:
        c = self.report.counters
        c.files_checked += 1
        states = [
            self.states.file_copies.get(copy_id, UNPROVEN)
            if location_id in self.checked
            else UNPROVEN
            for _, copy_id, location_id in copies
        ]
        best = max(states, default=BAD)
        if best == GOOD:
            c.files_proven += 1
            return
        if best == UNPROVEN:
            c.files_unproven += 1
            return
        problems = list(self.states.package_problems.get(package_id, [])) if package_id else []
        problems += [self.states.file_copy_problems.get(cid, "?") for _, cid, _ in copies]
        if package_id is None:
            problems.append("not packaged yet")
        elif not self.states.package_problems.get(package_id):
            problems.append("its package has no PRESENT copy")
        if not copies:
            problems.append("no copy of its own in the catalogue")
        self.report.add(
            Violation(
                kind=NO_GOOD_COPY,
                location=self.scope.names.get(source_id),
                object=f"RawDataFile {path}",
                key=path,
                detail="no copy holds its bytes: " + "; ".join(problems),
            )
        )
