"""The restore drill on Dagster, at a site with a LONG_TERM_ARCHIVE and a PROCESSING location.

``<site>/restore_drill`` is an asset, not only a job, so the UI shows what matters on one page:
each drill is a materialization whose metadata holds the outcome, the time to restore (plotted
over time from the numeric values) and what was restored from which archive, and its
``restore_verified`` check is green or red. Materializing it by hand runs a drill;
``<site>_restore_drill`` (the asset's job) runs it on ``<site>_restore_drill_schedule``, which
ticks hourly and requests a run only when a drill is due (``restore_drill_interval_minutes``,
``ccat_dagster.lifecycle.staging.drill.drill_due``). The drill itself, and its record in the
ops DB, is :mod:`ccat_dagster.lifecycle.staging.drill`.
"""

from __future__ import annotations

from typing import Any

from dagster import (
    AllPartitionMapping,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetDep,
    AssetKey,
    AssetsDefinition,
    DefaultScheduleStatus,
    Failure,
    MaterializeResult,
    MetadataValue,
    RunRequest,
    RunsFilter,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    asset,
    define_asset_job,
    schedule,
)

from ccat_dagster.defs.keys import RAW_DATA_PACKAGE, asset_key
from ccat_dagster.defs.resources import OpsDbResource, SiteStorageResource
from ccat_dagster.defs.sensors import IN_FLIGHT
from ccat_dagster.defs.stages import site_row
from ccat_dagster.defs.staging import STAGE
from ccat_dagster.defs.topology import SiteView
from ccat_dagster.lifecycle.common import names
from ccat_dagster.lifecycle.staging import drill
from ccat_ops_db.models import LocationType

RESTORE_DRILL = "restore_drill"
RESTORE_VERIFIED = "restore_verified"
#: the schedule's tick; whether a drill is due is decided from the ops DB at each tick
DRILL_CRON = "17 * * * *"


def drill_asset_key(site: str) -> AssetKey:
    return AssetKey([site, RESTORE_DRILL])


def applies(site: SiteView) -> bool:
    return bool(site.of_type(LocationType.LONG_TERM_ARCHIVE)) and STAGE.applies(site)


def drill_metadata(report: drill.DrillReport) -> dict[str, MetadataValue]:
    restored = sum(p.bytes for p in report.packages)
    slowest = max((p.seconds for p in report.packages), default=0.0)
    lines = [
        f"{'ok' if p.ok else 'FAILED'}  {p.package} from {p.lta}: {p.files_verified} file(s), "
        f"{p.bytes} bytes, {p.seconds:.2f} s" + (f" ({p.detail})" if p.detail else "")
        for p in report.packages
    ]
    return {
        "outcome": MetadataValue.text(report.outcome),
        "passed": MetadataValue.bool(report.ok),
        "time_to_restore_seconds": MetadataValue.float(round(report.seconds, 3)),
        "slowest_package_seconds": MetadataValue.float(slowest),
        "packages": MetadataValue.int(len(report.packages)),
        "packages_failed": MetadataValue.int(len(report.failures)),
        "files_verified": MetadataValue.int(sum(p.files_verified for p in report.packages)),
        "bytes_restored": MetadataValue.int(restored),
        "archives": MetadataValue.text(
            ", ".join(sorted({p.lta for p in report.packages})) or "none"
        ),
        "processing_location": MetadataValue.path(report.location),
        "staging_job": MetadataValue.int(report.staging_job or 0),
        "restores": MetadataValue.md("\n".join(f"- {line}" for line in lines) or report.note),
    }


def build_restore_drill_asset(site: SiteView, lta_keys: list[AssetKey]) -> AssetsDefinition:
    s = site.short_name

    @asset(
        key=drill_asset_key(s),
        deps=[AssetDep(k, partition_mapping=AllPartitionMapping()) for k in lta_keys],
        group_name=s,
        description=(
            f"Restore drills of {s}: a random sample of archived packages staged from each "
            f"archive of {s} to its PROCESSING location and verified file by file. Each "
            "materialization is one drill: outcome and time to restore in its metadata."
        ),
        pool=STAGE.pool(site),
        kinds={"ccat"},
        check_specs=[AssetCheckSpec(RESTORE_VERIFIED, asset=drill_asset_key(s))],
    )
    def restore_drill(
        context, ops_db: OpsDbResource, storage: SiteStorageResource
    ) -> MaterializeResult:
        with ops_db.session() as session, storage.registry() as storages:
            report = drill.run_restore_drill(
                session, site_row(session, s), storage_for=storages.get, run_id=context.run_id
            )
        if report is None:
            raise Failure(f"{s} has no active LONG_TERM_ARCHIVE or PROCESSING location to drill")
        for failure in report.failures:
            context.log.error(
                f"restore drill: {failure.package} from {failure.lta}: {failure.detail}"
            )
        metadata = drill_metadata(report)
        return MaterializeResult(
            metadata=metadata,
            check_results=[
                AssetCheckResult(
                    check_name=RESTORE_VERIFIED,
                    passed=report.ok,
                    severity=AssetCheckSeverity.ERROR,
                    description=(
                        f"{len(report.packages)} package(s) restored and verified file by file"
                        if report.ok
                        else f"{len(report.failures)} of {len(report.packages)} restore(s) failed"
                    ),
                    metadata={
                        k: metadata[k]
                        for k in ("time_to_restore_seconds", "packages_failed", "restores")
                    },
                )
            ],
        )

    return restore_drill


def build_restore_drill_schedule(site: SiteView, drill_job: Any) -> ScheduleDefinition:
    s = site.short_name

    @schedule(
        name=names.restore_drill_schedule(s),
        job=drill_job,
        cron_schedule=DRILL_CRON,
        default_status=DefaultScheduleStatus.STOPPED,
        description=(
            f"Run a restore drill of {s} when the last one is older than "
            "restore_drill_interval_minutes."
        ),
    )
    def drill_schedule(context: ScheduleEvaluationContext, ops_db: OpsDbResource):
        in_flight = context.instance.get_runs(
            filters=RunsFilter(job_name=drill_job.name, statuses=IN_FLIGHT), limit=1
        )
        if in_flight:
            return SkipReason("a restore drill is running")
        with ops_db.session() as session:
            why = drill.drill_due(session, site_row(session, s))
        if why is None:
            return SkipReason("no restore drill due")
        context.log.info(f"restore drill due: {why}")
        return RunRequest(tags={"ccat/site": s, "ccat/stage": RESTORE_DRILL})

    return drill_schedule


def build_site_restore_drill(
    snapshot, site: SiteView
) -> tuple[list[AssetsDefinition], list[Any], list[ScheduleDefinition]]:
    """(assets, jobs, schedules) of the restore drill at ``site``; empty where it cannot run."""
    if not applies(site):
        return [], [], []
    lta_keys = [
        asset_key(s.short_name, lta.name, RAW_DATA_PACKAGE)
        for s in snapshot.lta_sites
        if s.short_name == site.short_name
        for lta in s.of_type(LocationType.LONG_TERM_ARCHIVE)
    ]
    drill_job = define_asset_job(
        names.restore_drill_job(site.short_name),
        selection=[drill_asset_key(site.short_name)],
        description=f"A restore drill of {site.short_name} (the restore_drill asset).",
        tags={"ccat/site": site.short_name, "ccat/stage": RESTORE_DRILL},
    )
    return (
        [build_restore_drill_asset(site, lta_keys)],
        [drill_job],
        [build_restore_drill_schedule(site, drill_job)],
    )
