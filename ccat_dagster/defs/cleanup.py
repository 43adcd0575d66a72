"""The cleanup of one site: a scheduled job gated on lta_presence checks, and the buffer monitor.

Job ``{site}_cleanup`` = two steps. ``..._lta_presence`` re-checks live, for every package whose
copy at this site the rules would delete, the archive copies the deletion relies on, and records
each as an ``lta_presence`` check evaluation of that package's partition; failed packages are
passed on as blocked. ``..._delete`` then runs one bulk cleanup cycle per location of the site
(lifecycle.cleanup), which re-verifies the LTA copy once more right before deleting the last copy
outside an LTA and keeps anything blocked. Any error fails the run with the reasons, so an
operator sees it in the UI. Config: ``location`` (one location of this site) and ``dry_run``.
A third step ``..._temporaries`` (same ``location`` and ``dry_run``) removes what killed runs
left behind (defs.temporaries).

The buffer monitor sensor measures every active disk location of the site, stores the sample,
reports it as an asset observation (plotted in the UI) and escalates as docs/lifecycle.md describes:
pools lowered to max_critical_transfers and an immediate cleanup at CRITICAL, packaging paused
and a failed ``buffer_capacity`` check at EMERGENCY; limits go back when pressure falls. Read when
the code location loads: ``CCAT_CLEANUP_CRON`` (cleanup schedule, default every 10 minutes) and
``CCAT_MONITOR_INTERVAL_SECONDS`` (buffer monitor, default 60).
"""

import os
from datetime import timedelta

from dagster import (
    AssetCheckEvaluation,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetObservation,
    Config,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    Failure,
    In,
    JobDefinition,
    MetadataValue,
    OpExecutionContext,
    Out,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    asset_check,
    job,
    op,
    schedule,
    sensor,
)
from sqlalchemy import select
from sqlalchemy.orm import Session

from ccat_dagster.defs.availability import location_events
from ccat_dagster.defs.keys import RAW_DATA_PACKAGE, asset_key
from ccat_dagster.defs.resources import OpsDbResource, SiteStorageResource
from ccat_dagster.defs.stages import (
    lta_presence_evaluation,
    site_buffer_action,
    site_row,
)
from ccat_dagster.defs.temporaries import build_temporaries_op
from ccat_dagster.defs.topology import SiteView
from ccat_dagster.lifecycle.availability import record_location_error, unavailability
from ccat_dagster.lifecycle.buffer_policy import BufferLevel, record_disk_usage
from ccat_dagster.lifecycle.cleanup import plan_deletions, run_cleanup_cycle
from ccat_dagster.lifecycle.deletion import (
    RULE_RDF_DELETION_POSSIBLE,
    RULE_RDP_LTA_BUFFER,
    RULE_RDP_SOURCE_BUFFER,
)
from ccat_dagster.lifecycle.operations import OperationType, pool_name
from ccat_dagster.lifecycle.repair import record_lta_check
from ccat_dagster.lifecycle.verification import LtaEvidence, make_storage_lta_verifier
from ccat_dagster.storage.errors import LocationUnavailableError, StorageError
from ccat_ops_db.models import (
    DataLocation,
    DiskDataLocation,
    LocationType,
    PhysicalCopyStatus,
    RawDataPackage,
    RawDataPackagePhysicalCopy,
    Site,
    utcnow,
)

CLEANUP_CRON = os.environ.get("CCAT_CLEANUP_CRON", "*/10 * * * *")
MONITOR_INTERVAL_SECONDS = int(os.environ.get("CCAT_MONITOR_INTERVAL_SECONDS", "60"))
BUFFER_CAPACITY = "buffer_capacity"
#: a live check of the check step is reused by the delete step of the same run for this long
CHECK_FRESH_FOR = timedelta(minutes=10)
#: the rules whose deletions rely on the archive copies (checked first, per partition)
_RELIES_ON_ARCHIVE = (RULE_RDP_SOURCE_BUFFER, RULE_RDP_LTA_BUFFER, RULE_RDF_DELETION_POSSIBLE)


class CleanupConfig(Config):
    """Manual cleanup: ``location`` limits it to one location of this site (its name)."""

    location: str | None = None
    dry_run: bool = False


def cleanup_job_name(site: SiteView) -> str:
    return f"{site.short_name}_cleanup"


def _site_locations(session: Session, site: Site, name: str | None) -> list[DataLocation]:
    """The locations this site's cleanup may touch (never a LONG_TERM_ARCHIVE)."""
    locations = [
        loc
        for loc in site.locations
        if loc.active and loc.location_type != LocationType.LONG_TERM_ARCHIVE
    ]
    if name is None:
        return locations
    chosen = [loc for loc in locations if loc.name == name]
    if not chosen:
        valid = ", ".join(loc.name for loc in locations) or "none"
        raise Failure(
            f"location {name!r} is not a cleanable location of site {site.short_name} "
            f"(valid: {valid}; long-term archives are never cleaned automatically)"
        )
    return chosen


def _lta_copies_relied_on(
    session: Session, package_ids: set[int]
) -> list[tuple[int, DataLocation]]:
    rows = session.execute(
        select(RawDataPackagePhysicalCopy.raw_data_package_id, DataLocation)
        .join(DataLocation, DataLocation.id == RawDataPackagePhysicalCopy.data_location_id)
        .where(
            RawDataPackagePhysicalCopy.raw_data_package_id.in_(package_ids),
            RawDataPackagePhysicalCopy.status == PhysicalCopyStatus.PRESENT,
            DataLocation.location_type == LocationType.LONG_TERM_ARCHIVE,
        )
    ).all()
    return [(pid, loc) for pid, loc in rows]


def _fresh_checks(passed: list[dict]) -> dict[tuple[int, int], LtaEvidence]:
    """The check step's passed live checks that are recent enough to count as "right before
    the deletion" (read again otherwise): one full read of each archive copy per run."""
    now = utcnow()
    out: dict[tuple[int, int], LtaEvidence] = {}
    for row in passed:
        data = dict(row)
        key = (data.pop("package"), data.pop("lta"))
        evidence = LtaEvidence.from_dict(data)
        if now - evidence.checked_at <= CHECK_FRESH_FOR:
            out[key] = evidence
    return out


def build_cleanup_job(site: SiteView) -> JobDefinition:
    s = site.short_name

    @op(
        name=f"{s}_cleanup_lta_presence",
        out=Out(dict),
        description="lta_presence checks (blocking) of the packages this cleanup would delete.",
        tags={"ccat/site": s},
    )
    def lta_presence_step(
        context: OpExecutionContext,
        config: CleanupConfig,
        ops_db: OpsDbResource,
        storage: SiteStorageResource,
    ) -> dict:
        blocked: list[int] = []
        with ops_db.session() as session, storage.registry() as storages:
            site_db = site_row(session, s)
            package_ids: set[int] = set()
            for location in _site_locations(session, site_db, config.location):
                plan = plan_deletions(session, location=location, observer=s)
                package_ids |= {
                    c.raw_data_package_id
                    for c in plan.deletable
                    if c.rule in _RELIES_ON_ARCHIVE and c.raw_data_package_id is not None
                }
            verify = make_storage_lta_verifier(storages.get, prefer_stored_checksum=False)
            failed: set[int] = set()
            problems: list[str] = []
            passed: list[dict] = []
            for package_id, lta in _lta_copies_relied_on(session, package_ids):
                package = session.get(RawDataPackage, package_id)
                try:
                    evidence = verify(package, lta)
                except StorageError as exc:
                    if isinstance(exc, LocationUnavailableError):
                        _location_unavailable(context, session, exc, s)
                    evidence = LtaEvidence.cannot_verify(
                        lta.qualified_name, package.relative_path, exc
                    )
                if not config.dry_run:
                    record_lta_check(session, package, lta, evidence, run_id=context.run_id)
                    session.commit()
                context.log_event(lta_presence_evaluation(lta, package, evidence))
                if evidence.ok:
                    passed.append({"package": package_id, "lta": lta.id, **evidence.as_dict()})
                else:
                    failed.add(package_id)
                    problems.append(
                        f"lta_presence FAILED for {package.name} in {lta.qualified_name}: "
                        f"{evidence.detail}; its copies at {s} are kept"
                        + (" and the archive copy is re-archived" if evidence.examined else "")
                    )
                    context.log.error(problems[-1])
            blocked = sorted(failed)
        context.log.info(f"{len(package_ids)} packages checked, {len(blocked)} blocked")
        return {
            "location": config.location,
            "dry_run": config.dry_run,
            "blocked": blocked,
            "problems": problems,
            "passed": passed,
        }

    @op(
        name=f"{s}_cleanup_delete",
        ins={"checked": In(dict)},
        description="Bulk deletion, one cycle per location of the site, by the deletion rules.",
        pool=f"{s}_cleanup",
        tags={"ccat/site": s},
    )
    def delete_step(
        context: OpExecutionContext,
        checked: dict,
        ops_db: OpsDbResource,
        storage: SiteStorageResource,
    ) -> None:
        blocked = set(checked["blocked"])
        # a failed check is an incident even when the rules no longer offer the package
        errors: list[str] = list(checked.get("problems", []))
        fresh = _fresh_checks(checked.get("passed", []))
        with ops_db.session() as session, storage.registry() as storages:
            live = make_storage_lta_verifier(storages.get, prefer_stored_checksum=False)

            def verify(package: RawDataPackage, lta: DataLocation) -> LtaEvidence:
                if package.id in blocked:  # already recorded by the check step
                    return LtaEvidence.cannot_verify(
                        lta.qualified_name,
                        package.relative_path,
                        "blocked: its lta_presence check failed in this run",
                    )
                return fresh.get((package.id, lta.id)) or live(package, lta)

            site_db = site_row(session, s)
            for location in _site_locations(session, site_db, checked["location"]):
                report = run_cleanup_cycle(
                    session,
                    storage_for=storages.get,
                    verify_lta_copy=verify,
                    run_id=context.run_id,
                    location=location,
                    dry_run=checked["dry_run"],
                    observer=s,
                )
                text = report.plan.summary() if report.dry_run else report.summary()
                context.log.info(f"{location.qualified_name}: {text}")
                for check in report.lta_checks:
                    context.log_event(
                        lta_presence_evaluation(check.lta, check.package, check.evidence)
                    )
                errors += report.errors
                for exc in report.unavailable:
                    _location_unavailable(context, session, exc, s)
        if errors:
            raise Failure(
                description=f"cleanup at {s}: {len(errors)} problem(s); data was kept",
                metadata={f"error_{i}": MetadataValue.text(e) for i, e in enumerate(errors[:50])},
                allow_retries=False,
            )

    temporaries_step = build_temporaries_op(s)

    @job(
        name=cleanup_job_name(site),
        description=(
            f"Delete temporary copies at {s} that the deletion rules allow, after live "
            "lta_presence checks. Manual: `dagster job launch -j "
            f"{cleanup_job_name(site)} -w workspace.yaml -l {s} --config-json ...`"
        ),
        tags={"ccat/site": s, "ccat/stage": "deletion"},
    )
    def cleanup_job() -> None:
        checked = lta_presence_step()
        delete_step(checked)
        temporaries_step(checked)

    return cleanup_job


def cleanup_run_config(site: SiteView, *, location: str | None = None, dry_run: bool = False):
    return {
        "ops": {
            f"{site.short_name}_cleanup_lta_presence": {
                "config": {"location": location, "dry_run": dry_run}
            }
        }
    }


def _has_deletable(session: Session, site: Site) -> bool:
    """Anything deletable at a location of ``site`` that answers from here (a full one does:
    deleting is what frees it); a location that does not answer waits for its probe."""
    down = unavailability(session, site.short_name)
    return any(
        plan_deletions(session, location=loc, observer=site.short_name).deletable
        for loc in _site_locations(session, site, None)
        if not down.blocks(loc.id, write=False)
    )


def _location_unavailable(
    context: OpExecutionContext, session: Session, exc: LocationUnavailableError, site: str
) -> None:
    """Record a location error met by the cleanup (the location is unavailable from ``site``)
    and show it on the location's asset."""
    row = record_location_error(session, exc, observer=site, run_id=context.run_id)
    if row is None:
        return
    context.log.warning(f"{row.location} {row.describe()}")
    location = session.get(DataLocation, row.location_id)
    for event in location_events(location, ok=False, detail=row.reason, observer=site):
        context.log_event(event)


def build_cleanup_schedule(site: SiteView, cleanup_job: JobDefinition) -> ScheduleDefinition:
    @schedule(
        name=f"{site.short_name}_cleanup_schedule",
        job=cleanup_job,
        cron_schedule=CLEANUP_CRON,
        default_status=DefaultScheduleStatus.STOPPED,
        description=f"Run {cleanup_job.name} when the deletion rules allow something at the site.",
    )
    def cleanup_schedule(context: ScheduleEvaluationContext, ops_db: OpsDbResource):
        with ops_db.session() as session:
            if not _has_deletable(session, site_row(session, site.short_name)):
                return SkipReason("nothing deletable at this site")
        return RunRequest(run_config=cleanup_run_config(site), tags={"ccat/site": site.short_name})

    return cleanup_schedule


# --------------------------------------------------------------------------- buffer monitor


def _disk_locations(site: Site) -> list[DataLocation]:
    return [loc for loc in site.locations if loc.active and isinstance(loc, DiskDataLocation)]


def measure_site(session: Session, site: Site, storages) -> list[tuple[DataLocation, object]]:
    """Measure and record the disk usage of every active disk location of ``site``."""
    out = []
    for location in _disk_locations(site):
        usage = storages.get(location).disk_usage()
        status = record_disk_usage(
            session, location, used_bytes=usage.used_bytes, total_bytes=usage.total_bytes
        )
        out.append((location, status))
    session.commit()
    return out


def _observed_asset(location: DataLocation):
    kind = {
        LocationType.SOURCE: "raw_data_files",
        LocationType.BUFFER: RAW_DATA_PACKAGE,
        LocationType.LONG_TERM_ARCHIVE: RAW_DATA_PACKAGE,
        LocationType.PROCESSING: "staged_raw_data_package",
    }[location.location_type]
    return asset_key(location.site.short_name, location.name, kind)


def build_buffer_monitor_sensor(site: SiteView, cleanup_job: JobDefinition):
    s = site.short_name

    @sensor(
        name=f"{s}_buffer_monitor_sensor",
        job=cleanup_job,
        minimum_interval_seconds=MONITOR_INTERVAL_SECONDS,
        default_status=DefaultSensorStatus.STOPPED,
        description=(
            f"Disk usage of every disk location at {s}; escalates at warning/critical/emergency "
            "(docs/lifecycle.md: buffer levels)."
        ),
    )
    def buffer_monitor(
        context: SensorEvaluationContext, ops_db: OpsDbResource, storage: SiteStorageResource
    ):
        events = []
        with ops_db.session() as session, storage.registry() as storages:
            site_db = site_row(session, s)
            samples = measure_site(session, site_db, storages)
            action = site_buffer_action(session, site_db)
            for location, status in samples:
                events.append(
                    AssetObservation(
                        asset_key=_observed_asset(location),
                        metadata={
                            "disk_usage_percent": MetadataValue.float(round(status.percent, 2)),
                            "used_bytes": MetadataValue.int(status.used_bytes),
                            "total_bytes": MetadataValue.int(status.total_bytes),
                            "level": MetadataValue.text(status.level.name),
                        },
                    )
                )
                if location.location_type == LocationType.BUFFER:
                    emergency = status.level >= BufferLevel.EMERGENCY
                    events.append(
                        AssetCheckEvaluation(
                            asset_key=_observed_asset(location),
                            check_name=BUFFER_CAPACITY,
                            passed=not emergency,
                            severity=AssetCheckSeverity.ERROR
                            if emergency
                            else AssetCheckSeverity.WARN,
                            description=(action.alert if action and emergency else None)
                            or f"{status.percent:.1f}% used ({status.level.name})",
                            metadata={"disk_usage_percent": MetadataValue.float(status.percent)},
                        )
                    )
            if action is not None:
                if action.alert:
                    (
                        context.log.error
                        if action.level >= BufferLevel.CRITICAL
                        else context.log.warning
                    )(action.alert)
                for location in site_db.locations:
                    if location.active and location.location_type == LocationType.BUFFER:
                        context.instance.event_log_storage.set_concurrency_slots(
                            pool_name(location, OperationType.DATA_TRANSFER),
                            action.max_parallel_transfers,
                        )
            run_now = bool(action and action.run_cleanup_now and _has_deletable(session, site_db))
        run_requests = []
        if run_now:
            run_requests.append(
                RunRequest(
                    run_key=f"{s}_pressure_cleanup:{int(utcnow().timestamp() // 600)}",
                    run_config=cleanup_run_config(site),
                    tags={"ccat/site": s, "ccat/trigger": "buffer_pressure"},
                )
            )
        return SensorResult(run_requests=run_requests, asset_events=events)

    return buffer_monitor


def _buffer_capacity_check(site: str, buffer: str):
    @asset_check(
        asset=asset_key(site, buffer, RAW_DATA_PACKAGE),
        name=BUFFER_CAPACITY,
        description="Disk usage of the buffer is below the emergency threshold.",
    )
    def _check(ops_db: OpsDbResource, storage: SiteStorageResource) -> AssetCheckResult:
        with ops_db.session() as session, storage.registry() as storages:
            location = next(loc for loc in site_row(session, site).locations if loc.name == buffer)
            usage = storages.get(location).disk_usage()
            status = record_disk_usage(
                session, location, used_bytes=usage.used_bytes, total_bytes=usage.total_bytes
            )
            session.commit()
        return AssetCheckResult(
            passed=status.level < BufferLevel.EMERGENCY,
            severity=AssetCheckSeverity.ERROR,
            description=f"{status.percent:.1f}% used ({status.level.name})",
            metadata={"disk_usage_percent": MetadataValue.float(status.percent)},
        )

    return _check


def build_buffer_capacity_checks(site: SiteView) -> list:
    """``buffer_capacity`` on each buffer's asset: below the emergency threshold (run on demand
    from the UI; the monitor sensor records an evaluation every tick)."""
    return [
        _buffer_capacity_check(site.short_name, b.name) for b in site.of_type(LocationType.BUFFER)
    ]
