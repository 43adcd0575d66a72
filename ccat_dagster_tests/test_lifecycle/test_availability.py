"""Location availability: marking from an observing site, backoff of probes, probes over the real
local Storage, and what work waits for (on SQLite and PostgreSQL)."""

from __future__ import annotations

import itertools
import shutil
from datetime import timedelta

from sqlalchemy import select

from ccat_dagster.lifecycle.capacity import availability as av
from ccat_dagster.lifecycle.common.policy import BufferThresholds, Policy
from ccat_dagster.storage.errors import LocationFullError, LocationUnavailableError
from ccat_dagster_tests import factories as f
from ccat_ops_db.models import AuditLog, LocationAvailability, utcnow


def _trail(session, location) -> list[tuple[str, str]]:
    return [
        (a.old_status, a.new_status)
        for a in session.scalars(
            select(AuditLog)
            .where(AuditLog.entity_type == "data_location", AuditLog.entity_id == location.id)
            .order_by(AuditLog.id)
        )
    ]


def test_probe_delay_doubles_from_15_seconds_and_is_capped_at_10_minutes():
    delays = [av.probe_delay(n).total_seconds() for n in range(1, 10)]
    assert delays[:6] == [15, 30, 60, 120, 240, 480]
    assert delays[6:] == [600, 600, 600]
    assert all(a <= b for a, b in itertools.pairwise(delays))
    assert av.probe_delay(10_000) == timedelta(minutes=10)


def test_marking_counts_failures_backs_off_and_audits_only_changes(session, topo):
    lta = topo.lta("cologne")
    t0 = utcnow()
    first = av.mark_unavailable(session, lta, observer="cologne", reason="root missing", now=t0)
    t1 = t0 + timedelta(seconds=20)
    second = av.mark_unavailable(session, lta, observer="cologne", reason="still", now=t1)
    session.commit()
    assert (first.consecutive_failures, second.consecutive_failures) == (1, 2)
    assert first.next_probe_at == t0 + timedelta(seconds=15)
    assert second.next_probe_at == t1 + timedelta(seconds=30)
    assert second.since == t0, "since is when it became unavailable"
    assert _trail(session, lta) == [("AVAILABLE", "UNAVAILABLE")]

    # per observer: the same location answers from another site
    assert av.unavailability(session, "us").blocks(lta.id, write=False) is None
    [row] = av.unavailable_locations(session, observer="cologne")
    assert (row.location, row.observer, row.reason) == ("cologne/lta", "cologne", "still")

    assert av.mark_available(session, lta, observer="cologne") is True
    assert av.mark_available(session, lta, observer="cologne") is False
    session.commit()
    assert av.unavailable_locations(session) == []
    assert _trail(session, lta) == [("AVAILABLE", "UNAVAILABLE"), ("UNAVAILABLE", "AVAILABLE")]
    stored = session.get(LocationAvailability, (lta.id, "cologne"))
    assert stored.available
    assert stored.reason == "still"


def test_failing_again_soon_after_a_recovery_keeps_backing_off(session, topo):
    """A disk with room for the probe but not for the work must not be retried every 15 s."""
    lta = topo.lta("cologne")
    t0 = utcnow()
    av.mark_unavailable(session, lta, observer="cologne", reason="full", now=t0)
    av.mark_unavailable(session, lta, observer="cologne", reason="full", now=t0)
    t1 = t0 + timedelta(seconds=40)
    av.mark_available(session, lta, observer="cologne", now=t1)
    again = av.mark_unavailable(session, lta, observer="cologne", reason="full", now=t1)
    assert again.consecutive_failures == 3
    assert again.next_probe_at == t1 + timedelta(seconds=60)
    t2 = t1 + timedelta(hours=1)
    av.mark_available(session, lta, observer="cologne", now=t2)
    t3 = t2 + timedelta(hours=1)
    later = av.mark_unavailable(session, lta, observer="cologne", reason="x", now=t3)
    assert later.consecutive_failures == 1, "a new outage starts the backoff again"


def test_due_probes_and_making_every_probe_due_now(session, topo):
    lta, buffer = topo.lta("cologne"), topo.buffer("cologne")
    now = utcnow()
    av.mark_unavailable(session, lta, observer="cologne", reason="x", now=now)
    av.mark_unavailable(session, buffer, observer="us", reason="y", now=now)
    session.commit()
    assert av.due_probes(session, observer="cologne", now=now) == []
    assert av.due_probes(session, observer="cologne", now=now + timedelta(seconds=15)) == [lta]
    assert av.make_probes_due(session, observer="cologne") == 1
    assert av.due_probes(session, observer="cologne") == [lta]
    assert av.due_probes(session, observer="us") == []
    assert av.make_probes_due(session) == 2
    assert av.due_probes(session, observer="us") == [buffer]


def test_a_location_error_is_resolved_to_its_location(session, topo):
    error = LocationUnavailableError("gone", location="cologne/lta", key="k")
    row = av.record_location_error(session, error, observer="cologne")
    assert row is not None
    assert row.location_id == topo.lta("cologne").id
    unknown = LocationUnavailableError("gone", location="nowhere/lta")
    assert av.record_location_error(session, unknown, observer="cologne") is None
    assert av.record_location_error(session, LocationUnavailableError("x"), observer="c") is None


def test_probe_over_real_storage_keeps_it_unavailable_until_the_root_is_back(session, topo):
    lta = topo.lta("cologne")
    root = f.object_path(lta, "")
    away = root.with_name("lta.away")
    shutil.move(root, away)
    storage = f.local_storage_for(lta)
    av.mark_unavailable(session, lta, observer="cologne", reason="root missing")
    session.commit()

    result = av.probe_and_record(session, lta, storage, observer="cologne")
    assert not result.ok
    assert "missing" in result.detail
    row = session.get(LocationAvailability, (lta.id, "cologne"))
    assert row.consecutive_failures == 2
    assert row.last_probe_at is not None
    assert not root.exists(), "a probe never creates the root"

    shutil.move(away, root)
    av.make_probes_due(session)
    [(probed, result)] = av.probe_due_locations(session, f.local_storage_for, observer="cologne")
    assert probed.id == lta.id
    assert result.ok
    assert result.recovered
    assert av.unavailable_locations(session) == []
    # the probe object is removed again (the directory of writes in progress stays, empty)
    assert [p.name for p in root.iterdir()] in ([], [".ccat-partial"])
    assert list(storage.list_temporaries()) == []


def test_probe_finds_a_gone_mount_by_the_catalogue(session, topo):
    """An unmounted mount point is an empty directory: fine for writes, but the catalogue
    says objects are there."""
    buffer = topo.source_buffer
    f.file_raw_data_package(topo, write=False)  # PRESENT in the catalogue, nothing on disk
    session.commit()
    result = av.probe_location(session, buffer, f.local_storage_for(buffer))
    assert not result.ok
    assert "no objects" in result.detail
    assert "1 PRESENT" in result.detail


def test_a_full_location_blocks_writes_only(session, topo):
    buffer = topo.buffer("cologne")
    everything_is_full = Policy(buffer_thresholds_percent=BufferThresholds(0.001, 0.002, 0.003))
    result = av.probe_and_record(
        session,
        buffer,
        f.local_storage_for(buffer),
        observer="cologne",
        policy=everything_is_full,
    )
    assert not result.ok
    assert result.full
    assert "EMERGENCY" in result.detail
    down = av.unavailability(session, "cologne")
    assert down.blocks(buffer.id, write=True) is not None
    assert down.blocks(buffer.id, write=False) is None  # reads and deletions still work

    error = LocationFullError("disk full", location="cologne/lta")
    row = av.record_location_error(session, error, observer="cologne")
    assert row.full
    assert row.reason.startswith(av.FULL_PREFIX)


def test_what_an_item_waits_for(session, topo):
    a, b, c = topo.lta("cologne"), topo.buffer("cologne"), topo.source
    av.mark_unavailable(session, a, observer="cologne", reason="down")
    av.mark_unavailable(session, b, observer="cologne", reason="full", full=True)
    session.commit()
    down = av.unavailability(session, "cologne")
    assert [r.location_id for r in down.waiting_for(av.Needs(reads=(b.id,), writes=(a.id,)))] == [
        a.id
    ]
    assert down.waiting_for(av.Needs(reads=(b.id, c.id))) == []
    assert [r.location_id for r in down.waiting_for(av.Needs(writes=(b.id,)))] == [b.id]
    # any one readable alternative is enough
    assert down.waiting_for(av.Needs(any_of_reads=(a.id, c.id))) == []
    assert [r.location_id for r in down.waiting_for(av.Needs(any_of_reads=(a.id,)))] == [a.id]
