"""The restore drill's bookkeeping (both ops-DB backends): which packages a drill samples, when
one is due, that the staging stage leaves a drill's job to the drill, and that a drill cut short
by an archive that stops answering is recorded as INTERRUPTED."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from ccat_dagster.lifecycle.staging import drill
from ccat_dagster.lifecycle.staging.execution import staging_candidates
from ccat_dagster.lifecycle.staging.requests import DRILL_REQUESTER, create_staging_job
from ccat_dagster.storage.errors import LocationUnavailableError
from ccat_dagster_tests import factories as f
from ccat_ops_db.audit import audit
from ccat_ops_db.models import (
    AuditLog,
    PolicySetting,
    RawDataPackagePhysicalCopy,
    StagingJob,
    utcnow,
)


def _archived(session, topo, n: int):
    packages = [f.archived_package(topo, f"drill_pkg_{i}")[0] for i in range(n)]
    session.commit()
    return packages


def test_the_staging_stage_leaves_a_drills_job_to_the_drill(session, topo):
    a, b = _archived(session, topo, 2)
    site = topo.sites["cologne"]
    create_staging_job(
        session, location=topo.processing, packages=[a.name], requested_by=DRILL_REQUESTER
    )
    assert staging_candidates(session, site) == []
    create_staging_job(session, location=topo.processing, packages=[b.name], requested_by="ana")
    assert staging_candidates(session, site) == [(b.id, topo.processing.id)]


def test_a_drill_samples_archived_packages_not_staged_here(session, topo):
    packages = _archived(session, topo, 5)
    lta, processing = topo.lta("cologne"), topo.processing
    sample = drill.drill_sample(session, lta, processing, 3)
    assert len(sample) == 3
    assert {p.id for p in sample} <= {p.id for p in packages}
    f.stage(topo, packages[:4])  # staged for a scientist: a drill would only share it
    session.commit()
    assert [p.id for p in drill.drill_sample(session, lta, processing, 3)] == [packages[4].id]


def test_a_drill_is_due_an_interval_after_the_archive_began_then_after_the_last(session, topo):
    _archived(session, topo, 1)
    site = topo.sites["cologne"]
    assert drill.drill_due(session, site) is None  # the archive is minutes old
    session.execute(
        update(RawDataPackagePhysicalCopy)
        .values(created_at=utcnow() - timedelta(days=8))
        .execution_options(synchronize_session=False)
    )
    session.commit()
    assert "no drill yet" in drill.drill_due(session, site)
    audit(
        session,
        entity_type=drill.ENTITY,
        entity_id=topo.processing.id,
        new_status=drill.PASSED,
        reason="restore drill",
        data_location_id=topo.processing.id,
    )
    session.commit()
    assert drill.drill_due(session, site) is None
    assert drill.last_drill(session, site).new_status == drill.PASSED
    session.add(PolicySetting(key="restore_drill_interval_minutes", value=1))
    session.commit()
    assert drill.drill_due(session, site, now=utcnow() + timedelta(minutes=2)) is not None
    # a site without a PROCESSING location never drills
    assert drill.drill_due(session, topo.sites["ccat"]) is None


def test_a_drill_cut_short_by_an_archive_that_stops_answering_is_recorded_and_due_again(
    session, topo
):
    _archived(session, topo, 2)
    site, lta = topo.sites["cologne"], topo.lta("cologne")
    Path(lta.path).rename(f"{lta.path}.unmounted")  # the archive's mount is gone
    with pytest.raises(LocationUnavailableError):
        drill.run_restore_drill(session, site, storage_for=f.local_storage_for, run_id="run-d1")
    [row] = session.scalars(select(AuditLog).where(AuditLog.entity_type == drill.ENTITY)).all()
    assert row.new_status == drill.INTERRUPTED
    assert row.run_id == "run-d1"
    assert "interrupted: LocationUnavailableError" in row.reason, row.reason
    assert row.evidence["interrupted"].startswith("LocationUnavailableError")
    # the drill's staging job was released, and the next drill is not put off for an interval
    jobs = session.scalars(select(StagingJob)).all()
    assert jobs
    assert not any(j.active for j in jobs)
    assert drill.last_drill(session, site) is None
