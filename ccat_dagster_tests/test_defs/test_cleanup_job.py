"""The cleanup job and the buffer monitor as Dagster runs them, on real files and both ops DBs."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from dagster import (
    AssetCheckEvaluation,
    AssetKey,
    AssetMaterialization,
    AssetObservation,
    DagsterEventType,
    DagsterRun,
    DagsterRunStatus,
    EventRecordsFilter,
    FloatMetadataValue,
    IntMetadataValue,
    MetadataValue,
    PathMetadataValue,
    SensorResult,
    SkipReason,
    build_sensor_context,
    job,
    materialize,
    op,
)
from sqlalchemy import select

from ccat_dagster.defs import cleanup
from ccat_dagster.defs.assets import build_site_assets
from ccat_dagster.defs.cleanup import cleanup_run_config
from ccat_dagster.defs.definitions import build_site_definitions
from ccat_dagster.defs.partitions import partition_set_name
from ccat_dagster.defs.resources import OpsDbResource, SiteStorageResource
from ccat_dagster.defs.stages import log_event
from ccat_dagster.defs.topology import load_topology_snapshot
from ccat_dagster.lifecycle.archive.repair import unusable_lta_copies
from ccat_dagster_tests.dagster_instance import instance_for_test
from ccat_dagster_tests.pipeline_support import drive, real_topology, setup_pipeline
from ccat_ops_db.models import (
    AuditLog,
    DataLocation,
    DataTransferPackage,
    LocationType,
    PhysicalCopy,
    PhysicalCopyStatus,
    RawDataPackage,
    Site,
)
from ccat_ops_db.session import session_scope
from ccat_ops_db.topology import apply_topology

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def _copies(url, site, location_type):
    with session_scope(url) as session:
        return session.execute(
            select(PhysicalCopy.type, PhysicalCopy.status)
            .join(DataLocation, DataLocation.id == PhysicalCopy.data_location_id)
            .join(Site, Site.id == DataLocation.site_id)
            .where(Site.short_name == site, DataLocation.location_type == location_type)
        ).all()


@pytest.fixture
def archived(ops_db_url, tmp_path):
    """Files filed and archived in both LTAs, cleanup not yet run."""
    setup_pipeline(
        ops_db_url,
        real_topology(tmp_path, policy={"retention_period_minutes": 0}),
        tmp_path,
        n_obs_units=2,
        files_per_unit=2,
        max_size=50_000,
    )
    with instance_for_test() as instance:
        drive(ops_db_url, instance, include_schedules=False)
        yield ops_db_url, tmp_path, instance


def test_scheduled_cleanup_removes_telescope_copies_and_never_the_ltas(archived):
    url, root, instance = archived
    assert any((root / "ccat" / "buffer" / "raw_data_packages").iterdir())
    report = drive(url, instance)  # now with the schedules: the cleanup runs
    assert not report.failed_runs
    assert report.by_job.get("ccat_cleanup")
    telescope = _copies(url, "ccat", LocationType.BUFFER)
    assert telescope
    assert all(status == PhysicalCopyStatus.DELETED for _, status in telescope)
    assert not any((root / "ccat" / "buffer" / "raw_data_packages").iterdir())
    source_files = _copies(url, "ccat", LocationType.SOURCE)
    assert all(status == PhysicalCopyStatus.DELETED for _, status in source_files)
    for site in ("cologne", "us"):
        lta = _copies(url, site, LocationType.LONG_TERM_ARCHIVE)
        assert lta
        assert all(status == PhysicalCopyStatus.PRESENT for _, status in lta)
        assert any((root / site / "lta" / "raw_data_packages").iterdir())
    with session_scope(url) as session:
        deletions = session.scalars(
            select(AuditLog).where(AuditLog.new_status == "DELETED", AuditLog.run_id.is_not(None))
        ).all()
        assert len(deletions) >= len(telescope)
        assert all(a.reason for a in deletions)
        # the deletion of the telescope's package copies carries the live LTA evidence
        with_evidence = [a for a in deletions if a.evidence and "lta" in json.dumps(a.evidence)]
        assert with_evidence


def test_failed_lta_presence_blocks_deletion_and_fails_the_run(archived):
    url, root, instance = archived
    for site in ("cologne", "us"):
        for obj in (root / site / "lta" / "raw_data_packages").iterdir():
            obj.unlink()  # gone behind the catalogue's back
    defs = build_site_definitions("ccat", ops_db_url=url)
    snapshot = load_topology_snapshot(url)
    result = defs.resolve_job_def("ccat_cleanup").execute_in_process(
        run_config=cleanup_run_config(snapshot.site("ccat")),
        instance=instance,
        raise_on_error=False,
    )
    assert not result.success
    telescope = _copies(url, "ccat", LocationType.BUFFER)
    packages = [s for t, s in telescope if t.value == "raw_data_package"]
    assert packages
    assert all(s == PhysicalCopyStatus.PRESENT for s in packages)
    assert any((root / "ccat" / "buffer" / "raw_data_packages").iterdir())
    evaluations = [
        r.event_log_entry.dagster_event.event_specific_data
        for r in instance.get_event_records(
            EventRecordsFilter(event_type=DagsterEventType.ASSET_CHECK_EVALUATION)
        )
        if r.event_log_entry.run_id == result.run_id
    ]
    assert evaluations
    assert not any(e.passed for e in evaluations)
    with session_scope(url) as session:
        # the catalogue no longer claims the archive copies: LOST, waiting for their repair
        unusable = unusable_lta_copies(session)
        assert unusable
        assert {status for *_, status, _ in unusable} == {"LOST"}
        assert {loc for _, loc, *_ in unusable} == {"cologne/lta", "us/lta"}


def test_manual_cleanup_with_dagster_cli_dry_run_then_one_location(archived, tmp_path):
    """The same run config as the README's `dagster job launch ... --config-json` example,
    executed synchronously (`launch` only enqueues for the daemon; the deployment test covers
    that path)."""
    url, _root, _ = archived
    config_file = tmp_path / "cleanup.json"
    env = {**__import__("os").environ, "CCAT_OPS_DB_URL": url}
    config = {
        "ops": {
            "ccat_cleanup_lta_presence": {
                "config": {"location": "telescope_buffer", "dry_run": True}
            }
        }
    }
    cmd = [
        sys.executable,
        "-m",
        "dagster",
        "job",
        "execute",
        "-m",
        "ccat_dagster.sites.site",
        "-a",
        "ccat",
        "-j",
        "ccat_cleanup",
        "--config",
        str(config_file),
    ]
    config_file.write_text(json.dumps(config))
    dry = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert all(
        s == PhysicalCopyStatus.PRESENT for _, s in _copies(url, "ccat", LocationType.BUFFER)
    )

    config["ops"]["ccat_cleanup_lta_presence"]["config"]["dry_run"] = False
    config_file.write_text(json.dumps(config))
    real = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert real.returncode == 0, real.stderr[-3000:]
    assert all(
        s == PhysicalCopyStatus.DELETED for _, s in _copies(url, "ccat", LocationType.BUFFER)
    )
    # only the named location: the SOURCE files were not part of this manual run
    assert any(
        s != PhysicalCopyStatus.DELETED for _, s in _copies(url, "ccat", LocationType.SOURCE)
    )


def test_buffer_monitor_escalates_at_emergency_and_pauses_packaging(ops_db_url, tmp_path):
    # thresholds below the machine's real disk usage: every disk is in EMERGENCY
    setup_pipeline(
        ops_db_url,
        real_topology(
            tmp_path,
            policy={
                "buffer_thresholds_percent": {
                    "warning": 0.001,
                    "critical": 0.002,
                    "emergency": 0.003,
                }
            },
        ),
        tmp_path,
        n_obs_units=1,
        files_per_unit=1,
        max_size=10_000,
    )
    defs = build_site_definitions("ccat", ops_db_url=ops_db_url)
    with instance_for_test() as instance:
        with build_sensor_context(
            instance=instance, definitions=defs, resources=defs.resources
        ) as ctx:
            result = defs.resolve_sensor_def("ccat_buffer_monitor_sensor")(ctx)
        assert isinstance(result, SensorResult)
        checks = [e for e in result.asset_events if isinstance(e, AssetCheckEvaluation)]
        assert checks
        assert not any(c.passed for c in checks)
        assert "EMERGENCY" in checks[0].description
        # the disk-pressure forecast rides along (one sample so far: not known yet)
        observed = [e for e in result.asset_events if isinstance(e, AssetObservation)]
        assert observed
        for event in observed:
            assert event.metadata["hours_to_critical"].value == 0.0, "reached already"
            assert event.metadata["hours_to_full"].value == -1.0, "not known from 1 sample"
            assert "fill_rate_percent_per_hour" in event.metadata
        assert (
            instance.event_log_storage.get_concurrency_info(
                "ccat_telescope_buffer_data_transfer"
            ).slot_count
            == 1
        )
        with build_sensor_context(
            instance=instance, definitions=defs, resources=defs.resources
        ) as ctx:
            paused = defs.resolve_sensor_def("ccat_raw_data_package_creation_sensor")(ctx)
    with session_scope(ops_db_url) as session:
        assert session.scalars(select(RawDataPackage)).all() == [], "packaging paused"
    assert not isinstance(paused, SensorResult) or not paused.run_requests
    assert isinstance(paused, (SkipReason, SensorResult))


def _shown_materialized(instance, key: AssetKey) -> set[str]:
    """What the UI shows as materialized: Dagster counts only the keys of the asset's set."""
    keys = set(instance.get_dynamic_partitions(partition_set_name(key)))
    return instance.get_materialized_partitions(key) & keys


def test_a_deleted_copy_is_no_longer_materialized_and_its_deletion_shows_on_the_asset(archived):
    url, _root, instance = archived
    buffer_packages = AssetKey(["ccat", "telescope_buffer", "raw_data_package"])
    bundles = AssetKey(["ccat", "telescope_buffer", "data_transfer_package"])
    lta = AssetKey(["cologne", "lta", "raw_data_package"])
    with session_scope(url) as session:
        names = set(session.scalars(select(RawDataPackage.name)))
    assert _shown_materialized(instance, buffer_packages) == names
    assert _shown_materialized(instance, bundles)
    assert _shown_materialized(instance, lta) == names
    (record,) = instance.fetch_materializations(lta, limit=1).records
    shown = record.asset_materialization.metadata  # typed for display
    assert isinstance(shown["size_bytes"], IntMetadataValue)
    assert isinstance(shown["bytes_per_s"], FloatMetadataValue)
    assert isinstance(shown["destination"], PathMetadataValue)
    assert shown["run"] == MetadataValue.dagster_run(record.run_id)

    assert not drive(url, instance).failed_runs  # the cleanup deletes the telescope's copies

    assert _shown_materialized(instance, buffer_packages) == set()
    assert _shown_materialized(instance, bundles) == set()
    assert _shown_materialized(instance, lta) == names  # archives keep theirs
    deletions = {
        r.partition_key: r.asset_observation
        for r in instance.fetch_observations(buffer_packages, limit=100).records
        if r.partition_key is not None  # the others: disk usage, availability
    }
    assert set(deletions) == names
    for observation in deletions.values():
        assert observation is not None
        meta = observation.metadata
        assert meta["status"].value == "DELETED"
        assert meta["reason"].value  # the rule
        assert "lta" in json.dumps(meta["evidence"].value)  # the live LTA check
        assert meta["ended_at"].value > 0
        assert meta["run"].value  # a link to the cleanup run


def test_a_copy_transferred_again_is_materialized_again(archived):
    url, _root, instance = archived
    bundles = AssetKey(["cologne", "buffer", "data_transfer_package"])
    assert _shown_materialized(instance, bundles)
    assert not drive(url, instance).failed_runs
    assert _shown_materialized(instance, bundles) == set()
    with session_scope(url) as session:
        name = session.scalars(select(DataTransferPackage.name)).first()
    assert name
    materialize_partition = AssetMaterialization(asset_key=bundles, partition=name)

    @op
    def transferred_again(context) -> None:
        log_event(context, materialize_partition)

    @job
    def again() -> None:
        transferred_again()

    assert again.execute_in_process(instance=instance).success
    assert _shown_materialized(instance, bundles) == {name}


def test_a_deactivated_buffer_is_drained_and_its_source_files_released(archived):
    """A location taken out of the topology keeps its cleanup step while it holds copies: its
    package copies go by the same rules, and so the SOURCE files they held back (issue 13)."""
    url, root, instance = archived
    topology = real_topology(root, policy={"retention_period_minutes": 0})
    ccat = topology["sites"][0]
    old = next(loc for loc in ccat["locations"] if loc["name"] == "telescope_buffer")
    old["active"] = False
    new_path = root / "ccat" / "buffer_2"
    new_path.mkdir()
    ccat["locations"].append(
        {
            "name": "telescope_buffer_2",
            "type": "BUFFER",
            "priority": 2,
            "storage": {"kind": "disk", "path": str(new_path)},
        }
    )
    with session_scope(url) as session:
        apply_topology(session, topology)
    snapshot = load_topology_snapshot(url).site("ccat")
    assert [loc.name for loc in snapshot.draining] == ["telescope_buffer"]
    assert "telescope_buffer" not in [loc.name for loc in snapshot.locations]

    report = drive(url, instance)  # with the schedules: the cleanup runs
    assert not report.failed_runs
    assert report.by_job.get("ccat_cleanup")
    with session_scope(url) as session:
        old_buffer = session.scalars(
            select(DataLocation).where(DataLocation.name == "telescope_buffer")
        ).one()
        copies = session.scalars(
            select(PhysicalCopy.status).where(PhysicalCopy.data_location_id == old_buffer.id)
        ).all()
    assert copies
    assert set(copies) == {PhysicalCopyStatus.DELETED}
    assert not any((root / "ccat" / "buffer" / "raw_data_packages").iterdir())
    source_files = _copies(url, "ccat", LocationType.SOURCE)
    assert source_files
    assert {status for _, status in source_files} == {PhysicalCopyStatus.DELETED}
    # drained: the next load of the code location has no step for it any more
    assert load_topology_snapshot(url).site("ccat").draining == ()


def _pressure(root, *, emergency: bool) -> dict:
    """The topology of ``archived`` with thresholds that put every disk at CRITICAL (below the
    machine's real usage) or EMERGENCY, and pressure-cleanup intervals of 2 and 1 minutes."""
    thresholds = {"warning": 0.001, "critical": 0.002, "emergency": 0.003 if emergency else 99.99}
    return real_topology(
        root,
        policy={
            "retention_period_minutes": 0,
            "buffer_thresholds_percent": thresholds,
            "critical_cleanup_interval_minutes": 2,
            "emergency_cleanup_interval_minutes": 1,
        },
    )


def _pressure_run_keys(url, instance, monkeypatch, minutes: int) -> list[str]:
    """The run keys the buffer monitor requests at one tick a minute for ``minutes``."""
    defs = build_site_definitions("ccat", ops_db_url=url)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    keys = []
    for minute in range(minutes):
        monkeypatch.setattr(cleanup, "utcnow", lambda m=minute: start + timedelta(minutes=m))
        with build_sensor_context(
            instance=instance, definitions=defs, resources=defs.resources
        ) as ctx:
            result = defs.resolve_sensor_def("ccat_buffer_monitor_sensor")(ctx)
        assert isinstance(result, SensorResult)
        keys += [r.run_key for r in result.run_requests]
    return keys


def test_the_cleanup_runs_more_often_at_critical_and_more_still_at_emergency(archived, monkeypatch):
    """At CRITICAL a cleanup every critical_cleanup_interval_minutes, not once per schedule
    interval; at EMERGENCY every emergency_cleanup_interval_minutes; never two at once."""
    url, root, instance = archived
    with session_scope(url) as session:
        apply_topology(session, _pressure(root, emergency=False))
    critical = _pressure_run_keys(url, instance, monkeypatch, minutes=10)
    # every tick requests one; Dagster launches one per run key: one run per 2-minute slot
    assert len(critical) == 10
    assert len(set(critical)) == 5, "5 cleanups in 10 minutes, not 1 per 10-minute schedule"
    assert all(":CRITICAL:" in k for k in critical)

    with session_scope(url) as session:
        apply_topology(session, _pressure(root, emergency=True))
    emergency = _pressure_run_keys(url, instance, monkeypatch, minutes=10)
    assert len(set(emergency)) == 10, "a cleanup every minute: more than at CRITICAL"
    assert all(":EMERGENCY:" in k for k in emergency)

    # a cleanup in flight (started, its worker busy): the monitor waits for it
    instance.add_run(
        DagsterRun(
            job_name="ccat_cleanup", run_id=str(uuid.uuid4()), status=DagsterRunStatus.STARTED
        )
    )
    assert _pressure_run_keys(url, instance, monkeypatch, minutes=3) == []


def test_an_archived_partition_is_checked_again_after_its_buffer_copy_is_gone(archived):
    """A backfill of an archive's partitions after the cleanup: the buffer partition it came
    from is gone, the run re-checks the archive copy live instead of failing."""
    url, _root, instance = archived
    assert not drive(url, instance).failed_runs  # the cleanup empties the buffers
    buffer_copies = _copies(url, "cologne", LocationType.BUFFER)
    assert buffer_copies
    assert all(status == PhysicalCopyStatus.DELETED for _, status in buffer_copies)
    snapshot = load_topology_snapshot(url)
    assets, checks = build_site_assets(snapshot, snapshot.site("cologne"))
    lta = AssetKey(["cologne", "lta", "raw_data_package"])
    with session_scope(url) as session:
        name = session.scalars(select(RawDataPackage.name)).first()
    assert name
    result = materialize(
        [a for a in assets if lta in a.keys] + checks,
        partition_key=name,
        instance=instance,
        resources={
            "ops_db": OpsDbResource(url=url),
            "storage": SiteStorageResource(site="cologne"),
        },
    )
    assert result.success
    [evaluation] = result.get_asset_check_evaluations()
    assert evaluation.check_name == "lta_presence"
    assert evaluation.passed
    assert evaluation.partition == name
