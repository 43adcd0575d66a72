"""The consistency audit on Dagster: ``{site}_consistency_audit`` audits one slice of each of
the site's locations that is due (``lifecycle/audit``), and records the outcome as the
``consistency`` check of the location's asset; ``{site}_consistency_audit_schedule`` requests
it (one run at a time) when some location is due. The same ``consistency`` check can be
executed from the UI for one location.

A location unavailable from this site is skipped (a location that cannot be listed proves
nothing); one that fails while it is listed is marked unavailable, as in any run. ``ccat
run-until-idle`` does not tick the schedule (it drives the pipeline, not the periodic checks).
"""

from dagster import (
    AssetCheckEvaluation,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetKey,
    DefaultScheduleStatus,
    JobDefinition,
    MetadataValue,
    OpExecutionContext,
    Out,
    Output,
    RunRequest,
    RunsFilter,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    asset_check,
    job,
    op,
    schedule,
)
from sqlalchemy.orm import Session

from ccat_dagster.defs.availability import location_asset, location_events
from ccat_dagster.defs.keys import CONSISTENCY, location_asset_key
from ccat_dagster.defs.resources import OpsDbResource, SiteStorageResource
from ccat_dagster.defs.sensors import IN_FLIGHT
from ccat_dagster.defs.stages import location_named, site_row
from ccat_dagster.defs.topology import LocationView, SiteView
from ccat_dagster.lifecycle.audit.run import (
    AUDITED_TYPES,
    AuditReport,
    audit_location,
    locations_due,
)
from ccat_dagster.lifecycle.capacity.availability import record_location_error, unavailability
from ccat_dagster.lifecycle.common import names
from ccat_dagster.lifecycle.common.activity import why_inactive
from ccat_dagster.storage.errors import LocationUnavailableError
from ccat_ops_db.models import DataLocation

#: a schedule with this tag is not ticked by ``ccat run-until-idle``
NOT_RUN_UNTIL_IDLE = "ccat/run-until-idle"
#: how often the schedule looks for due locations (the policy's ``audit_interval_minutes``
#: decides when each location's next slice is due)
AUDIT_CRON = "*/15 * * * *"


def consistency_outcome(report: AuditReport) -> dict:
    """``passed``, ``severity``, ``description`` and ``metadata`` of a ``consistency`` check."""
    severity = (
        AssetCheckSeverity.ERROR
        if report.anomaly or report.lost or report.errors
        else AssetCheckSeverity.WARN
    )
    metadata = {
        "objects_listed": MetadataValue.int(report.listed),
        "objects_compared": MetadataValue.int(report.compared),
        "dark": MetadataValue.int(report.dark),
        "lost": MetadataValue.int(report.lost),
        "new_findings": MetadataValue.int(report.new),
        "confirmed": MetadataValue.int(report.confirmed),
        "repaired": MetadataValue.int(report.acted),
        "quarantined": MetadataValue.int(report.quarantined),
        "cursor": MetadataValue.text(report.cursor or "(start of the next pass)"),
        "pass": MetadataValue.int(report.pass_number),
        "anomaly": MetadataValue.bool(report.anomaly is not None),
    }
    if report.errors:
        metadata["errors"] = MetadataValue.text("; ".join(report.errors[:20]))
    return {
        "passed": report.passed,
        "severity": severity,
        "description": report.summary(),
        "metadata": metadata,
    }


def consistency_evaluation(location: DataLocation, report: AuditReport) -> AssetCheckEvaluation:
    return AssetCheckEvaluation(
        asset_key=location_asset(location),
        check_name=CONSISTENCY,
        **consistency_outcome(report),
    )


def audit_site(
    session: Session, site: str, storage_for, *, run_id: str | None, log=None
) -> tuple[list[AuditReport], list]:
    """Audit one slice of every due location of ``site`` that answers from it; the reports
    and the UI events (check evaluations, availability changes)."""
    reports: list[AuditReport] = []
    events: list = []
    site_db = site_row(session, site)
    down = unavailability(session, site)
    for location in locations_due(session, site_db):
        if down.blocks(location.id, write=False):
            if log:
                log(f"{location.qualified_name}: unavailable from {site}, not audited")
            continue
        try:
            report = audit_location(session, location, storage_for(location), run_id=run_id)
        except LocationUnavailableError as exc:
            session.rollback()
            if record_location_error(session, exc, observer=site, run_id=run_id) is not None:
                events += location_events(location, ok=False, detail=str(exc), observer=site)
            if log:
                log(f"{location.qualified_name}: not audited: {exc}")
            continue
        reports.append(report)
        events.append(consistency_evaluation(location, report))
        if log:
            log(report.summary())
    return reports, events


def build_audit_job(site: SiteView) -> JobDefinition:
    s = site.short_name

    @op(
        name=names.consistency_audit_op(s),
        description="Audit one slice of each due location of the site: lost and dark objects.",
        out=Out(dict),
        tags={"ccat/site": s},
    )
    def consistency_audit(
        context: OpExecutionContext, ops_db: OpsDbResource, storage: SiteStorageResource
    ):
        with ops_db.session() as session, storage.registry() as storages:
            stopped = why_inactive(session, s)
            if stopped:
                context.log.warning(f"not started: {stopped}")
                return Output({"locations": 0})
            reports, events = audit_site(
                session, s, storages.get, run_id=context.run_id, log=context.log.info
            )
        for event in events:
            context.log_event(event)
        counts = {
            "locations": len(reports),
            "dark": sum(r.dark for r in reports),
            "lost": sum(r.lost for r in reports),
            "repaired": sum(r.acted for r in reports),
            "quarantined": sum(r.quarantined for r in reports),
            "anomalous": sum(r.anomaly is not None for r in reports),
        }
        return Output(counts, metadata={k: MetadataValue.int(v) for k, v in counts.items()})

    @job(
        name=names.consistency_audit_job(s),
        description=f"Consistency audit of site {s}'s locations (dark and lost objects).",
        tags={"ccat/site": s},
    )
    def audit_job() -> None:
        consistency_audit()

    return audit_job


def build_audit_schedule(site: SiteView, audit_job: JobDefinition) -> ScheduleDefinition:
    s = site.short_name

    @schedule(
        name=names.consistency_audit_schedule(s),
        job=audit_job,
        cron_schedule=AUDIT_CRON,
        default_status=DefaultScheduleStatus.STOPPED,
        tags={NOT_RUN_UNTIL_IDLE: "skip"},
        description=f"Run {audit_job.name} when a location of the site is due for its next "
        "audit slice (policy audit_interval_minutes), one run at a time.",
    )
    def audit_schedule(context: ScheduleEvaluationContext, ops_db: OpsDbResource):
        running = context.instance.get_runs_count(
            filters=RunsFilter(job_name=audit_job.name, statuses=IN_FLIGHT)
        )
        if running:
            return SkipReason("an audit run is in flight")
        with ops_db.session() as session:
            if why_inactive(session, s) is not None:
                return SkipReason(f"site {s} is not active")
            due = locations_due(session, site_row(session, s))
            if not due:
                return SkipReason("no location is due for an audit slice")
        return RunRequest(tags={"ccat/site": s, NOT_RUN_UNTIL_IDLE: "skip"})

    return audit_schedule


def _consistency_check(location: LocationView, key: AssetKey):
    site = location.site

    @asset_check(
        asset=key,
        name=CONSISTENCY,
        description=(
            f"The consistency audit of {location.qualified_name}: one slice of its objects "
            "compared with the catalogue (lost: PRESENT in the catalogue, no object or another "
            "size; dark: an object the catalogue does not know). Run by "
            f"{names.consistency_audit_job(site)}; executing it audits the next slice."
        ),
    )
    def _check(ops_db: OpsDbResource, storage: SiteStorageResource) -> AssetCheckResult:
        with ops_db.session() as session, storage.registry() as storages:
            loc = location_named(session, site, location.name)
            report = audit_location(session, loc, storages.get(loc))
        return AssetCheckResult(**consistency_outcome(report))

    return _check


def build_consistency_checks(site: SiteView, asset_keys: set[AssetKey]) -> list:
    """``consistency`` on the asset of each audited location of the site that has one here."""
    checks = []
    for location in site.locations:
        if location.location_type not in AUDITED_TYPES:
            continue
        key = location_asset_key(site.short_name, location.name, location.location_type)
        if key in asset_keys:
            checks.append(_consistency_check(location, key))
    return checks
