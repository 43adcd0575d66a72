"""The probe sensor of a site: probes, with backoff, the locations the site found unavailable,
marks a recovered one available and records ``location_available`` in the UI (real instance,
real ops DB on SQLite and PostgreSQL, real disks)."""

from __future__ import annotations

from dagster import (
    AssetCheckEvaluation,
    AssetKey,
    DagsterEventType,
    EventRecordsFilter,
    SensorResult,
    SkipReason,
    build_sensor_context,
)

from ccat_dagster.defs.definitions import build_site_definitions
from ccat_dagster.lifecycle.capacity import availability as av
from ccat_dagster_tests.dagster_instance import instance_for_test
from ccat_dagster_tests.pipeline_support import availability, real_topology
from ccat_ops_db.models import DataLocation, LocationAvailability, Site
from ccat_ops_db.session import session_scope
from ccat_ops_db.topology import apply_topology

SENSOR = "us_location_probe_sensor"
LTA_ASSET = AssetKey(["us", "lta", "raw_data_package"])


def _evaluate(defs, instance):
    sensor = defs.resolve_sensor_def(SENSOR)
    with build_sensor_context(
        instance=instance, definitions=defs, resources=defs.resources
    ) as context:
        result = sensor(context)
    # as the daemon does with a sensor's asset events
    for event in getattr(result, "asset_events", None) or []:
        instance.report_runless_asset_event(event)
    return result


def _us_lta(session) -> DataLocation:
    return (
        session.query(DataLocation)
        .join(Site)
        .filter(Site.short_name == "us", DataLocation.name == "lta")
        .one()
    )


def _checks(instance) -> list:
    records = instance.get_event_records(
        EventRecordsFilter(event_type=DagsterEventType.ASSET_CHECK_EVALUATION), ascending=True
    )
    evaluations = [r.event_log_entry.dagster_event.event_specific_data for r in records]
    return [e for e in evaluations if e.asset_key == LTA_ASSET]


def test_probe_sensor_backs_off_and_marks_a_recovered_location_available(ops_db_url, tmp_path):
    url = ops_db_url
    with session_scope(url) as session:
        apply_topology(session, real_topology(tmp_path))
    lta_root = tmp_path / "us" / "lta"
    lta_root.rename(tmp_path / "us" / "lta.away")
    with session_scope(url) as session:
        av.mark_unavailable(session, _us_lta(session), observer="us", reason="root missing")
    defs = build_site_definitions("us", ops_db_url=url)

    with instance_for_test() as instance:
        assert isinstance(_evaluate(defs, instance), SkipReason), "not due yet"

        with session_scope(url) as session:
            av.make_probes_due(session)
        result = _evaluate(defs, instance)
        assert isinstance(result, SensorResult)
        [check] = [e for e in result.asset_events if isinstance(e, AssetCheckEvaluation)]
        assert check.check_name == "location_available"
        assert not check.passed
        with session_scope(url) as session:
            row = session.get(LocationAvailability, (_us_lta(session).id, "us"))
            assert row.consecutive_failures == 2
            assert not row.available
            assert "missing" in row.reason
        assert isinstance(_evaluate(defs, instance), SkipReason), "backed off"

        (tmp_path / "us" / "lta.away").rename(lta_root)
        with session_scope(url) as session:
            av.make_probes_due(session)
        result = _evaluate(defs, instance)
        assert isinstance(result, SensorResult)
        assert availability(url)[("us/lta", "us")] is True
        recorded = _checks(instance)
        assert [c.passed for c in recorded] == [False, True]
        assert all(c.check_name == "location_available" for c in recorded)
        assert isinstance(_evaluate(defs, instance), SkipReason), "nothing left to probe"


def test_every_location_of_the_site_has_a_location_available_check(ops_db_url, tmp_path):
    with session_scope(ops_db_url) as session:
        apply_topology(session, real_topology(tmp_path))
    defs = build_site_definitions("us", ops_db_url=ops_db_url)
    checks = set(defs.get_repository_def().asset_checks_defs_by_key)
    for location in ("lta", "buffer"):
        key = AssetKey(["us", location, "raw_data_package"])
        assert any(k.asset_key == key and k.name == "location_available" for k in checks), checks
