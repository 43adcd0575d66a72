"""One slice of a location's audit: list at most ``audit_slice_objects`` objects after the
cursor and compare them with the catalogue's copies in the same key range.

The slice covers the keys ``(after, last listed]``, or ``(after, end)`` when the listing ran
out (the pass is complete and the next slice starts again from the beginning). Temporaries are
never listed (``Storage.list``); the quarantine and the availability probe's objects are listed
(they count towards the slice's cost) but are not audited. At a SOURCE only lost files are
looked for: a file the catalogue does not know there is new data for the ingest, never dark.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice

from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.audit.catalogue import CatalogueCopy, copies_in_range, in_flight_keys
from ccat_dagster.lifecycle.audit.quarantine import QUARANTINE_DIR
from ccat_dagster.lifecycle.capacity.availability import PROBE_PREFIX
from ccat_dagster.storage.base import Storage
from ccat_ops_db.models import DataLocation, LocationType, PhysicalCopyStatus

#: listed, counted towards a slice's cost, never audited
NOT_AUDITED = (f"{QUARANTINE_DIR}/", PROBE_PREFIX)


@dataclass(frozen=True)
class Lost:
    key: str
    copy: CatalogueCopy
    #: the listed size (None: no object)
    size: int | None


@dataclass
class Slice:
    after: str
    #: the last key listed; None when the listing ran out (the pass ends with this slice)
    upto: str | None
    listed: int = 0
    #: objects audited plus expected copies not found: the anomaly fraction's denominator
    compared: int = 0
    dark: dict[str, int] = field(default_factory=dict)
    lost: dict[str, Lost] = field(default_factory=dict)
    #: keys compared in this slice (a finding not among them is not this slice's business)
    keys: set[str] = field(default_factory=set)

    @property
    def wraps(self) -> bool:
        return self.upto is None

    @property
    def next_after(self) -> str:
        return "" if self.upto is None else self.upto


def audits_dark(location: DataLocation) -> bool:
    return location.location_type != LocationType.SOURCE


def scan_slice(
    session: Session, location: DataLocation, storage: Storage, *, after: str, limit: int
) -> Slice:
    """List and compare one slice. Storage errors propagate: a location that cannot be listed
    proves nothing and nothing is recorded."""
    listed = list(islice(storage.list("", start_after=after), limit))
    upto = listed[-1][0] if len(listed) == limit else None
    result = Slice(after=after, upto=upto, listed=len(listed))
    objects = {key: size for key, size in listed if not key.startswith(NOT_AUDITED)}
    copies = copies_in_range(session, location, after, upto)
    known = {c.key for c in copies}
    for copy in copies:
        if copy.status != PhysicalCopyStatus.PRESENT:
            continue
        size = objects.get(copy.key)
        if size is None or (copy.size is not None and size != copy.size):
            result.lost[copy.key] = Lost(copy.key, copy, size)
    if audits_dark(location):
        unknown = [k for k in objects if k not in known]
        busy = in_flight_keys(session, location, unknown)
        result.dark = {k: objects[k] for k in unknown if k not in busy}
    result.keys = set(objects) | known
    result.compared = len(result.keys)
    return result
