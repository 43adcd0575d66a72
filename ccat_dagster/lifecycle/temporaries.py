"""Temporaries left by killed runs: partial files in a location's ``.ccat-partial/`` directory,
unpack directories, unfinished S3 multipart uploads. A temporary is never a catalogued copy (the
bytes it holds still exist where they were read from), so one that no live run can still be
writing is removed. Which time that is comes from the caller (the Dagster layer knows the oldest
run in flight); this module lists and removes, location by location, through the Storage
interface, without walking any location's objects.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from ccat_dagster.storage.base import Storage, TemporaryObject
from ccat_ops_db.models import DataLocation

StorageFor = Callable[[DataLocation], Storage]


@dataclass(frozen=True)
class StaleTemporary:
    location: str  # site/location, e.g. "ccat/telescope_buffer"
    temporary: TemporaryObject

    def describe(self) -> str:
        return f"{self.location}: {self.temporary.describe()}"


@dataclass
class TemporariesReport:
    """What a listing or a sweep found: stale temporaries (removed unless a dry run), how many
    younger ones were left alone, and the locations that could not be listed or cleaned."""

    older_than: datetime
    stale: list[StaleTemporary] = field(default_factory=list)
    removed: list[StaleTemporary] = field(default_factory=list)
    younger: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def removed_bytes(self) -> int:
        return sum(t.temporary.size for t in self.removed)

    def summary(self) -> str:
        lines = [
            f"temporaries older than {self.older_than.isoformat()}: {len(self.stale)} found, "
            f"{len(self.removed)} removed ({self.removed_bytes} bytes), {self.younger} younger kept"
        ]
        lines += [f"  removed {t.describe()}" for t in self.removed]
        lines += [f"  ERROR: {e}" for e in self.errors]
        return "\n".join(lines)


def stale_temporaries(
    locations: Sequence[DataLocation], storage_for: StorageFor, *, older_than: datetime
) -> TemporariesReport:
    """Temporaries at ``locations`` last written before ``older_than`` (an aware UTC time).
    Reads only; a location that cannot be listed is reported in ``errors``."""
    report = TemporariesReport(older_than=older_than)
    for location in locations:
        try:
            for temporary in storage_for(location).list_temporaries():
                if temporary.modified_at < older_than:
                    report.stale.append(StaleTemporary(location.qualified_name, temporary))
                else:
                    report.younger += 1
        except Exception as exc:  # noqa: BLE001 - an unreachable location must not stop the rest
            report.errors.append(f"cannot list the temporaries of {location.qualified_name}: {exc}")
    return report


def temporaries_older_than(
    older_than: datetime,
) -> Callable[[DataLocation, Storage], list[tuple[str, str]]]:
    """For ``ccat verify`` (clause f): a lister of (name, detail) per temporary at a location
    last written before ``older_than``."""

    def lister(location: DataLocation, storage: Storage) -> list[tuple[str, str]]:
        return [
            (t.name, f"{t.describe()}: written before {older_than.isoformat()}, by no run")
            for t in storage.list_temporaries()
            if t.modified_at < older_than
        ]

    return lister


def sweep_temporaries(
    locations: Sequence[DataLocation],
    storage_for: StorageFor,
    *,
    older_than: datetime,
    dry_run: bool = False,
) -> TemporariesReport:
    """Remove the temporaries at ``locations`` last written before ``older_than``: the caller
    guarantees no live process writes anything that old (the start of the oldest run in flight,
    minus a margin for clock skew). A failed removal is reported and the rest goes on."""
    report = stale_temporaries(locations, storage_for, older_than=older_than)
    if dry_run:
        return report
    by_name = {loc.qualified_name: loc for loc in locations}
    for stale in report.stale:
        try:
            if storage_for(by_name[stale.location]).remove_temporary(stale.temporary):
                report.removed.append(stale)
        except Exception as exc:  # noqa: BLE001 - reported; the next sweep tries again
            report.errors.append(f"cannot remove the temporary {stale.describe()}: {exc}")
    return report
