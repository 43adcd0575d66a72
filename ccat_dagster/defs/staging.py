"""Staging on Dagster, at a site with PROCESSING locations: the staging stage (batched job and
sensor built like every other stage), the ``<site>/<processing>/staged_raw_data_package`` asset
per PROCESSING location (partitions: raw_data_packages, fed by every LTA's raw_data_package),
and ``<site>_create_staging_job``, which creates a StagingJob through the same lifecycle function
as ``ccat staging create`` (``dagster job launch -j <site>_create_staging_job --config-json
...``). The sensor then picks the new job up; cleanup stays with the site's cleanup job.
"""

from dagster import (
    AllPartitionMapping,
    AssetDep,
    AssetsDefinition,
    Config,
    Failure,
    JobDefinition,
    OpExecutionContext,
    Out,
    SensorDefinition,
    job,
    op,
)
from sqlalchemy.orm import Session

from ccat_dagster.defs.assets import package_named, partitioned_asset
from ccat_dagster.defs.jobs import build_stage_job
from ccat_dagster.defs.keys import RAW_DATA_PACKAGE, STAGED_RAW_DATA_PACKAGE, asset_key
from ccat_dagster.defs.resources import OpsDbResource
from ccat_dagster.defs.sensors import build_stage_sensor
from ccat_dagster.defs.stages import (
    Stage,
    StageReport,
    location_named,
    materialization,
    stage_report,
)
from ccat_dagster.defs.topology import LocationView, SiteView, TopologySnapshot
from ccat_dagster.lifecycle.capacity.availability import Needs
from ccat_dagster.lifecycle.common import names
from ccat_dagster.lifecycle.common.operations import OperationType
from ccat_dagster.lifecycle.staging import execution as staging
from ccat_dagster.lifecycle.staging import requests as jobs
from ccat_ops_db.models import (
    DataLocation,
    LocationType,
    RawDataPackage,
    Site,
    qualified_location_name,
)


class StagingItem(Config):
    """A package to stage to a PROCESSING location, by ops-DB ids."""

    package: int
    location: int

    def __str__(self) -> str:
        return f"package {self.package} (to location {self.location})"


class StagingConfig(Config):
    """The packages this staging run stages, chosen by the staging sensor."""

    items: list[StagingItem]


def _ready(session: Session, site: Site) -> list[StagingItem]:
    return [
        StagingItem(package=pid, location=lid)
        for pid, lid in staging.staging_candidates(session, site)
    ]


def _execute(session: Session, item: StagingItem, storage_for, run_id) -> StageReport:
    package = session.get_one(RawDataPackage, item.package)
    location = session.get_one(DataLocation, item.location)
    outcome = staging.stage_raw_data_package(
        session, package, location, storage_for=storage_for, run_id=run_id
    )
    return stage_report(
        outcome,
        materialization(location.site.short_name, location.name, STAGED_RAW_DATA_PACKAGE, outcome),
    )


def _needs(session: Session, _site: Site, items: list[StagingItem]) -> dict[StagingItem, Needs]:
    """The PROCESSING location it writes, and the verified archive copies it may read from
    (any one of them is enough)."""
    out: dict[StagingItem, Needs] = {}
    for item in items:
        package = session.get_one(RawDataPackage, item.package)
        location = session.get_one(DataLocation, item.location)
        sources = tuple(lta.id for lta in staging.lta_sources(session, package, location))
        out[item] = Needs(writes=(item.location,), any_of_reads=sources)
    return out


STAGE = Stage(
    name="staging",
    operation=OperationType.STAGING,
    description=(
        "Stage the packages of open StagingJobs to their PROCESSING location: streamed from the "
        "nearest verified LTA copy, unpacked and verified, then STAGED; shared files are reused "
        "and missing ones restored."
    ),
    plan=lambda _session, _site: None,
    ready=_ready,
    execute=_execute,
    config=StagingConfig,
    batch_size=50,
    needs=_needs,
)


# --------------------------------------------------------------------------- asset


def _find_staging_item(session: Session, site: str, location: str, key: str) -> StagingItem:
    package = package_named(session, key)
    loc = location_named(session, site, location)
    if not staging.has_active_job(session, package, loc):
        # Files staged without a live job would be the next cleanup's first deletion.
        where = loc.qualified_name
        raise Failure(
            f"no active staging job to {where} includes {key}; create one with "
            f"`ccat staging create --location {where} --package {key}`"
        )
    return StagingItem(package=package.id, location=loc.id)


def build_staged_asset(
    snapshot: TopologySnapshot, site: SiteView, processing: LocationView
) -> AssetsDefinition:
    lta_keys = [
        asset_key(lta_site.short_name, lta.name, RAW_DATA_PACKAGE)
        for lta_site in snapshot.lta_sites
        for lta in lta_site.of_type(LocationType.LONG_TERM_ARCHIVE)
    ]

    return partitioned_asset(
        site=site,
        location=processing.name,
        kind=STAGED_RAW_DATA_PACKAGE,
        description=(
            f"RawDataPackages staged (unpacked, files PRESENT, package copy STAGED) at the "
            f"PROCESSING location {processing.qualified_name} for active StagingJobs."
        ),
        deps=[AssetDep(k, partition_mapping=AllPartitionMapping()) for k in lta_keys],
        stage=STAGE,
        finder=_find_staging_item,
    )


# --------------------------------------------------------------------------- create job


class CreateStagingJobConfig(Config):
    """A staging request: ``location`` (a PROCESSING location of this site, ``name`` or
    ``site/name``) and ``packages`` and/or ``obs_units`` (names, or obs-unit ids)."""

    location: str
    packages: list[str] = []
    obs_units: list[str] = []
    retention_days: float | None = None
    requested_by: str | None = None


def build_create_staging_job(site: SiteView) -> JobDefinition:
    s = site.short_name

    @op(
        name=names.create_staging_op(s),
        out=Out(int),
        description="Validate a staging request and create the StagingJob (as the CLI does).",
        tags={"ccat/site": s},
    )
    def create_op(
        context: OpExecutionContext, config: CreateStagingJobConfig, ops_db: OpsDbResource
    ) -> int:
        name = (
            config.location
            if "/" in config.location
            else qualified_location_name(s, config.location)
        )
        with ops_db.session() as session:
            try:
                location = jobs.resolve_processing_location(session, name)
                if location.site.short_name != s:
                    raise jobs.StagingError(
                        f"{name} belongs to site {location.site.short_name}; launch "
                        f"{names.create_staging_job(location.site.short_name)} there instead"
                    )
                created = jobs.create_staging_job(
                    session,
                    location=location,
                    packages=config.packages,
                    obs_units=config.obs_units,
                    retention_days=config.retention_days,
                    requested_by=config.requested_by,
                    run_id=context.run_id,
                )
            except jobs.StagingError as exc:
                raise Failure(description=str(exc), allow_retries=False) from None
            context.log.info(
                f"staging job {created.id}: {len(created.raw_data_packages)} package(s) to "
                f"{location.qualified_name}; the {names.stage_sensor(s, STAGE.name)} stages them"
            )
            return created.id

    job_name = names.create_staging_job(s)

    @job(
        name=job_name,
        description=(
            f"Create a StagingJob at {s}: `dagster job launch -j {job_name} "
            f'-w workspace.yaml -l {s} --config-json \'{{"ops": {{"{names.create_staging_op(s)}"'
            ': {"config": {"location": "...", "packages": ["..."]}}}}\''
        ),
        tags={"ccat/site": s, "ccat/stage": "staging"},
    )
    def create_job() -> None:
        create_op()

    return create_job


def build_site_staging(
    snapshot: TopologySnapshot, site: SiteView, *, sensor_interval_seconds: int
) -> tuple[list[AssetsDefinition], list[JobDefinition], list[SensorDefinition]]:
    """(assets, jobs, sensors) of staging at ``site``; empty without a PROCESSING location."""
    if not STAGE.applies(site):
        return [], [], []
    stage_job = build_stage_job(site, STAGE)
    assets = [
        build_staged_asset(snapshot, site, loc) for loc in site.of_type(LocationType.PROCESSING)
    ]
    return (
        assets,
        [stage_job, build_create_staging_job(site)],
        [build_stage_sensor(site, STAGE, stage_job, interval_seconds=sensor_interval_seconds)],
    )
