"""The pipeline stages as data: what each one plans, finds ready and executes at one site.

Each stage wraps lifecycle functions (which decide and record) and turns their outcomes into the
Dagster events of the package partitions they touched: an AssetMaterialization per package and
location, and for the archive stage the ``lta_presence`` check evaluation. The batched jobs
(one run, many packages), the sensors and the single-partition asset materializations all go
through these same functions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetMaterialization,
    AssetObservation,
    Config,
    DagsterInstance,
    Failure,
    MetadataValue,
    OpExecutionContext,
)
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ccat_dagster.defs.keys import (
    DATA_TRANSFER_PACKAGE,
    LTA_PRESENCE,
    RAW_DATA_PACKAGE,
    asset_key,
)
from ccat_dagster.defs.partitions import add_partition
from ccat_dagster.defs.topology import LocationView, SiteView
from ccat_dagster.lifecycle.archive import repair, reverification
from ccat_dagster.lifecycle.archive import stage as archive
from ccat_dagster.lifecycle.capacity.admission import (
    bundle_key,
    package_key,
    transfer_key,
    unpack_key,
)
from ccat_dagster.lifecycle.capacity.availability import Needs
from ccat_dagster.lifecycle.capacity.buffer_policy import BufferAction, decide_buffer_actions
from ccat_dagster.lifecycle.common import names
from ccat_dagster.lifecycle.common.locations import get_primary_buffer_for_site
from ccat_dagster.lifecycle.common.operations import OperationType
from ccat_dagster.lifecycle.common.outcomes import StageOutcome
from ccat_dagster.lifecycle.common.policy import get_policy
from ccat_dagster.lifecycle.ingest.raw_data_packages import (
    build_raw_data_package,
    create_raw_data_packages_for_location,
    pending_raw_data_packages,
)
from ccat_dagster.lifecycle.transfer import routing, transfers
from ccat_dagster.lifecycle.transfer.data_transfer_packages import (
    build_data_transfer_package,
    create_data_transfer_packages,
    pending_data_transfer_packages,
)
from ccat_dagster.storage.base import Storage
from ccat_ops_db.models import (
    DataLocation,
    DataTransfer,
    DataTransferPackage,
    LocationType,
    RawDataPackage,
    RawDataPackagePhysicalCopy,
    Site,
    qualified_location_name,
)

StorageFor = Callable[[DataLocation], Storage]
DagsterEvent = AssetMaterialization | AssetCheckEvaluation


def log_event(
    context: OpExecutionContext,
    event: AssetMaterialization | AssetObservation | AssetCheckEvaluation,
) -> None:
    """``context.log_event``: Dagster logs check evaluations through it too, but annotates it
    with materializations, observations and expectation results only.

    A materialized partition is first added to its asset's partition set (the packages the
    location holds: ``defs/partitions.py``); adding a key the set has is a no-op."""
    if isinstance(event, AssetMaterialization) and event.partition is not None:
        add_partition(context.instance, event.asset_key, event.partition)
        event = event.with_metadata(
            {**event.metadata, "run": MetadataValue.dagster_run(context.run_id)}
        )
    context.log_event(event)  # pyright: ignore[reportArgumentType]


class StageConfig(Config):
    """The items this run works on, chosen by the stage's sensor: ops-DB ids (of packages,
    bundles or transfers, by stage)."""

    items: list[str]


class ArchiveItem(Config):
    """A package to copy into a long-term archive, by ops-DB ids: the location it is read from
    is a buffer of the site, or for a repair or a backfill any location holding a good copy."""

    package: int
    source: int
    lta: int

    def __str__(self) -> str:
        return f"package {self.package} (location {self.source} -> {self.lta})"


class ArchiveConfig(Config):
    """The packages this archive run copies, chosen by the stage's sensor."""

    items: list[ArchiveItem]


#: one item of a stage: an ops-DB id (``StageConfig``) or a typed item (``ArchiveItem``, ...);
#: hashable (frozen, for the Config ones)
ItemT = TypeVar("ItemT")
#: (session, site, items) -> item -> what it needs / (location it writes into, admission key)
NeedsOf = Callable[[Session, Site, list[ItemT]], dict[ItemT, Needs]]
TargetsOf = Callable[[Session, Site, list[ItemT]], dict[ItemT, tuple[DataLocation, str]]]


def _needs_nothing(_session: Session, _site: Site, _items: list[Any]) -> dict[Any, Needs]:
    return {}


@dataclass
class StageReport:
    outcome: StageOutcome
    events: list[DagsterEvent] = field(default_factory=list)


@dataclass(frozen=True)
class Stage(Generic[ItemT]):
    """One step of the chain, as run at one site, over items of type ``ItemT``."""

    name: str
    operation: OperationType
    description: str
    #: the "manager" part: create the records of new work (packages, bundles, routes)
    plan: Callable[[Session, Site], None]
    #: items ready to execute at this site
    ready: Callable[[Session, Site], list[ItemT]]
    execute: Callable[[Session, ItemT, StorageFor, str | None], StageReport]
    #: the run config of the stage's op; its ``items`` are the items of this stage
    config: type[Config] = StageConfig
    batch_size: int = 200
    #: how many runs of this stage may be in flight at once at a site
    max_runs: Callable[[Session, Site], int] = lambda _s, _site: 1
    #: the sensor keeps the op pool's limit equal to ``max_runs`` (transfers)
    pool_follows_max_runs: bool = False
    #: the locations each item reads and writes: it waits while one is unavailable from here
    needs: NeedsOf[ItemT] = _needs_nothing
    #: where each item writes into a buffer, for admission (None: no admission check)
    admission_targets: TargetsOf[ItemT] | None = None

    def run_config(self, op_name: str, items: Sequence[ItemT]) -> dict:
        """The run config of a run of the stage's op over ``items``."""
        typed = self.config(items=list(items))
        return {"ops": {op_name: {"config": typed.model_dump()}}}

    def items_of(self, op_config: Mapping) -> list[ItemT]:
        """The items of a run's op config (``[]`` when it is not this stage's: a run launched
        by hand with a wrong config, or by an older version)."""
        try:
            return list(self.config(**op_config).items)
        except (ValidationError, TypeError):
            return []

    def location(self, site: SiteView) -> LocationView | None:
        """Where this stage runs at ``site`` (the location whose pool throttles it), None when
        it does not run there (``lifecycle.common.names.STAGE_PLACEMENT``)."""
        return names.stage_location(site.locations, self.operation)

    def applies(self, site: SiteView) -> bool:
        return self.location(site) is not None

    def pool(self, site: SiteView) -> str:
        """``{site}_{location}_{operation}``: the pool of the batched op and of the assets."""
        location = self.location(site)
        if location is None:
            raise ValueError(f"stage {self.name} does not run at site {site.short_name}")
        return names.pool_name(location, self.operation)


def materialization(
    site: str, location: str, kind: str, outcome: StageOutcome, **extra
) -> AssetMaterialization:
    metadata = {**outcome.metadata, **extra}
    return AssetMaterialization(
        asset_key=asset_key(site, location, kind),
        partition=outcome.partition,
        metadata={k: metadata_value(v, k) for k, v in metadata.items()},
    )


#: metadata keys whose values are locations of the copy (shown as paths in the UI)
_PATH_KEYS = frozenset({"source", "destination"})


def metadata_value(value, key: str = ""):
    if key in _PATH_KEYS:
        return MetadataValue.path(str(value))
    if isinstance(value, bool):
        return MetadataValue.bool(value)
    if isinstance(value, float):
        return MetadataValue.float(value)
    if isinstance(value, int):
        return MetadataValue.int(value)
    return MetadataValue.text(str(value))


def stage_report(outcome: StageOutcome, *events: DagsterEvent) -> StageReport:
    return StageReport(outcome, list(events) if outcome.ok and not outcome.skipped else [])


# --------------------------------------------------------------------- 1. raw data packages


def _plan_packages(session: Session, site: Site) -> None:
    sources = [
        loc for loc in site.locations if loc.active and loc.location_type == LocationType.SOURCE
    ]
    for location in sources:
        create_raw_data_packages_for_location(session, location)
        # archive copies found bad with no tar left anywhere: re-made from the raw files
        repair.plan_repackaging(session, location)


def _ready_packages(session: Session, site: Site) -> list[str]:
    return [str(p.id) for p in pending_raw_data_packages(session, site)]


def _execute_package(session: Session, item: str, storage_for, run_id) -> StageReport:
    package = session.get_one(RawDataPackage, int(item))
    outcome = build_raw_data_package(session, package, storage_for=storage_for, run_id=run_id)
    buffer = get_primary_buffer_for_site(session, package.source_location.site)
    site = package.source_location.site.short_name
    if buffer is None:  # deactivated since (building the package itself fails without one)
        raise RuntimeError(f"site {site!r} has no active BUFFER to record {package.name} in")
    return stage_report(outcome, materialization(site, buffer.name, RAW_DATA_PACKAGE, outcome))


def _package_needs(session: Session, site: Site, items: list[str]) -> dict[str, Needs]:
    buffer = get_primary_buffer_for_site(session, site)
    writes = (buffer.id,) if buffer is not None else ()
    return {
        i: Needs(reads=(session.get_one(RawDataPackage, int(i)).source_location_id,), writes=writes)
        for i in items
    }


def _package_targets(
    session: Session, site: Site, items: list[str]
) -> dict[str, tuple[DataLocation, str]]:
    buffer = get_primary_buffer_for_site(session, site)
    return {} if buffer is None else {i: (buffer, package_key(i)) for i in items}


PACKAGE = Stage(
    name="raw_data_package_creation",
    operation=OperationType.RAW_DATA_PACKAGE_CREATION,
    description="Package newly filed raw data files into RawDataPackages in the primary buffer.",
    plan=_plan_packages,
    ready=_ready_packages,
    execute=_execute_package,
    needs=_package_needs,
    admission_targets=_package_targets,
)


# --------------------------------------------------------------------- 2. bundles + routing


def _source_buffers(site: Site) -> list[DataLocation]:
    return [
        loc for loc in site.locations if loc.active and loc.location_type == LocationType.BUFFER
    ]


def _plan_bundles(session: Session, site: Site) -> None:
    for buffer in _source_buffers(site):
        create_data_transfer_packages(session, buffer)
    routing.plan_primary_transfers(session, site)


def _ready_bundles(session: Session, site: Site) -> list[str]:
    return [
        str(d.id) for b in _source_buffers(site) for d in pending_data_transfer_packages(session, b)
    ]


def _execute_bundle(session: Session, item: str, storage_for, run_id) -> StageReport:
    dtp = session.get_one(DataTransferPackage, int(item))
    outcome = build_data_transfer_package(session, dtp, storage_for=storage_for, run_id=run_id)
    if outcome.ok:
        routing.plan_primary_transfers(session, dtp.origin_location.site, run_id=run_id)
    origin = dtp.origin_location
    return stage_report(
        outcome,
        materialization(origin.site.short_name, origin.name, DATA_TRANSFER_PACKAGE, outcome),
    )


def _bundle_needs(session: Session, site: Site, items: list[str]) -> dict[str, Needs]:
    out: dict[str, Needs] = {}
    for i in items:
        origin = session.get_one(DataTransferPackage, int(i)).origin_location_id
        out[i] = Needs(reads=(origin,), writes=(origin,))
    return out


def _bundle_targets(
    session: Session, site: Site, items: list[str]
) -> dict[str, tuple[DataLocation, str]]:
    return {
        i: (session.get_one(DataTransferPackage, int(i)).origin_location, bundle_key(i))
        for i in items
    }


BUNDLE = Stage(
    name="data_transfer_package_creation",
    operation=OperationType.DATA_TRANSFER_PACKAGE_CREATION,
    description="Bundle completed RawDataPackages into DataTransferPackages and route them.",
    plan=_plan_bundles,
    ready=_ready_bundles,
    execute=_execute_bundle,
    needs=_bundle_needs,
    admission_targets=_bundle_targets,
)


# --------------------------------------------------------------------- 3. transfers (pull)


def _plan_transfers(session: Session, site: Site) -> None:
    routing.plan_secondary_transfers(session)
    routing.plan_relay_onward_transfers(session)


def _ready_transfers(session: Session, site: Site) -> list[str]:
    return [str(t.id) for t in transfers.transfers_to_site(session, site)]


def _execute_transfer(session: Session, item: str, storage_for, run_id) -> StageReport:
    transfer = session.get_one(DataTransfer, int(item))
    outcome = transfers.execute_data_transfer(
        session, transfer, storage_for=storage_for, run_id=run_id
    )
    dest = transfer.destination_location
    return stage_report(
        outcome, materialization(dest.site.short_name, dest.name, DATA_TRANSFER_PACKAGE, outcome)
    )


def site_buffer_action(session: Session, site: Site) -> BufferAction | None:
    """The escalation in force at ``site`` (from its latest disk-usage samples)."""
    return decide_buffer_actions(session).get(site.short_name)


def _transfer_limit(session: Session, site: Site) -> int:
    action = site_buffer_action(session, site)
    return action.max_parallel_transfers if action else get_policy(session).max_normal_transfers


def _transfer_needs(session: Session, site: Site, items: list[str]) -> dict[str, Needs]:
    out: dict[str, Needs] = {}
    for i in items:
        t = session.get_one(DataTransfer, int(i))
        out[i] = Needs(reads=(t.origin_location_id,), writes=(t.destination_location_id,))
    return out


def _transfer_targets(
    session: Session, site: Site, items: list[str]
) -> dict[str, tuple[DataLocation, str]]:
    return {
        i: (session.get_one(DataTransfer, int(i)).destination_location, transfer_key(i))
        for i in items
    }


def follow_max_runs(
    instance: DagsterInstance, session: Session, stage: Stage, site: SiteView, site_db: Site
) -> int:
    """Set the limit of ``stage``'s pool at ``site`` to the runs it may have in flight now
    (transfers: policy ``max_normal_transfers``, lowered under buffer pressure), so runs
    launched by hand are throttled too; the one writer of that limit (the stage's sensor and
    the buffer monitor both call it). Returns the limit."""
    limit = stage.max_runs(session, site_db)
    pool = stage.pool(site)
    storage = instance.event_log_storage
    for attempt in range(_POOL_WRITE_ATTEMPTS):
        if storage.get_concurrency_info(pool).slot_count == limit:
            break
        try:
            storage.set_concurrency_slots(pool, limit)
            break
        except IntegrityError:
            # A twin (the other writer's tick, or a second run-until-idle) created the pool's
            # row between Dagster's read and insert: read again, then write if still needed.
            if attempt == _POOL_WRITE_ATTEMPTS - 1:
                raise
    return limit


#: a pool's limit is written again after a twin's concurrent first write (IntegrityError)
_POOL_WRITE_ATTEMPTS = 3


TRANSFER = Stage(
    name="data_transfer",
    operation=OperationType.DATA_TRANSFER,
    description="Pull routed DataTransferPackages into this site's buffer, verified on arrival.",
    plan=_plan_transfers,
    ready=_ready_transfers,
    execute=_execute_transfer,
    batch_size=20,
    max_runs=_transfer_limit,
    pool_follows_max_runs=True,
    needs=_transfer_needs,
    admission_targets=_transfer_targets,
)


# --------------------------------------------------------------------- 4. unpacking


def _ready_unpacks(session: Session, site: Site) -> list[str]:
    return [str(t.id) for t in transfers.unpacks_at_site(session, site)]


def _execute_unpack(session: Session, item: str, storage_for, run_id) -> StageReport:
    transfer = session.get_one(DataTransfer, int(item))
    outcome = transfers.unpack_data_transfer(
        session, transfer, storage_for=storage_for, run_id=run_id
    )
    buffer = transfer.destination_location
    site = buffer.site.short_name
    events = [
        materialization(
            site,
            buffer.name,
            RAW_DATA_PACKAGE,
            StageOutcome(
                p.name,
                ok=True,
                metadata={
                    "package": p.name,
                    "size_bytes": p.size,
                    "file_count": p.file_count,
                    "checksum": f"{p.checksum_algorithm}:{p.checksum}",
                    "source": transfer.origin_location.qualified_name,
                    "destination": buffer.qualified_name,
                    "data_transfer_package": outcome.partition,
                },
            ),
        )
        for p in transfer.data_transfer_package.raw_data_packages
    ]
    return stage_report(outcome, *events)


def _unpack_needs(session: Session, site: Site, items: list[str]) -> dict[str, Needs]:
    out: dict[str, Needs] = {}
    for i in items:
        buffer = session.get_one(DataTransfer, int(i)).destination_location_id
        out[i] = Needs(reads=(buffer,), writes=(buffer,))
    return out


def _unpack_targets(
    session: Session, site: Site, items: list[str]
) -> dict[str, tuple[DataLocation, str]]:
    return {
        i: (session.get_one(DataTransfer, int(i)).destination_location, unpack_key(i))
        for i in items
    }


UNPACK = Stage(
    name="data_transfer_unpacking",
    operation=OperationType.DATA_TRANSFER_UNPACKING,
    description="Unpack arrived DataTransferPackages; verify every package against the ops DB.",
    plan=lambda _session, _site: None,
    ready=_ready_unpacks,
    execute=_execute_unpack,
    batch_size=50,
    needs=_unpack_needs,
    admission_targets=_unpack_targets,
)


# --------------------------------------------------------------------- 5. long-term archive


def _ready_archive(session: Session, site: Site) -> list[ArchiveItem]:
    return [
        ArchiveItem(package=p.id, source=b.id, lta=a.id)
        for p, b, a in archive.archive_candidates(session, site)
    ]


def lta_presence_outcome(evidence: archive.LtaEvidence) -> dict:
    """What every ``lta_presence`` check result and evaluation says about ``evidence``:
    ``passed``, ``severity``, ``description`` and ``metadata`` (the evidence, blanks left out)."""
    return {
        "passed": evidence.ok,
        "severity": AssetCheckSeverity.ERROR,
        "description": evidence.detail or "present with the recorded size and checksum",
        "metadata": {
            k: metadata_value(v, k) for k, v in evidence.as_dict().items() if v not in (None, "")
        },
    }


def lta_presence_evaluation(
    lta: DataLocation, package: RawDataPackage, evidence: archive.LtaEvidence
) -> AssetCheckEvaluation:
    """The ``lta_presence`` evaluation of ``package``'s partition of ``lta``'s asset."""
    return AssetCheckEvaluation(
        asset_key=asset_key(lta.site.short_name, lta.name, RAW_DATA_PACKAGE),
        check_name=LTA_PRESENCE,
        partition=package.name,
        blocking=True,
        **lta_presence_outcome(evidence),
    )


def _archive_item(
    session: Session, item: ArchiveItem
) -> tuple[RawDataPackage, DataLocation, DataLocation]:
    package = session.get_one(RawDataPackage, item.package)
    return (
        package,
        session.get_one(DataLocation, item.source),
        session.get_one(DataLocation, item.lta),
    )


def _execute_archive_copy(session: Session, item: ArchiveItem, storage_for, run_id) -> StageReport:
    """Only the copy; the single-partition asset leaves the check to its blocking asset check."""
    package, source, lta = _archive_item(session, item)
    outcome = archive.send_data_to_long_term_archive(
        session, package, source, lta, storage_for=storage_for, run_id=run_id
    )
    return StageReport(outcome)


def _execute_archive(session: Session, item: ArchiveItem, storage_for, run_id) -> StageReport:
    """Copy, then the lta_presence check, recorded as a check evaluation of the partition."""
    package, source, lta = _archive_item(session, item)
    outcome = archive.send_data_to_long_term_archive(
        session, package, source, lta, storage_for=storage_for, run_id=run_id
    )
    if not outcome.ok:
        return StageReport(outcome)
    evidence = archive.confirm_lta_presence(
        session, package, lta, storage_for=storage_for, run_id=run_id
    )
    events: list[DagsterEvent] = []
    if not outcome.skipped:
        events.append(materialization(lta.site.short_name, lta.name, RAW_DATA_PACKAGE, outcome))
    events.append(lta_presence_evaluation(lta, package, evidence))
    if not evidence.ok:
        outcome = StageOutcome(package.name, ok=False, error=f"lta_presence: {evidence.detail}")
    return StageReport(outcome, events)


def _archive_needs(
    _session: Session, _site: Site, items: list[ArchiveItem]
) -> dict[ArchiveItem, Needs]:
    return {i: Needs(reads=(i.source,), writes=(i.lta,)) for i in items}


ARCHIVE = Stage(
    name="long_term_archive_transfer",
    operation=OperationType.LONG_TERM_ARCHIVE_TRANSFER,
    description="Copy unpacked RawDataPackages into the long-term archive (repairs and backfill "
    "from other archives after them); lta_presence check.",
    plan=lambda _session, _site: None,
    ready=_ready_archive,
    execute=_execute_archive,
    config=ArchiveConfig,
    needs=_archive_needs,
)

ARCHIVE_COPY = replace(ARCHIVE, execute=_execute_archive_copy)


# ------------------------------------------------------------ 6. re-verification (the scrub)


class ReverifyItem(Config):
    """An archive copy to read back, by ops-DB ids."""

    package: int
    lta: int

    def __str__(self) -> str:
        return f"package {self.package} (location {self.lta})"


class ReverifyConfig(Config):
    """The archive copies this re-verification run reads back, chosen by the stage's sensor."""

    items: list[ReverifyItem]


def _ready_reverify(session: Session, site: Site) -> list[ReverifyItem]:
    return [
        ReverifyItem(package=p, lta=lta)
        for p, lta in reverification.next_reverification_batch(session, site)
    ]


def _execute_reverify(session: Session, item: ReverifyItem, storage_for, run_id) -> StageReport:
    """Read one archive copy back; a bad one is marked and re-archived, not a failed run."""
    package = session.get_one(RawDataPackage, item.package)
    lta = session.get_one(DataLocation, item.lta)
    evidence = reverification.reverify_lta_copy(
        session, package, lta, storage_for(lta), run_id=run_id
    )
    marked = not evidence.ok and evidence.definite_failure
    outcome = StageOutcome(
        package.name,
        ok=evidence.ok or marked,
        metadata={"lta": lta.qualified_name, "passed": evidence.ok, "detail": evidence.detail},
        error=None if evidence.ok or marked else f"cannot re-verify: {evidence.detail}",
    )
    return StageReport(outcome, [lta_presence_evaluation(lta, package, evidence)])


def _reverify_needs(
    _session: Session, _site: Site, items: list[ReverifyItem]
) -> dict[ReverifyItem, Needs]:
    return {i: Needs(reads=(i.lta,)) for i in items}


REVERIFY = Stage(
    name="lta_reverification",
    operation=OperationType.MONITORING,
    description="Read archive copies back in full once per lta_reverify_interval_minutes, oldest "
    "first, at most lta_reverify_bytes_per_second per archive; a bad copy is marked BAD/LOST and "
    "re-archived from a good copy.",
    plan=lambda _session, _site: None,
    ready=_ready_reverify,
    execute=_execute_reverify,
    config=ReverifyConfig,
    needs=_reverify_needs,
)

PIPELINE_STAGES: tuple[Stage[Any], ...] = (PACKAGE, BUNDLE, TRANSFER, UNPACK, ARCHIVE, REVERIFY)


def site_row(session: Session, short_name: str) -> Site:
    site = session.scalar(select(Site).where(Site.short_name == short_name))
    if site is None:
        raise LookupError(f"site {short_name!r} is not in the ops DB; apply the topology first")
    return site


def location_named(session: Session, site: str, name: str) -> DataLocation:
    """The location ``name`` of site ``site`` (a Failure when the ops DB has no such one)."""
    for loc in site_row(session, site).locations:
        if loc.name == name:
            return loc
    raise Failure(f"location {qualified_location_name(site, name)} is not in the ops DB")


def package_copy_location(session: Session, package: RawDataPackage, site: Site):
    """The buffer of ``site`` holding a copy of ``package`` (for single-partition runs)."""
    return session.scalar(
        select(DataLocation)
        .join(
            RawDataPackagePhysicalCopy,
            RawDataPackagePhysicalCopy.data_location_id == DataLocation.id,
        )
        .where(
            RawDataPackagePhysicalCopy.raw_data_package_id == package.id,
            DataLocation.site_id == site.id,
            DataLocation.location_type == LocationType.BUFFER,
        )
    )
