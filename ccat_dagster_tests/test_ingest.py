"""Detecting new raw data files at a SOURCE (``lifecycle/ingest/detection.py``): complete files
only (marker or settled), filed through the filing path, findings reported once, and an idle
tick that reads no file and no catalogue rows."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import event, func, select

from ccat_dagster.lifecycle.common.locations import resolve_location
from ccat_dagster.lifecycle.ingest import filing
from ccat_dagster.lifecycle.ingest.detection import (
    IngestCursor,
    IngestError,
    IngestTick,
    ingest_tick,
)
from ccat_dagster.simulate import demo_topology
from ccat_ops_db.checksum import checksum_file
from ccat_ops_db.ingest_spec import IngestSpec
from ccat_ops_db.models import PhysicalCopyStatus, RawDataFile, RawDataFilePhysicalCopy
from ccat_ops_db.topology import apply_topology

SOURCE = "ccat/primecam_raw_data"
MARKER = IngestSpec(
    pattern="{obs_unit}/{instrument_module}/*",
    ready="marker",
    marker="{obs_unit}/{instrument_module}/.complete",
)
SETTLED = IngestSpec(pattern="{obs_unit}/{instrument_module}/**", settle_seconds=1)


@pytest.fixture
def root(session, tmp_path) -> Path:
    apply_topology(session, demo_topology(tmp_path / "home"))
    session.commit()
    return tmp_path / "home" / "ccat" / "primecam_raw_data"


class Ticker:
    """Consecutive ticks at the SOURCE, each starting from the previous one's cursor."""

    def __init__(self, session, spec: IngestSpec) -> None:
        self.session, self.spec, self.cursor = session, spec, IngestCursor()

    def __call__(self, **kwargs) -> IngestTick:
        location = resolve_location(self.session, SOURCE)
        tick = ingest_tick(self.session, location, self.spec, self.cursor, **kwargs)
        self.cursor = IngestCursor.from_json(tick.cursor.to_json())  # as the sensor stores it
        return tick


def _write(path: Path, data: bytes = b"x" * 1000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _registered(session) -> dict[str, RawDataFile]:
    session.expire_all()
    return {r.relative_path: r for r in session.scalars(select(RawDataFile))}


def test_files_are_registered_once_their_marker_exists(session, root):
    tick = Ticker(session, MARKER)
    files = [_write(root / "obs1" / "pcam_280" / f"f{i}.fits", bytes([i]) * 3000) for i in range(3)]
    first = tick()
    assert (first.registered, first.waiting) == (0, 3)
    assert _registered(session) == {}

    _write(root / "obs1" / "pcam_280" / ".complete", b"")
    second = tick()
    assert (second.registered, second.waiting, second.registered_bytes) == (3, 0, 9000)
    rows = _registered(session)
    assert set(rows) == {f"obs1/pcam_280/f{i}.fits" for i in range(3)}
    for path in files:
        row = rows[path.relative_to(root).as_posix()]
        assert row.checksum == checksum_file(path)[0]
        assert row.executed_obs_unit.name == "obs1"
        assert row.instrument_module.name == "pcam_280"
    copies = session.scalars(select(RawDataFilePhysicalCopy)).all()
    assert [c.status for c in copies] == [PhysicalCopyStatus.PRESENT] * 3
    assert ".complete" not in " ".join(rows), "a marker is not data"


def test_idle_tick_reads_no_file_and_no_catalogue_row(session, root, monkeypatch):
    tick = Ticker(session, MARKER)
    for unit in range(20):
        for i in range(5):
            _write(root / f"obs{unit}" / "pcam_280" / f"f{i}.fits")
        _write(root / f"obs{unit}" / "pcam_280" / ".complete", b"")
    assert tick().registered == 100
    time.sleep(1.1)  # past the cursor margin: nothing is new any more
    tick()

    reads, statements = [], []
    monkeypatch.setattr(filing, "checksum_file", lambda *a, **k: reads.append(a))
    location = resolve_location(session, SOURCE)
    assert location.id
    assert location.path
    assert location.qualified_name
    bind = session.get_bind()
    listener = lambda *a, **k: statements.append(a[2])  # noqa: E731 - the SQL text
    event.listen(bind, "before_cursor_execute", listener)
    try:
        idle = ingest_tick(session, location, MARKER, tick.cursor)
    finally:
        event.remove(bind, "before_cursor_execute", listener)
    assert (idle.registered, idle.waiting, idle.news) == (0, 0, False)
    assert reads == [], "an idle tick reads no file content"
    assert statements == [], "an idle tick loads no catalogue rows"


def test_a_file_being_appended_is_never_registered_until_it_settles(session, root):
    tick = Ticker(session, SETTLED)
    path = root / "obs1" / "pcam_280" / "growing.fits"
    path.parent.mkdir(parents=True)
    stop = threading.Event()

    def writer() -> None:
        with open(path, "ab") as out:
            while not stop.is_set():
                out.write(os.urandom(512))
                out.flush()
                time.sleep(0.05)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:  # the sensor ticks while the instrument writes
            assert tick().registered == 0
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
    assert _registered(session) == {}
    time.sleep(SETTLED.settle_seconds + 0.2)
    assert tick().registered == 1
    row = _registered(session)["obs1/pcam_280/growing.fits"]
    assert (row.size, row.checksum) == (path.stat().st_size, checksum_file(path)[0])


def test_a_file_changed_after_its_marker_waits(session, root):
    tick = Ticker(session, MARKER)
    _write(root / "obs1" / "pcam_280" / ".complete", b"")
    time.sleep(0.05)
    _write(root / "obs1" / "pcam_280" / "late.fits")
    assert (tick().registered, tick().waiting) == (0, 1)
    time.sleep(0.05)
    _write(root / "obs1" / "pcam_280" / ".complete", b"")  # the instrument marks it again
    assert tick().registered == 1


def test_unmatched_files_lonely_markers_and_rejections_are_reported_once(session, root):
    tick = Ticker(session, MARKER)
    _write(root / "stray.fits")
    _write(root / "obs2" / "pcam_280" / ".complete", b"")
    good = _write(root / "obs1" / "pcam_280" / "good.fits")
    bad = root / "obs1" / "pcam_280" / os.fsdecode(b"bad-\xff.fits")
    _write(bad)
    _write(root / "obs1" / "pcam_280" / ".complete", b"")
    first = tick()
    assert first.unmatched == ["stray.fits"]
    assert first.markers_without_files == ["obs2/pcam_280/.complete"]
    [rejected] = first.rejected
    assert "not valid UTF-8" in rejected
    assert "bad-\\xff.fits" in rejected
    assert first.registered == 1, "the good file of the same obs unit is filed all the same"
    assert set(_registered(session)) == {good.relative_to(root).as_posix()}
    assert any("matches no ingest pattern" in line for line in first.lines())

    again = tick()
    assert (again.unmatched, again.markers_without_files, again.rejected) == ([], [], [])
    assert again.news is False
    time.sleep(1.1)
    assert tick().news is False, "nor after the cursor has passed them"

    _write(root / "stray.fits", b"new content")  # a new version is news again
    assert tick().unmatched == ["stray.fits"]


def test_findings_are_listed_by_status_until_they_clear(session, root):
    from ccat_dagster.cli._summary import render_summary
    from ccat_dagster.lifecycle.summary import pipeline_summary

    tick = Ticker(session, MARKER)
    stray = _write(root / "stray.fits")
    lonely = _write(root / "obs2" / "pcam_280" / ".complete", b"")
    bad = _write(root / "obs1" / "pcam_280" / os.fsdecode(b"bad-\xff.fits"))
    _write(root / "obs1" / "pcam_280" / ".complete", b"")
    tick()
    findings = {(kind, path) for _, kind, path, _ in pipeline_summary(session).ingest_findings}
    assert findings == {
        ("unmatched", "stray.fits"),
        ("marker_without_files", "obs2/pcam_280/.complete"),
        ("rejected", "obs1/pcam_280/bad-\\xff.fits"),
    }
    text = render_summary(pipeline_summary(session))
    assert "NOT FILED BY ITS INGEST SENSOR: 3" in text
    assert "ccat/primecam_raw_data stray.fits: unmatched" in text
    assert "not valid UTF-8" in text

    time.sleep(1.1)
    tick()  # nothing new: the findings stay listed
    assert len(pipeline_summary(session).ingest_findings) == 3

    # the operator fixes them: the stray file moved away, the marker removed, the file renamed
    stray.rename(root.parent / "stray.fits")
    lonely.unlink()
    bad.rename(bad.with_name("good.fits"))
    assert tick().waiting == 1, "renamed after its marker: waits for the marker again"
    time.sleep(0.05)
    _write(root / "obs1" / "pcam_280" / ".complete", b"")
    assert tick().registered == 1
    session.expire_all()
    assert pipeline_summary(session).ingest_findings == []
    assert "NOT FILED" not in render_summary(pipeline_summary(session))


def test_a_file_changed_after_it_was_filed_is_reported_once_not_filed_again(session, root):
    from ccat_dagster.lifecycle.summary import pipeline_summary

    tick = Ticker(session, SETTLED)
    path = _write(root / "obs1" / "pcam_280" / "a.fits")
    time.sleep(SETTLED.settle_seconds + 0.1)
    assert tick().registered == 1
    with open(path, "ab") as out:
        out.write(b"more")
    time.sleep(SETTLED.settle_seconds + 0.1)
    changed = tick()
    [message] = changed.rejected
    assert "changed since it was filed (size now 1004, filed with 1000)" in message
    assert tick().rejected == []
    kinds = [kind for _, kind, _, _ in pipeline_summary(session).ingest_findings]
    assert kinds == ["changed_after_filing"]
    assert _registered(session)["obs1/pcam_280/a.fits"].size == 1000


def test_files_registered_by_hand_are_skipped_without_error(session, root):
    path = _write(root / "obs1" / "pcam_280" / "a.fits")
    _write(root / "obs1" / "pcam_280" / ".complete", b"")
    filing.register_raw_data_files(session, SOURCE, "obs1", "pcam_280", [path])
    session.commit()
    tick = Ticker(session, MARKER)()
    assert (tick.registered, tick.rejected) == (0, [])
    assert session.scalar(select(func.count()).select_from(RawDataFile)) == 1


def test_a_file_copied_in_with_an_old_mtime_is_still_found(session, root):
    tick = Ticker(session, SETTLED)
    assert tick().registered == 0
    time.sleep(1.1)
    tick()  # the cursor is now past "now - margin"
    path = _write(root / "obs1" / "pcam_280" / "copied.fits")
    os.utime(path, (946_684_800, 946_684_800))  # cp -p: an mtime from 2000; the ctime is now
    time.sleep(SETTLED.settle_seconds + 0.1)
    assert tick().registered == 1


def test_a_missing_root_is_a_clear_error_and_nothing_is_written(session, root):
    root.rename(root.with_name("moved_away"))
    with pytest.raises(IngestError, match=r"cannot list the root .*primecam_raw_data.*mounted"):
        Ticker(session, MARKER)()
    assert _registered(session) == {}


def test_ticks_left_over_by_the_time_budget_are_taken_up_next(session, root):
    tick = Ticker(session, SETTLED)
    for unit in range(3):
        _write(root / f"obs{unit}" / "pcam_280" / "a.fits")
    time.sleep(SETTLED.settle_seconds + 0.1)
    first = tick(budget_seconds=0)  # only the first group fits
    assert (first.registered, first.deferred) == (1, 2)
    assert tick().registered == 2
    assert len(_registered(session)) == 3
