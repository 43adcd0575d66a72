"""``verify_catalogue``: the invariant of the archive, checked against the storage.

Runs the clauses in order -- reads of every checked location (archives first), (b) archive
presence, (c) no archive deletion, (d) deletion records, (a) every raw file held by a good copy,
then (f) stale temporary files and (g) dead runs when the caller supplies them -- and returns one
:class:`VerifyReport`. It only reads: the ops DB (its transaction is ended between pages) and the
storages through ``storage_for``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.integrity.catalogue import (
    check_archive_deletions,
    check_archive_presence,
    check_deletion_records,
)
from ccat_dagster.lifecycle.integrity.files import FileCheck
from ccat_dagster.lifecycle.integrity.reads import CopyStates, LocationReader, Progress, StorageFor
from ccat_dagster.lifecycle.integrity.report import (
    DEAD_RUN,
    STALE_TEMPORARY,
    UNREADABLE,
    VerifyReport,
    Violation,
)
from ccat_dagster.lifecycle.integrity.scope import Scope, VerifyScopeError, resolve_scope
from ccat_dagster.storage.base import Storage
from ccat_ops_db.models import DataLocation, utcnow

#: lists the temporary files at a location that are older than any run could be:
#: (key, detail) per file
StaleTemporaries = Callable[[DataLocation, Storage], Iterable[tuple[str, str]]]

DEFAULT_WORKERS = 4
DEFAULT_PAGE_SIZE = 1000
#: read errors at one location after which it is reported unreadable and left
DEFAULT_MAX_ERRORS = 20
NOT_CHECKED_TEMPORARIES = (
    "(f) temporary files older than a run: no lister of temporary files was given"
)
NOT_CHECKED_RUNS = "(g) runs STARTED without a live process: no list of dead runs was given"


def _names(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def verify_catalogue(
    session: Session,
    storage_for: StorageFor,
    *,
    site: str | Sequence[str] | None = None,
    location: str | Sequence[str] | None = None,
    sample: float | None = None,
    seed: int | None = None,
    stale_temporaries: StaleTemporaries | None = None,
    dead_runs: Iterable[tuple[str, str]] | None = None,
    workers: int = DEFAULT_WORKERS,
    page_size: int = DEFAULT_PAGE_SIZE,
    max_errors_per_location: int = DEFAULT_MAX_ERRORS,
    progress: Progress | None = None,
) -> VerifyReport:
    """Check the catalogue against the storage; see docs/operations.md, "Verifying the archive".

    ``site``/``location`` (one name or several; ``site/name`` for locations) limit the copies
    that are read and the catalogue clauses to those locations; ``sample`` (0 < f <= 1, default
    1) is the fraction of objects whose bytes are read (every copy is still stat'ed), chosen
    deterministically from ``seed`` (default 0). ``stale_temporaries`` and ``dead_runs`` ((run
    id, detail) pairs) feed clauses (f) and (g); without them the report says they were not
    checked. ``progress(stage, done, total)`` is called as copies are read. Raises
    VerifyScopeError (or LocationError) for an unknown site or location and ValueError for a
    bad sample, before anything is read.
    """
    if sample is None:
        sample = 1.0
    if not 0 < sample <= 1:
        raise ValueError(f"sample must be a fraction in (0, 1], e.g. 0.01 for 1 %; got {sample}")
    scope = resolve_scope(session, sites=_names(site), locations=_names(location))
    report = VerifyReport(
        started_at=utcnow(),
        locations=[scope.names[i] for i in scope.location_ids],
        scoped=scope.limited,
        sample=sample,
        seed=seed or 0,
    )
    report.counters.locations = len(scope.location_ids)
    states = CopyStates()
    reader = LocationReader(
        session,
        scope,
        report,
        states,
        storage_for=storage_for,
        sample=sample,
        seed=report.seed,
        workers=workers,
        page_size=page_size,
        max_errors=max_errors_per_location,
        progress=progress,
    )
    totals = reader.totals()
    for location_id in scope.location_ids:
        reader.read(location_id, totals.get(location_id, {}))
    check_archive_presence(session, scope, report)
    check_archive_deletions(session, scope, report)
    check_deletion_records(session, scope, report)
    session.rollback()
    FileCheck(session, scope, report, states).run()
    _check_temporaries(session, scope, report, storage_for, stale_temporaries)
    if dead_runs is None:
        report.not_checked.append(NOT_CHECKED_RUNS)
    else:
        for run_id, detail in dead_runs:
            report.add(Violation(DEAD_RUN, None, f"run {run_id}", None, detail))
    session.rollback()
    report.finished_at = utcnow()
    return report


def _check_temporaries(
    session: Session,
    scope: Scope,
    report: VerifyReport,
    storage_for: StorageFor,
    stale_temporaries: StaleTemporaries | None,
) -> None:
    if stale_temporaries is None:
        report.not_checked.append(NOT_CHECKED_TEMPORARIES)
        return
    for location_id in scope.location_ids:
        name = scope.names[location_id]
        try:
            location = session.get_one(DataLocation, location_id)
            storage = storage_for(location)
            found = list(stale_temporaries(location, storage))
        except Exception as exc:  # noqa: BLE001 - reported, the other locations go on
            report.add(
                Violation(
                    UNREADABLE,
                    name,
                    "location",
                    None,
                    f"cannot list temporary files: {type(exc).__name__}: {exc}",
                    check="f",
                )
            )
            continue
        for key, detail in found:
            report.add(Violation(STALE_TEMPORARY, name, "temporary file", key, detail))


__all__ = ["StaleTemporaries", "VerifyScopeError", "verify_catalogue"]
