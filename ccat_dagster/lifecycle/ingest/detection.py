"""Detecting new, complete raw data files at a SOURCE location and filing them: the work of the
ingest sensor of each SOURCE with an ``ingest`` key in the topology (no Dagster here).

One tick walks the location root once (``os.scandir`` where it is mounted, one remote ``find``
on an instrument computer: ``source_tree``) and reads only metadata, never file contents.
Only files whose change time is at or after the cursor are looked at further, and only the ready
ones among them are looked up in the catalogue, so an idle tick over years of registered files
costs one walk, no reads and no catalogue rows. Ready files are filed through
:func:`register_raw_data_files`, the path ``ccat files register`` takes (same path safety, same
rejections, same idempotence), one obs unit and instrument module at a time.

The cursor is the change time below which every file was handled (registered, reported or
already known). It never passes a file that is not complete yet, nor the start of the scan minus
a margin (a file created while the walk runs, in a directory already walked, is seen next time).
A file that matches no pattern, a marker with no files, or a file the filing path rejects is
reported once for that version of the file, not on every tick.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.common.chunks import chunks
from ccat_dagster.lifecycle.ingest.filing import FilingError, is_utf8, shown_path
from ccat_dagster.lifecycle.ingest.source_tree import (
    IngestError as IngestError,  # re-exported: the error of a tick
)
from ccat_dagster.lifecycle.ingest.source_tree import (
    LocalSourceTree,
    SourceFile,
    SourceTree,
)
from ccat_ops_db.ingest_spec import IngestSpec
from ccat_ops_db.models import DiskDataLocation, IngestFinding, RawDataFile

#: filesystem timestamps lag the clock by up to a scheduler tick; the cursor stays this far back
CURSOR_MARGIN_NS = 1_000_000_000
#: reported files remembered (so they are reported once); the oldest are forgotten beyond this
MAX_REMEMBERED = 10_000
#: registration stops after this long in one tick; the rest is taken up by the next tick
DEFAULT_TIME_BUDGET_SECONDS = 20.0
#: names listed in a tick's metadata and messages (the counts are complete)
MAX_LISTED = 20
#: kinds of IngestFinding
UNMATCHED, LONELY_MARKER, REJECTED = "unmatched", "marker_without_files", "rejected"
CHANGED = "changed_after_filing"


@dataclass
class IngestCursor:
    """Where the previous tick stopped: the change time ``since_ns`` below which everything was
    handled, and the files reported since then (path -> change time of the reported version)."""

    since_ns: int = 0
    reported: dict[str, int] = field(default_factory=dict)
    #: IngestFinding rows of the location are open (each tick then checks whether they cleared)
    open_findings: bool = True

    def to_json(self) -> str:
        return json.dumps(
            {
                "since_ns": self.since_ns,
                "reported": self.reported,
                "open_findings": self.open_findings,
            }
        )

    @classmethod
    def from_json(cls, text: str | None) -> IngestCursor:
        """The cursor stored by a tick; a missing or unreadable one starts from the beginning
        (safe: what is registered already is skipped)."""
        try:
            data = json.loads(text or "{}")
            return cls(
                int(data.get("since_ns", 0)),
                dict(data.get("reported", {})),
                bool(data.get("open_findings", True)),
            )
        except (ValueError, TypeError, AttributeError):
            return cls()


@dataclass
class IngestTick:
    """What one tick found and did at one SOURCE."""

    location: str
    registered: int = 0
    registered_bytes: int = 0
    newest: str | None = None
    newest_ns: int = 0
    waiting: int = 0
    unmatched: list[str] = field(default_factory=list)
    markers_without_files: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    deferred: int = 0  # ready, but left for the next tick (time budget)
    cursor: IngestCursor = field(default_factory=IngestCursor)

    @property
    def news(self) -> bool:
        """Anything to show: files filed or something reported for the first time."""
        return bool(
            self.registered or self.unmatched or self.markers_without_files or self.rejected
        )

    def lines(self) -> list[str]:
        """Log lines of the tick, one per finding."""
        out = []
        if self.registered:
            out.append(
                f"{self.location}: registered {self.registered} new file(s), "
                f"{self.registered_bytes} bytes; newest {self.newest}"
            )
        for name in self.unmatched[:MAX_LISTED]:
            out.append(
                f"{self.location}: {name} matches no ingest pattern; not registered (move it, "
                "or widen ingest.pattern in the topology)"
            )
        for name in self.markers_without_files[:MAX_LISTED]:
            out.append(f"{self.location}: marker {name} has no data files beside it")
        out += [f"{self.location}: {problem}" for problem in self.rejected[:MAX_LISTED]]
        hidden = sum(
            max(0, len(x) - MAX_LISTED)
            for x in (self.unmatched, self.markers_without_files, self.rejected)
        )
        if hidden:
            out.append(f"{self.location}: ... and {hidden} more finding(s) of this tick")
        return out


def _unshown(shown: str) -> str:
    """The file name behind :func:`shown_path` (``\\xNN`` back to the byte)."""
    raw = re.sub(rb"\\x([0-9a-f]{2})", lambda m: bytes([int(m.group(1), 16)]), shown.encode())
    return os.fsdecode(raw)


def _already_registered(session: Session, location_id: int, paths: list[str]) -> dict[str, int]:
    """relative path -> filed size, of the ``paths`` that are in the catalogue."""
    known: dict[str, int] = {}
    for chunk in chunks(paths):
        rows = session.execute(
            select(RawDataFile.relative_path, RawDataFile.size).where(
                RawDataFile.source_location_id == location_id,
                RawDataFile.relative_path.in_(chunk),
            )
        )
        known.update((path, size) for path, size in rows)
    return known


class _Tick:
    def __init__(
        self,
        session: Session,
        location: DiskDataLocation,
        spec: IngestSpec,
        cursor: IngestCursor,
        tree: SourceTree,
    ) -> None:
        self.session, self.location, self.spec, self.cursor = session, location, spec, cursor
        self.tree = tree
        self.result = IngestTick(location.qualified_name)
        self.remembered: dict[str, int] = {}  # reported files -> change time, for the next cursor
        self.findings: dict[str, tuple[str, str]] = {}  # shown path -> (kind, message), new ones
        self.filed_paths: set[str] = set()
        self.markers: dict[str, int | None] = {}  # marker -> its change time (None: absent)

    def report(self, path: str, changed_ns: int, into: list[str], kind: str, message: str) -> None:
        """Add ``message`` to ``into`` (and an IngestFinding of ``kind``) unless this version of
        ``path`` was reported before."""
        if self.cursor.reported.get(path) != changed_ns:
            into.append(message)
            self.findings[shown_path(path)] = (kind, message)
        self.remembered[path] = changed_ns

    def run(self, *, now_ns: int, budget_seconds: float) -> IngestTick:
        spec, result = self.spec, self.result
        held: list[int] = []  # change times of the files this tick leaves unhandled
        ready: dict[tuple[str, str], list[SourceFile]] = {}
        new_markers: list[SourceFile] = []
        data: list[str] = []  # data files of this scan, matched to a pattern
        for f in self.tree.scan(self.cursor.since_ns):
            if f.symlink:
                message = (
                    f"{shown_path(f.relative)}: a symlink at a SOURCE on another host is not "
                    "followed; copy the data under the location root instead of linking to it"
                )
                self.report(f.relative, f.changed_ns, result.rejected, REJECTED, message)
                continue
            if spec.marker_regex is not None and spec.marker_regex.fullmatch(f.relative):
                new_markers.append(f)
                continue
            match = spec.pattern_regex.fullmatch(f.relative)
            if match is None:
                shown = shown_path(f.relative)
                self.report(f.relative, f.changed_ns, result.unmatched, UNMATCHED, shown)
                continue
            values = match.groupdict()
            data.append(f.relative)
            if not self._complete(f, values, now_ns):
                result.waiting += 1
                held.append(f.changed_ns)
                continue
            ready.setdefault((values["obs_unit"], values["instrument_module"]), []).append(f)
        for marker in new_markers:
            if not self._has_data(marker.relative, data):
                shown = shown_path(marker.relative)
                kind = LONELY_MARKER
                self.report(
                    marker.relative, marker.changed_ns, result.markers_without_files, kind, shown
                )
        held += self._register(ready, budget_seconds)
        open_findings = self._record_findings()
        next_since = max(0, min([now_ns - CURSOR_MARGIN_NS, *held]))
        kept = {k: v for k, v in self.remembered.items() if v >= next_since}
        if len(kept) > MAX_REMEMBERED:
            kept = dict(sorted(kept.items(), key=lambda kv: kv[1])[-MAX_REMEMBERED:])
        result.cursor = IngestCursor(next_since, kept, open_findings)
        return result

    def _record_findings(self) -> bool:
        """Store this tick's new findings and drop those that cleared (the file was filed, or is
        gone); whether any is left open. No SQL when there is nothing open and nothing new."""
        if not (self.findings or self.cursor.open_findings or self.filed_paths):
            return False
        rows = self.session.scalars(
            select(IngestFinding).where(IngestFinding.data_location_id == self.location.id)
        ).all()
        present = self.tree.existing(
            {_unshown(row.relative_path) for row in rows}
            - {_unshown(p) for p in (*self.findings, *self.filed_paths)}
        )
        open_rows = 0
        for row in rows:
            path = row.relative_path
            gone = _unshown(path) not in present
            if path in self.findings or path in self.filed_paths or gone:
                self.session.delete(row)  # replaced below, or cleared
            else:
                open_rows += 1
        self.session.flush()
        for path, (kind, message) in self.findings.items():
            self.session.add(
                IngestFinding(
                    data_location_id=self.location.id,
                    relative_path=path,
                    kind=kind,
                    message=message,
                )
            )
        self.session.commit()
        return bool(open_rows or self.findings)

    def _complete(self, f: SourceFile, values: dict[str, str], now_ns: int) -> bool:
        marker = self.spec.marker_for(values)
        if marker is None:
            return now_ns - f.changed_ns >= self.spec.settle_seconds * 1_000_000_000
        directory = marker.rpartition("/")[0]
        if directory and not f.relative.startswith(directory + "/"):
            return False
        if marker not in self.markers:
            self.markers[marker] = self.tree.changed_ns(marker)
        marked = self.markers[marker]
        # a file changed after its marker is still being written
        return marked is not None and f.changed_ns <= marked

    def _has_data(self, marker: str, scanned: list[str]) -> bool:
        """Whether a data file of the marker's obs unit and module lies under its directory:
        one of this scan's files, else one the tree lists (a walk of that directory)."""
        assert self.spec.marker_regex is not None
        match = self.spec.marker_regex.fullmatch(marker)
        key = _marker_key(self.spec, match.groupdict()) if match else ()
        directory = marker.rpartition("/")[0]
        near = [r for r in scanned if not directory or r.startswith(directory + "/")]
        for relative in itertools.chain(near, self.tree.files_under(directory)):
            if self.spec.marker_regex.fullmatch(relative):
                continue  # a marker is not data
            found = self.spec.pattern_regex.fullmatch(relative)
            if found is not None and _marker_key(self.spec, found.groupdict()) == key:
                return True
        return False

    def _register(self, ready: dict[tuple[str, str], list[SourceFile]], budget: float) -> list[int]:
        """File the ready files, oldest group first, within ``budget`` seconds; the change
        times of the files left for the next tick."""
        result = self.result
        # a name that is not UTF-8 cannot be in the catalogue (the filing path rejects it)
        paths = [f.relative for group in ready.values() for f in group if is_utf8(f.relative)]
        known = _already_registered(self.session, self.location.id, paths) if paths else {}
        for f in (f for group in ready.values() for f in group if f.relative in known):
            if f.size != known[f.relative]:
                message = (
                    f"{shown_path(f.relative)}: changed since it was filed (size now {f.size}, "
                    f"filed with {known[f.relative]}); the new bytes are not filed and the file "
                    "is never deleted by the rules: write new data under a new file name"
                )
                self.report(f.relative, f.changed_ns, result.rejected, CHANGED, message)
        groups = sorted(
            ((key, [f for f in group if f.relative not in known]) for key, group in ready.items()),
            key=lambda kv: min((f.changed_ns for f in kv[1]), default=0),
        )
        deadline = time.monotonic() + budget
        held: list[int] = []
        for (obs_unit, module), group in groups:
            if not group:
                continue
            if result.registered and time.monotonic() > deadline:  # at least one group a tick
                result.deferred += len(group)
                held += [f.changed_ns for f in group]
                continue
            for filed in self._file_group(obs_unit, module, group):
                self.filed_paths.add(filed.relative)
                result.registered += 1
                result.registered_bytes += filed.size
                if filed.changed_ns >= result.newest_ns:
                    result.newest, result.newest_ns = filed.relative, filed.changed_ns
        return held

    def _file_group(self, obs_unit: str, module: str, group: list[SourceFile]) -> list[SourceFile]:
        """The files of one obs unit and module that were filed; one bad file does not keep
        the others out (they are then filed one by one, and its problem reported once)."""
        try:
            self._file(obs_unit, module, group)
            return group
        except FilingError:
            self.session.rollback()
        filed = []
        for f in group:
            try:
                self._file(obs_unit, module, [f])
                filed.append(f)
            except FilingError as exc:
                self.session.rollback()
                message = "; ".join(exc.problems)
                self.report(f.relative, f.changed_ns, self.result.rejected, REJECTED, message)
        return filed

    def _file(self, obs_unit: str, module: str, group: list[SourceFile]) -> None:
        self.tree.register(self.session, self.location, obs_unit, module, group)
        self.session.commit()


def ingest_tick(
    session: Session,
    location: DiskDataLocation,
    spec: IngestSpec,
    cursor: IngestCursor,
    *,
    now_ns: int | None = None,
    budget_seconds: float = DEFAULT_TIME_BUDGET_SECONDS,
    tree: SourceTree | None = None,
) -> IngestTick:
    """One detection tick at ``location``: file the new complete files, report the rest once.

    ``tree`` is how the location's files are reached (default: mounted here). Commits each obs
    unit and module it files. Raises IngestError when the root cannot be listed. The returned
    tick's ``cursor`` is what the next tick starts from."""
    now = time.time_ns() if now_ns is None else now_ns
    tree = tree or LocalSourceTree(location.qualified_name, location.path)
    tick = _Tick(session, location, spec, cursor, tree)
    return tick.run(now_ns=now, budget_seconds=budget_seconds)


def _marker_key(spec: IngestSpec, values: dict[str, str]) -> tuple:
    marker = spec.marker or ""
    return tuple(sorted((k, v) for k, v in values.items() if "{" + k + "}" in marker))
