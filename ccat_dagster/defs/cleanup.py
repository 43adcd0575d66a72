"""The cleanup of one site: a scheduled job gated on lta_presence checks, and the buffer monitor.

Deactivated locations that still hold copies (``SiteView.draining``) are cleaned like active
ones, so a location can be drained and retired.

Job ``{site}_cleanup`` (names: ``lifecycle.common.names``). ``..._lta_presence`` re-checks live, for
every package whose copy at this site the rules would delete, the archive copies the deletion
relies on, and records each as an ``lta_presence`` check evaluation of that package's partition;
failed packages are passed on as blocked. Then one ``..._delete_{location}`` step per location
of the site (never a long-term archive) runs one bulk cleanup cycle there
(lifecycle.deletion.cycle), in that location's pool ``{site}_{location}_deletion``, so a limit per
location holds across runs; it re-verifies the LTA copy once more right before deleting the last
copy outside an LTA and keeps anything blocked. Any error fails that step, and the run, with the
reasons, so an operator sees it in the UI. Config (of the first step): ``location`` (one location of
this site; the other locations' steps do nothing) and ``dry_run``. The last step ``..._temporaries``
(same ``location`` and ``dry_run``) removes what killed runs left behind (defs.temporaries). At a
site with a long-term archive, ``..._partitions`` prunes the archives' partition sets past the
policy's ``partition_horizon_days`` (defs.partitions.prune_partitions; nothing when it is 0).

The buffer monitor sensor measures every active disk location of the site, stores the sample,
reports it as an asset observation (plotted in the UI) and escalates as docs/lifecycle.md describes:
pools lowered to max_critical_transfers and a cleanup every critical_cleanup_interval_minutes at
CRITICAL; at EMERGENCY a cleanup every emergency_cleanup_interval_minutes, packaging paused and
a failed ``buffer_capacity`` check (defs.pressure_cleanup); limits go back when pressure falls. The
cleanup cron and the monitor's interval come from ``defs.settings.Settings`` (read when the
definitions are built).
"""

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
    OpDefinition,
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

from ccat_dagster.defs.activity import skip_if_inactive
from ccat_dagster.defs.availability import location_asset, location_events
from ccat_dagster.defs.keys import RAW_DATA_PACKAGE, asset_key
from ccat_dagster.defs.partitions import (
    drop_partitions,
    prune_partitions,
    release_ended_partitions,
)
from ccat_dagster.defs.pressure_cleanup import cleanup_in_flight, pressure_cleanup_run_key
from ccat_dagster.defs.resources import OpsDbResource, SiteStorageResource
from ccat_dagster.defs.stages import (
    TRANSFER,
    follow_max_runs,
    location_named,
    log_event,
    lta_presence_evaluation,
    site_buffer_action,
    site_row,
)
from ccat_dagster.defs.temporaries import build_temporaries_op
from ccat_dagster.defs.topology import LocationView, SiteView
from ccat_dagster.lifecycle.archive.repair import record_lta_check
from ccat_dagster.lifecycle.archive.verification import LtaEvidence, make_storage_lta_verifier
from ccat_dagster.lifecycle.capacity.availability import record_location_error, unavailability
from ccat_dagster.lifecycle.capacity.buffer_policy import (
    BufferLevel,
    BufferStatus,
    record_disk_usage,
)
from ccat_dagster.lifecycle.capacity.forecast import (
    DiskForecast,
    forecast_locations,
    pressure_alert,
)
from ccat_dagster.lifecycle.common import names
from ccat_dagster.lifecycle.common.operations import OperationType
from ccat_dagster.lifecycle.common.policy import get_policy
from ccat_dagster.lifecycle.deletion.cycle import run_cleanup_cycle
from ccat_dagster.lifecycle.deletion.plan import has_deletable, plan_deletions
from ccat_dagster.lifecycle.deletion.rules import (
    RULE_RDF_DELETION_POSSIBLE,
    RULE_RDP_LTA_BUFFER,
    RULE_RDP_SOURCE_BUFFER,
)
from ccat_dagster.storage.errors import LocationUnavailableError, StorageError
from ccat_ops_db.models import (
    DataLocation,
    DiskDataLocation,
    LocationType,
    PhysicalCopyStatus,
    RawDataPackage,
    RawDataPackagePhysicalCopy,
    Site,
    qualified_location_name,
    utcnow,
)

BUFFER_CAPACITY = "buffer_capacity"
#: a live check of the check step is reused by the delete step of the same run for this long
CHECK_FRESH_FOR = timedelta(minutes=10)
#: the rules whose deletions rely on the archive copies (checked first, per partition)
_RELIES_ON_ARCHIVE = (RULE_RDP_SOURCE_BUFFER, RULE_RDP_LTA_BUFFER, RULE_RDF_DELETION_POSSIBLE)


class CleanupConfig(Config):
    """Manual cleanup: ``location`` limits it to one location of this site (its name)."""

    location: str | None = None
    dry_run: bool = False


def _site_locations(session: Session, site: Site, name: str | None) -> list[DataLocation]:
    """The locations this site's cleanup may touch (never a LONG_TERM_ARCHIVE): the active ones
    and the deactivated ones, which are drained by the same rules so that they can be retired
    and the SOURCE files waiting for their package copies are released."""
    locations = [
        loc for loc in site.locations if loc.location_type != LocationType.LONG_TERM_ARCHIVE
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


def _no_step_for(site: str, name: str, cleaned: list[str]) -> None:
    """Fail a run asked to clean a location this code location has no delete step for."""
    raise Failure(
        f"location {name!r} has no cleanup step in this code location of site {site} "
        f"(cleaned here: {', '.join(cleaned) or 'none'}); if it was added or activated in the "
        "topology since, reload the code location",
        allow_retries=False,
    )


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
    return [(pid, loc) for pid, loc in rows if pid is not None]  # never None: in_() above


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


def _check_op(s: str, cleaned: list[str]) -> OpDefinition:
    """The first step; ``cleaned``: the locations that have a delete step in this job."""

    @op(
        name=names.cleanup_check_op(s),
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
        # package id -> the locations whose deletions rely on its archive copies
        relying: dict[int, list[str]] = {}
        problems: dict[str, list[str]] = {}
        with ops_db.session() as session, storage.registry() as storages:
            locations = _site_locations(session, site_row(session, s), config.location)
            if config.location is not None and config.location not in cleaned:
                _no_step_for(s, config.location, cleaned)
            # no delete step, nothing to check: one (de)activated since the code location loaded
            locations = [loc for loc in locations if loc.name in cleaned]
            for location in locations:
                plan = plan_deletions(session, location=location, observer=s)
                for c in plan.deletable:
                    if c.rule in _RELIES_ON_ARCHIVE and c.raw_data_package_id is not None:
                        names_at = relying.setdefault(c.raw_data_package_id, [])
                        if location.name not in names_at:
                            names_at.append(location.name)
            verify = make_storage_lta_verifier(storages.get, prefer_stored_checksum=False)
            failed: set[int] = set()
            passed: list[dict] = []
            for package_id, lta in _lta_copies_relied_on(session, set(relying)):
                package = session.get_one(RawDataPackage, package_id)
                try:
                    evidence = verify(package, lta)
                except StorageError as exc:
                    if isinstance(exc, LocationUnavailableError):
                        _location_unavailable(context, session, exc, s)
                    evidence = LtaEvidence.cannot_verify(package, lta, exc)
                if not config.dry_run:
                    record_lta_check(session, package, lta, evidence, run_id=context.run_id)
                    session.commit()
                log_event(context, lta_presence_evaluation(lta, package, evidence))
                if evidence.ok:
                    passed.append({"package": package_id, "lta": lta.id, **evidence.as_dict()})
                    continue
                failed.add(package_id)
                for name in relying[package_id]:
                    problem = (
                        f"lta_presence FAILED for {package.name} in {lta.qualified_name}: "
                        f"{evidence.detail}; its copies at {qualified_location_name(s, name)} "
                        "are kept"
                        + (" and the archive copy is re-archived" if evidence.examined else "")
                    )
                    problems.setdefault(name, []).append(problem)
                    context.log.error(problem)
            blocked = sorted(failed)
        context.log.info(f"{len(relying)} packages checked, {len(blocked)} blocked")
        return {
            "location": config.location,
            "dry_run": config.dry_run,
            "blocked": blocked,
            "problems": problems,
            "passed": passed,
        }

    return lta_presence_step


def _delete_op(s: str, where: LocationView) -> OpDefinition:
    @op(
        name=names.cleanup_delete_op(s, where.name),
        ins={"checked": In(dict)},
        description=(
            f"Bulk deletion at {where.qualified_name} by the deletion rules (one cycle), in the "
            "location's deletion pool."
        ),
        pool=names.pool_name(where, OperationType.DELETION),
        tags={"ccat/site": s, "ccat/location": where.name},
    )
    def delete_step(
        context: OpExecutionContext,
        checked: dict,
        ops_db: OpsDbResource,
        storage: SiteStorageResource,
    ) -> None:
        if checked["location"] not in (None, where.name):
            context.log.info(f"{where.qualified_name}: not cleaned by this run")
            return
        blocked = set(checked["blocked"])
        # a failed check is an incident even when the rules no longer offer the package
        errors: list[str] = list(checked.get("problems", {}).get(where.name, []))
        fresh = _fresh_checks(checked.get("passed", []))
        with ops_db.session() as session, storage.registry() as storages:
            live = make_storage_lta_verifier(storages.get, prefer_stored_checksum=False)

            def verify(package: RawDataPackage, lta: DataLocation) -> LtaEvidence:
                if package.id in blocked:  # already recorded by the check step
                    return LtaEvidence.cannot_verify(
                        package, lta, "blocked: its lta_presence check failed in this run"
                    )
                return fresh.get((package.id, lta.id)) or live(package, lta)

            # deactivated or not, the same rules: a deactivated location is drained
            location = location_named(session, s, where.name)
            report = run_cleanup_cycle(
                session,
                storage_for=storages.get,
                verify_lta_copy=verify,
                run_id=context.run_id,
                location=location,
                dry_run=checked["dry_run"],
                observer=s,
            )
            # a dry run's report has its plan
            plan = report.plan if report.dry_run else None
            text = plan.summary() if plan is not None else report.summary()
            context.log.info(f"{location.qualified_name}: {text}")
            for check in report.lta_checks:
                log_event(
                    context, lta_presence_evaluation(check.lta, check.package, check.evidence)
                )
            if not report.dry_run:  # the UI's partitions follow the catalogue
                ended = release_ended_partitions(context.instance, session, location)
                for observation in ended:
                    log_event(context, observation)
                drop_partitions(context.instance, ended)
            errors += report.errors
            for exc in report.unavailable:
                _location_unavailable(context, session, exc, s)
        if errors:
            raise Failure(
                description=(
                    f"cleanup at {where.qualified_name}: {len(errors)} problem(s); data was kept"
                ),
                metadata={f"error_{i}": MetadataValue.text(e) for i, e in enumerate(errors[:50])},
                allow_retries=False,
            )

    return delete_step


def _partitions_op(s: str, archives: list[str]) -> OpDefinition:
    @op(
        name=names.cleanup_partitions_op(s),
        ins={"checked": In(dict)},
        description=(
            "Remove from the site's archive partition sets the packages whose lifecycle "
            "finished more than partition_horizon_days ago (0: keep all)."
        ),
        tags={"ccat/site": s},
    )
    def partitions_step(context: OpExecutionContext, checked: dict, ops_db: OpsDbResource) -> None:
        if checked["location"] is not None:  # a cleanup of one location leaves them
            return
        with ops_db.session() as session:
            horizon = get_policy(session).partition_horizon_days
            for name in archives:
                location = location_named(session, s, name)
                pruned = prune_partitions(context.instance, session, location, horizon_days=horizon)
                verb = "would prune" if checked["dry_run"] else "pruned"
                context.log.info(
                    f"{location.qualified_name}: {verb} {len(pruned)} partition(s) past "
                    f"{horizon} days"
                    if horizon
                    else f"{location.qualified_name}: no horizon"
                )
                if checked["dry_run"] or not pruned:
                    continue
                for observation in pruned:
                    log_event(context, observation)
                drop_partitions(context.instance, pruned)

    return partitions_step


def build_cleanup_job(site: SiteView) -> JobDefinition:
    """Check, then one deletion step per cleaned location of the site (each in its own
    ``{site}_{location}_deletion`` pool), and the sweep of temporaries."""
    s = site.short_name
    # the draining (deactivated) locations keep their step until they are empty
    cleaned = names.cleaned_locations(site.locations + site.draining)
    check_step = _check_op(s, [loc.name for loc in cleaned])
    delete_steps = [_delete_op(s, loc) for loc in cleaned]
    temporaries_step = build_temporaries_op(s)
    archives = [loc.name for loc in site.of_type(LocationType.LONG_TERM_ARCHIVE)]
    partitions_step = _partitions_op(s, archives) if archives else None
    job_name = names.cleanup_job(s)

    @job(
        name=job_name,
        description=(
            f"Delete temporary copies at {s} that the deletion rules allow, after live "
            "lta_presence checks. Manual: `dagster job launch -j "
            f"{job_name} -w workspace.yaml -l {s} --config-json ...`"
        ),
        tags={"ccat/site": s, "ccat/stage": "deletion"},
    )
    def cleanup_job() -> None:
        checked = check_step()
        for delete_step in delete_steps:
            delete_step(checked)
        temporaries_step(checked)
        if partitions_step is not None:
            partitions_step(checked)

    return cleanup_job


def cleanup_run_config(site: SiteView, *, location: str | None = None, dry_run: bool = False):
    return {
        "ops": {
            names.cleanup_check_op(site.short_name): {
                "config": {"location": location, "dry_run": dry_run}
            }
        }
    }


def _has_deletable(session: Session, site: Site, view: SiteView) -> bool:
    """Anything deletable at a location of ``site`` that has a delete step in this code
    location (``view``: one activated or deactivated since has none until the next load, and a
    run would only do nothing) and answers from here (a full one does: deleting is what frees
    it); a location that does not answer waits for its probe."""
    down = unavailability(session, site.short_name)
    stepped = {loc.name for loc in names.cleaned_locations(view.locations + view.draining)}
    answering = [
        loc
        for loc in _site_locations(session, site, None)
        if loc.name in stepped and not down.blocks(loc.id, write=False)
    ]
    return has_deletable(session, answering, observer=site.short_name)


def _location_unavailable(
    context: OpExecutionContext, session: Session, exc: LocationUnavailableError, site: str
) -> None:
    """Record a location error met by the cleanup (the location is unavailable from ``site``)
    and show it on the location's asset."""
    row = record_location_error(session, exc, observer=site, run_id=context.run_id)
    if row is None:
        return
    context.log.warning(f"{row.location} {row.describe()}")
    location = session.get_one(DataLocation, row.location_id)
    for event in location_events(location, ok=False, detail=row.reason, observer=site):
        log_event(context, event)


def build_cleanup_schedule(
    site: SiteView, cleanup_job: JobDefinition, *, cron: str
) -> ScheduleDefinition:
    @schedule(
        name=names.cleanup_schedule(site.short_name),
        job=cleanup_job,
        cron_schedule=cron,
        default_status=DefaultScheduleStatus.STOPPED,
        description=f"Run {cleanup_job.name} when the deletion rules allow something at the site.",
    )
    def cleanup_schedule(context: ScheduleEvaluationContext, ops_db: OpsDbResource):
        with ops_db.session() as session:
            if not _has_deletable(session, site_row(session, site.short_name), site):
                return SkipReason("nothing deletable at this site")
        return RunRequest(run_config=cleanup_run_config(site), tags={"ccat/site": site.short_name})

    return cleanup_schedule


# --------------------------------------------------------------------------- buffer monitor


def _disk_locations(site: Site) -> list[DataLocation]:
    return [loc for loc in site.locations if loc.active and isinstance(loc, DiskDataLocation)]


def measure_site(session: Session, site: Site, storages) -> list[tuple[DataLocation, BufferStatus]]:
    """Measure and record the disk usage of every active disk location of ``site``."""
    out: list[tuple[DataLocation, BufferStatus]] = []
    for location in _disk_locations(site):
        usage = storages.get(location).disk_usage()
        status = record_disk_usage(
            session, location, used_bytes=usage.used_bytes, total_bytes=usage.total_bytes
        )
        out.append((location, status))
    session.commit()
    return out


def forecast_metadata(ahead: DiskForecast) -> dict[str, MetadataValue]:
    """The forecast as numbers the UI plots (hours; -1: not filling or not known yet)."""
    rate = ahead.fill_rate_percent_per_hour
    metadata: dict[str, MetadataValue] = {
        "fill_rate_percent_per_hour": MetadataValue.float(round(rate or 0.0, 4))
    }
    for level, hours in ahead.hours_to.items():
        metadata[f"hours_to_{level}"] = MetadataValue.float(
            round(hours, 2) if hours is not None else -1.0
        )
    return metadata


def build_buffer_monitor_sensor(
    site: SiteView, cleanup_job: JobDefinition, *, interval_seconds: int
):
    s = site.short_name

    @sensor(
        name=names.buffer_monitor_sensor(s),
        job=cleanup_job,
        minimum_interval_seconds=interval_seconds,
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
            # only the site: its inactive locations are left out of the measurement already
            stopped = skip_if_inactive(context, session, s)
            if stopped is not None:
                return stopped
            site_db = site_row(session, s)
            samples = measure_site(session, site_db, storages)
            action = site_buffer_action(session, site_db)
            policy = get_policy(session)
            forecasts = forecast_locations(session, [loc for loc, _ in samples], policy=policy)
            for (location, status), ahead in zip(samples, forecasts, strict=True):
                events.append(
                    AssetObservation(
                        asset_key=location_asset(location),
                        metadata={
                            "disk_usage_percent": MetadataValue.float(round(status.percent, 2)),
                            "used_bytes": MetadataValue.int(status.used_bytes),
                            "total_bytes": MetadataValue.int(status.total_bytes),
                            "level": MetadataValue.text(status.level.name),
                            **forecast_metadata(ahead),
                        },
                    )
                )
                alert = pressure_alert(ahead, policy)
                if alert:
                    context.log.warning(alert)
                if location.location_type == LocationType.BUFFER:
                    emergency = status.level >= BufferLevel.EMERGENCY
                    events.append(
                        AssetCheckEvaluation(
                            asset_key=location_asset(location),
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
            if action is not None and action.alert:
                log = (
                    context.log.error
                    if action.level >= BufferLevel.CRITICAL
                    else context.log.warning
                )
                log(action.alert)
            if TRANSFER.applies(site):  # lowered at once under pressure, back when it falls
                follow_max_runs(context.instance, session, TRANSFER, site, site_db)
            run_key = pressure_cleanup_run_key(s, action, utcnow())
            run_now = bool(
                run_key
                and not cleanup_in_flight(context.instance, cleanup_job.name)
                and _has_deletable(session, site_db, site)
            )
        run_requests = []
        if run_now:
            run_requests.append(
                RunRequest(
                    run_key=run_key,
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
            location = location_named(session, site, buffer)
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
