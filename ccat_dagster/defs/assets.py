"""Asset definitions generated from the topology: one per (site, location, kind).

The chain across sites: SOURCE raw_data_files -> source-buffer raw_data_package -> source-buffer
data_transfer_package -> LTA-site buffer data_transfer_package -> LTA-site buffer
raw_data_package (unpacked) -> LTA raw_data_package (with the blocking ``lta_presence`` check).
Dependencies on other sites' assets are declared by key, so each code location holds only its
own site's assets while the UI shows the whole chain.

Materializing one partition (UI, backfill) runs the same stage function for that one package
as the batched jobs do for many.
"""

from collections.abc import Callable

from dagster import (
    AllPartitionMapping,
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetDep,
    AssetExecutionContext,
    AssetsDefinition,
    AssetSpec,
    Failure,
    MaterializeResult,
    asset,
    asset_check,
)
from sqlalchemy import select
from sqlalchemy.orm import Session

from ccat_dagster.defs.keys import (
    DATA_TRANSFER_PACKAGE,
    LTA_PRESENCE,
    RAW_DATA_FILES,
    RAW_DATA_PACKAGE,
    asset_key,
)
from ccat_dagster.defs.partitions import partitions_of
from ccat_dagster.defs.resources import OpsDbResource, SiteStorageResource
from ccat_dagster.defs.stages import (
    ARCHIVE_COPY,
    BUNDLE,
    PACKAGE,
    TRANSFER,
    UNPACK,
    ArchiveItem,
    ItemT,
    Stage,
    StageReport,
    location_named,
    lta_presence_outcome,
    metadata_value,
    package_copy_location,
)
from ccat_dagster.defs.topology import LocationView, SiteView, TopologySnapshot
from ccat_dagster.lifecycle.archive.stage import confirm_lta_presence
from ccat_dagster.lifecycle.capacity.availability import record_location_error
from ccat_dagster.storage.errors import LocationUnavailableError
from ccat_ops_db.models import (
    DataLocation,
    DataTransfer,
    DataTransferPackage,
    LocationType,
    RawDataPackage,
)

# (session, site short name, location name, partition key) -> the stage's item
ItemFinder = Callable[[Session, str, str, str], ItemT]


def package_named(session: Session, name: str) -> RawDataPackage:
    package = session.scalar(select(RawDataPackage).where(RawDataPackage.name == name))
    if package is None:
        raise Failure(f"raw data package {name!r} is not in the ops DB")
    return package


def _bundle(session: Session, name: str) -> DataTransferPackage:
    dtp = session.scalar(select(DataTransferPackage).where(DataTransferPackage.name == name))
    if dtp is None:
        raise Failure(f"data transfer package {name!r} is not in the ops DB")
    return dtp


def _transfer_to(session: Session, dtp_id: int, location: DataLocation) -> DataTransfer:
    transfer = session.scalar(
        select(DataTransfer).where(
            DataTransfer.data_transfer_package_id == dtp_id,
            DataTransfer.destination_location_id == location.id,
        )
    )
    if transfer is None:
        raise Failure(
            f"no transfer of this bundle is routed to {location.qualified_name}; the routing "
            "sensor decides where bundles go"
        )
    return transfer


def _find_package_item(session: Session, site: str, location: str, key: str) -> str:
    return str(package_named(session, key).id)


def _find_bundle_item(session: Session, site: str, location: str, key: str) -> str:
    return str(_bundle(session, key).id)


def _find_transfer_item(session: Session, site: str, location: str, key: str) -> str:
    return str(
        _transfer_to(session, _bundle(session, key).id, location_named(session, site, location)).id
    )


def _find_unpack_item(session: Session, site: str, location: str, key: str) -> str:
    package = package_named(session, key)
    if package.data_transfer_package_id is None:
        raise Failure(f"package {key} is in no data transfer package yet")
    return str(
        _transfer_to(
            session, package.data_transfer_package_id, location_named(session, site, location)
        ).id
    )


def _find_archive_item(session: Session, site: str, location: str, key: str) -> ArchiveItem:
    package = package_named(session, key)
    lta = location_named(session, site, location)
    buffer = package_copy_location(session, package, lta.site)
    if buffer is None:
        raise Failure(f"package {key} has no copy in a buffer of site {site} to archive from")
    return ArchiveItem(package=package.id, source=buffer.id, lta=lta.id)


def materialize_one(
    context: AssetExecutionContext,
    stage: Stage[ItemT],
    finder: ItemFinder[ItemT],
    site: str,
    location: str,
    ops_db: OpsDbResource,
    storage: SiteStorageResource,
) -> MaterializeResult:
    with ops_db.session() as session, storage.registry() as storages:
        item = finder(session, site, location, context.partition_key)
        try:
            report: StageReport = stage.execute(session, item, storages.get, context.run_id)
        except LocationUnavailableError as exc:
            # Recorded like in the batched runs (the sensors then wait for a probe); nothing
            # was counted against the package.
            session.rollback()
            record_location_error(session, exc, observer=storage.site, run_id=context.run_id)
            raise Failure(
                f"{context.partition_key} waits, nothing counted: {exc}", allow_retries=False
            ) from exc
    outcome = report.outcome
    if not outcome.ok:
        raise Failure(f"{outcome.partition}: {outcome.error}", allow_retries=False)
    metadata = dict(outcome.metadata)
    if outcome.skipped:
        metadata["note"] = "already done; nothing changed"
    return MaterializeResult(metadata={k: metadata_value(v, k) for k, v in metadata.items()})


def partitioned_asset(
    *,
    site: SiteView,
    location: str,
    kind: str,
    description: str,
    deps: list[AssetDep],
    stage: Stage[ItemT],
    finder: ItemFinder[ItemT],
) -> AssetsDefinition:
    """One site-location-kind asset of ``stage``, in the pool of the stage's batched op."""
    s = site.short_name

    @asset(
        key=asset_key(s, location, kind),
        partitions_def=partitions_of(asset_key(s, location, kind)),
        deps=deps,
        group_name=s,
        description=description,
        pool=stage.pool(site),
        kinds={"ccat"},
        tags={"ccat/site": s, "ccat/location": location},
    )
    def _asset(
        context: AssetExecutionContext, ops_db: OpsDbResource, storage: SiteStorageResource
    ) -> MaterializeResult:
        return materialize_one(context, stage, finder, s, location, ops_db, storage)

    return _asset


def _lta_presence_check(site: str, lta: str):
    @asset_check(
        asset=asset_key(site, lta, RAW_DATA_PACKAGE),
        name=LTA_PRESENCE,
        blocking=True,
        partitions_def=partitions_of(asset_key(site, lta, RAW_DATA_PACKAGE)),
        description=(
            "The archived object exists with the recorded size and checksum (checked live). "
            "Only then is the package ARCHIVED; a failure blocks everything downstream."
        ),
    )
    def _check(
        context: AssetCheckExecutionContext, ops_db: OpsDbResource, storage: SiteStorageResource
    ) -> AssetCheckResult:
        with ops_db.session() as session, storage.registry() as storages:
            package = package_named(session, context.partition_key)
            evidence = confirm_lta_presence(
                session,
                package,
                location_named(session, site, lta),
                storage_for=storages.get,
                run_id=context.run.run_id,  # an asset check context has no run_id
            )
        return AssetCheckResult(**lta_presence_outcome(evidence))

    return _check


def _all(key) -> AssetDep:
    """A dependency on another location's asset without a partition-to-partition mapping: each
    asset's partitions are the copies its location holds now (``defs/partitions.py``), so the
    parent partition of a copy is usually gone (cleaned) when the copy is re-checked or
    backfilled, and Dagster's backfill refuses a partition whose mapped parent does not exist.
    Where the bytes came from is in the ops DB."""
    return AssetDep(key, partition_mapping=AllPartitionMapping())


def build_site_assets(snapshot: TopologySnapshot, site: SiteView) -> tuple[list, list]:
    """(assets, asset checks) of one site's code location."""
    s = site.short_name
    assets: list = []
    checks: list = []
    buffers: list[LocationView] = site.of_type(LocationType.BUFFER)
    if site.is_source:
        sources = site.of_type(LocationType.SOURCE)
        for src in sources:
            assets.append(
                AssetSpec(
                    key=asset_key(s, src.name, RAW_DATA_FILES),
                    group_name=s,
                    description=f"Raw instrument files filed at SOURCE {src.qualified_name}.",
                    kinds={"ccat"},
                )
            )
        for buf in buffers:
            assets.append(
                partitioned_asset(
                    site=site,
                    location=buf.name,
                    kind=RAW_DATA_PACKAGE,
                    description=f"RawDataPackage tars in source-site buffer {buf.qualified_name}.",
                    deps=[_all(asset_key(s, src.name, RAW_DATA_FILES)) for src in sources],
                    stage=PACKAGE,
                    finder=_find_package_item,
                )
            )
            assets.append(
                partitioned_asset(
                    site=site,
                    location=buf.name,
                    kind=DATA_TRANSFER_PACKAGE,
                    description=f"DataTransferPackages bundled in {buf.qualified_name}.",
                    deps=[_all(asset_key(s, buf.name, RAW_DATA_PACKAGE))],
                    stage=BUNDLE,
                    finder=_find_bundle_item,
                )
            )
    if site.is_lta:
        upstream = [
            asset_key(src.short_name, b.name, DATA_TRANSFER_PACKAGE)
            for src in snapshot.source_sites
            if src.short_name != s
            for b in src.of_type(LocationType.BUFFER)
        ]
        for buf in buffers:
            assets.append(
                partitioned_asset(
                    site=site,
                    location=buf.name,
                    kind=DATA_TRANSFER_PACKAGE,
                    description=(
                        f"DataTransferPackages pulled into LTA-site buffer {buf.qualified_name} "
                        "(primary routes from source sites; secondary routes from other LTA sites)."
                    ),
                    deps=[_all(k) for k in upstream],
                    stage=TRANSFER,
                    finder=_find_transfer_item,
                )
            )
            assets.append(
                partitioned_asset(
                    site=site,
                    location=buf.name,
                    kind=RAW_DATA_PACKAGE,
                    description=f"RawDataPackages unpacked and verified in {buf.qualified_name}.",
                    deps=[_all(asset_key(s, buf.name, DATA_TRANSFER_PACKAGE))],
                    stage=UNPACK,
                    finder=_find_unpack_item,
                )
            )
        for lta in site.of_type(LocationType.LONG_TERM_ARCHIVE):
            assets.append(
                partitioned_asset(
                    site=site,
                    location=lta.name,
                    kind=RAW_DATA_PACKAGE,
                    description=(
                        f"RawDataPackages in the long-term archive {lta.qualified_name} "
                        f"({lta.storage}); verified by the blocking lta_presence check."
                    ),
                    deps=[_all(asset_key(s, b.name, RAW_DATA_PACKAGE)) for b in buffers],
                    stage=ARCHIVE_COPY,
                    finder=_find_archive_item,
                )
            )
            checks.append(_lta_presence_check(s, lta.name))
    return assets, checks
