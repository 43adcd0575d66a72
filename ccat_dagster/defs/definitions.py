"""Assemble one site's Definitions: its assets, checks, stage jobs and sensors, and resources."""

from __future__ import annotations

from dagster import Definitions, in_process_executor

from ccat_dagster.defs.alerts import build_alert_sensor, build_run_failure_alert_sensor
from ccat_dagster.defs.assets import build_site_assets
from ccat_dagster.defs.audit import build_audit_job, build_audit_schedule, build_consistency_checks
from ccat_dagster.defs.availability import build_location_checks, build_location_probe_sensor
from ccat_dagster.defs.cleanup import (
    build_buffer_capacity_checks,
    build_buffer_monitor_sensor,
    build_cleanup_job,
    build_cleanup_schedule,
)
from ccat_dagster.defs.dead_runs import build_release_claims_sensor
from ccat_dagster.defs.ingest import build_ingest_sensors
from ccat_dagster.defs.jobs import build_stage_job
from ccat_dagster.defs.resources import OpsDbResource, SiteStorageResource
from ccat_dagster.defs.restore_drill import build_site_restore_drill
from ccat_dagster.defs.sensors import build_stage_sensor
from ccat_dagster.defs.settings import Settings
from ccat_dagster.defs.stages import PIPELINE_STAGES
from ccat_dagster.defs.staging import build_site_staging
from ccat_dagster.defs.topology import TopologySnapshot, load_topology_snapshot


def _asset_keys(assets: list) -> set:
    keys = set()
    for a in assets:
        keys |= set(a.keys) if hasattr(a, "keys") else {a.key}
    return keys


def build_site_definitions(
    site_short_name: str,
    *,
    ops_db_url: str | None = None,
    snapshot: TopologySnapshot | None = None,
    settings: Settings | None = None,
) -> Definitions:
    """Everything whose data lives at ``site_short_name``, so its runs execute where its storage
    is mounted. The topology is read from the ops DB (``CCAT_OPS_DB_URL``) and the settings from
    the environment (``Settings.from_env()``) now, unless given."""
    settings = settings or Settings.from_env()
    snapshot = snapshot or load_topology_snapshot(ops_db_url)
    site = snapshot.site(site_short_name)
    assets, checks = build_site_assets(snapshot, site)
    jobs, sensors = [], [build_location_probe_sensor(site)]
    sensors += build_ingest_sensors(site, interval_seconds=settings.sensor_interval_seconds)
    for stage in PIPELINE_STAGES:
        if not stage.applies(site):
            continue
        job = build_stage_job(site, stage)
        jobs.append(job)
        sensors.append(
            build_stage_sensor(site, stage, job, interval_seconds=settings.sensor_interval_seconds)
        )
    staging_assets, staging_jobs, staging_sensors = build_site_staging(
        snapshot, site, sensor_interval_seconds=settings.sensor_interval_seconds
    )
    assets += staging_assets
    jobs += staging_jobs
    sensors += staging_sensors
    drill_assets, drill_jobs, drill_schedules = build_site_restore_drill(snapshot, site)
    assets += drill_assets
    jobs += drill_jobs
    cleanup_job = build_cleanup_job(site)
    jobs.append(cleanup_job)
    sensors.append(
        build_buffer_monitor_sensor(
            site, cleanup_job, interval_seconds=settings.monitor_interval_seconds
        )
    )
    sensors.append(build_release_claims_sensor(site.short_name, cleanup_job))
    sensors += [
        build_alert_sensor(site.short_name, settings),
        build_run_failure_alert_sensor(site.short_name, settings),
    ]
    checks += build_buffer_capacity_checks(site)
    checks += build_location_checks(site, _asset_keys(assets))
    checks += build_consistency_checks(site, _asset_keys(assets))
    audit_job = build_audit_job(site)
    jobs.append(audit_job)
    return Definitions(
        # Every run is one batched op (or one asset step): running it in the run's own process
        # saves the multiprocess executor's per-step process start (seconds per run).
        executor=in_process_executor,
        assets=assets,
        asset_checks=checks,
        jobs=jobs,
        sensors=sensors,
        schedules=[
            build_cleanup_schedule(site, cleanup_job, cron=settings.cleanup_cron),
            build_audit_schedule(site, audit_job),
            *drill_schedules,
        ],
        resources={
            "ops_db": OpsDbResource(url=ops_db_url),
            "storage": SiteStorageResource(site=site.short_name),
        },
    )
