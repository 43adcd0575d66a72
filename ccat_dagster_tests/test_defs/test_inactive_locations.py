"""Definitions loaded before ``ccat topology apply`` switched a site or a location off keep
ticking until the code location is reloaded; every sensor and stage run asks the ops DB first
and starts nothing into or from what is no longer active (real instance, real ops DB on SQLite
and PostgreSQL, real disks)."""

from __future__ import annotations

from dagster import SensorResult, SkipReason, build_sensor_context
from sqlalchemy import select

from ccat_dagster.defs.availability import StageGate
from ccat_dagster.defs.definitions import build_site_definitions
from ccat_dagster.defs.stages import PACKAGE, Stage
from ccat_dagster.lifecycle.capacity.availability import Needs
from ccat_dagster.lifecycle.common import names
from ccat_dagster.lifecycle.common.activity import (
    inactive_among,
    inactive_location_ids,
    why_inactive,
)
from ccat_dagster.lifecycle.common.operations import OperationType
from ccat_dagster_tests.dagster_instance import instance_for_test
from ccat_dagster_tests.pipeline_support import MARKER_INGEST, real_topology
from ccat_ops_db.models import DataLocation, Site
from ccat_ops_db.session import session_scope
from ccat_ops_db.topology import apply_topology


def _evaluate(defs, sensor_name, instance):
    sensor = defs.resolve_sensor_def(sensor_name)
    with build_sensor_context(
        instance=instance, definitions=defs, resources=defs.resources
    ) as context:
        return sensor(context)


def _deactivate(url: str, site: str, location: str | None = None) -> None:
    """What `ccat topology apply` writes for a site or location left out of the file."""
    with session_scope(url) as session:
        row = session.scalars(select(Site).where(Site.short_name == site)).one()
        for loc in row.locations:
            if location is None or loc.name == location:
                loc.active = False
        if location is None:
            row.active = False


def _location_id(url: str, site: str, location: str) -> int:
    with session_scope(url) as session:
        return session.scalars(
            select(DataLocation.id)
            .join(Site)
            .where(Site.short_name == site, DataLocation.name == location)
        ).one()


def test_sensors_of_a_deactivated_location_skip_and_say_why(ops_db_url, tmp_path):
    with session_scope(ops_db_url) as session:
        apply_topology(session, real_topology(tmp_path, ingest=MARKER_INGEST))
    defs = build_site_definitions("ccat", ops_db_url=ops_db_url)  # loaded before the change
    ingest = names.ingest_sensor("ccat", "primecam_raw_data")
    packaging = names.stage_sensor("ccat", PACKAGE.name)

    with instance_for_test() as instance:
        before = _evaluate(defs, ingest, instance)  # active: it looks at the SOURCE
        assert "inactive" not in str(getattr(before, "skip_message", ""))
        _deactivate(ops_db_url, "ccat", "primecam_raw_data")
        for sensor in (ingest, packaging):
            result = _evaluate(defs, sensor, instance)
            assert isinstance(result, SkipReason), sensor
            assert "location ccat/primecam_raw_data is inactive in the ops DB" in str(
                result.skip_message
            )
            assert "ccat topology reload" in str(result.skip_message)


def test_a_run_queued_before_the_change_starts_nothing(ops_db_url, tmp_path):
    with session_scope(ops_db_url) as session:
        apply_topology(session, real_topology(tmp_path))
    defs = build_site_definitions("ccat", ops_db_url=ops_db_url)
    _deactivate(ops_db_url, "ccat", "primecam_raw_data")
    job = defs.resolve_job_def(names.stage_job("ccat", PACKAGE.name))
    op_name = names.stage_op("ccat", PACKAGE.name)

    with instance_for_test() as instance:
        # packages that do not exist: nothing may even look them up
        result = job.execute_in_process(
            run_config=PACKAGE.run_config(op_name, ["no_such_package_1", "no_such_package_2"]),
            instance=instance,
        )
    assert result.success
    counts = result.output_for_node(op_name)
    assert counts == {"done": 0, "skipped": 0, "deferred": 2, "failed": 0}


def test_every_sensor_of_a_deactivated_site_skips(ops_db_url, tmp_path):
    with session_scope(ops_db_url) as session:
        apply_topology(session, real_topology(tmp_path))
    defs = build_site_definitions("us", ops_db_url=ops_db_url)
    _deactivate(ops_db_url, "us")
    sensors = [
        names.location_probe_sensor("us"),
        names.buffer_monitor_sensor("us"),
        names.stage_sensor("us", "data_transfer"),
        names.stage_sensor("us", "long_term_archive_transfer"),
    ]
    with instance_for_test() as instance:
        for sensor in sensors:
            result = _evaluate(defs, sensor, instance)
            assert isinstance(result, SkipReason), sensor
            assert "site us is inactive in the ops DB" in str(result.skip_message), sensor


def test_the_buffer_monitor_of_an_active_site_still_runs(ops_db_url, tmp_path):
    with session_scope(ops_db_url) as session:
        apply_topology(session, real_topology(tmp_path))
    defs = build_site_definitions("us", ops_db_url=ops_db_url)
    with instance_for_test() as instance:
        result = _evaluate(defs, names.buffer_monitor_sensor("us"), instance)
    assert isinstance(result, SensorResult)


def test_work_that_reads_or_writes_an_inactive_location_is_not_started(ops_db_url, tmp_path):
    """The item-level check, for work of an active site whose other end was switched off (a
    transfer from a deactivated buffer, staging from a deactivated archive)."""
    with session_scope(ops_db_url) as session:
        apply_topology(session, real_topology(tmp_path))
    us_buffer = _location_id(ops_db_url, "us", "buffer")
    cologne_buffer = _location_id(ops_db_url, "cologne", "buffer")
    cologne_lta = _location_id(ops_db_url, "cologne", "lta")
    _deactivate(ops_db_url, "cologne", "buffer")
    needs = {
        "pull": Needs(reads=(cologne_buffer,), writes=(us_buffer,)),
        "push": Needs(reads=(us_buffer,), writes=(cologne_buffer,)),
        "either": Needs(any_of_reads=(cologne_buffer, cologne_lta), writes=(us_buffer,)),
        "local": Needs(reads=(us_buffer,)),
    }
    stage = Stage(
        name="test",
        operation=OperationType.DATA_TRANSFER,
        description="",
        plan=lambda _s, _site: None,
        ready=lambda _s, _site: list(needs),
        execute=lambda *_: None,  # type: ignore[arg-type,return-value]
        needs=lambda _s, _site, items: {i: needs[i] for i in items},
    )
    with session_scope(ops_db_url) as session:
        us = session.scalars(select(Site).where(Site.short_name == "us")).one()
        gate = StageGate.open(session, stage, us, "us", lambda _loc: None, list(needs))  # type: ignore[arg-type,return-value]
        waits = {item: gate.waits(item) for item in needs}
    assert waits["pull"] == "not started: cologne/buffer inactive in the ops DB"
    assert waits["push"] == "not started: cologne/buffer inactive in the ops DB"
    assert waits["either"] is None  # the active archive copy is enough
    assert waits["local"] is None


def test_why_inactive_and_the_inactive_locations(ops_db_url, tmp_path):
    with session_scope(ops_db_url) as session:
        apply_topology(session, real_topology(tmp_path))
    _deactivate(ops_db_url, "us")
    _deactivate(ops_db_url, "cologne", "buffer")
    with session_scope(ops_db_url) as session:
        assert why_inactive(session, "ccat") is None
        assert why_inactive(session, "ccat", "telescope_buffer") is None
        assert "site us is inactive" in (why_inactive(session, "us", "lta") or "")
        assert "location cologne/buffer is inactive" in (
            why_inactive(session, "cologne", "buffer") or ""
        )
        assert "not in the ops DB" in (why_inactive(session, "cologne", "gone") or "")
        assert "not in the ops DB" in (why_inactive(session, "tokyo") or "")
        inactive = inactive_location_ids(session)
    assert sorted(inactive.values()) == ["cologne/buffer", "us/buffer", "us/lta"]
    lid = next(i for i, n in inactive.items() if n == "us/lta")
    assert inactive_among(inactive, reads=(lid,)) == ["us/lta"]
    assert inactive_among(inactive, any_of_reads=(lid, 10_000)) == []
