"""Unattended ingest end to end: files an instrument drops into the SOURCE with their marker
reach ARCHIVED in both LTAs under ``run-until-idle`` with no ``ccat files register``; files
without their marker are never filed; the SOURCE's asset shows what each tick found."""

from __future__ import annotations

from dagster import AssetKey, DagsterEventType, EventRecordsFilter
from sqlalchemy import select

from ccat_dagster.lifecycle.summary import packages_missing_from_ltas
from ccat_dagster.simulate import simulate_instrument
from ccat_dagster_tests.dagster_instance import instance_for_test
from ccat_dagster_tests.pipeline_support import (
    MARKER_INGEST,
    drive,
    drop_simulated_data,
    real_topology,
)
from ccat_ops_db.models import PackageState, RawDataFile, RawDataPackage
from ccat_ops_db.session import session_scope
from ccat_ops_db.topology import apply_topology


def test_dropped_files_with_their_marker_are_archived_with_no_command(ops_db_url, tmp_path):
    topology = real_topology(tmp_path, ingest=MARKER_INGEST)
    with session_scope(ops_db_url) as session:
        apply_topology(session, topology)
    src = tmp_path / "ccat" / "src"
    complete = drop_simulated_data(tmp_path, n_obs_units=2, files_per_unit=3, max_size=200_000)
    unfinished = simulate_instrument(
        src, n_obs_units=1, modules=["pcam_350"], files_per_unit=2, max_size=50_000, seed=2
    )

    with instance_for_test() as instance:
        report = drive(ops_db_url, instance, include_schedules=False)
        assert not report.failed_runs
        records = instance.get_event_records(
            EventRecordsFilter(
                event_type=DagsterEventType.ASSET_OBSERVATION,
                asset_key=AssetKey(["ccat", "primecam_raw_data", "raw_data_files"]),
            )
        )

    with session_scope(ops_db_url) as session:
        filed = {r.relative_path for r in session.scalars(select(RawDataFile))}
        assert filed == {f.path.relative_to(src).as_posix() for f in complete}
        assert not filed & {f.path.relative_to(src).as_posix() for f in unfinished}
        packages = session.scalars(select(RawDataPackage)).all()
        assert packages
        assert all(p.state == PackageState.ARCHIVED for p in packages)
        assert packages_missing_from_ltas(session) == []

    ticks = [
        r.asset_observation.metadata
        for r in sorted(records, key=lambda r: r.storage_id)
        if "files_registered" in r.asset_observation.metadata
    ]
    assert len(ticks) == 1, "idle ticks record nothing"
    [metadata] = ticks
    assert metadata["files_registered"].value == len(complete)
    assert metadata["bytes_registered"].value == sum(f.size for f in complete)
    assert metadata["files_not_complete_yet"].value == len(unfinished)
