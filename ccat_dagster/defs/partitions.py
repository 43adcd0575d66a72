"""One dynamic partition set per partitioned asset: the packages (or bundles) that location
holds now.

A partition is added when its copy is materialized there and removed when the copy no longer
holds its data (deleted by the rules, found BAD or LOST), so the UI's partitions of
``<site>/<location>/<kind>`` are the catalogue's copies at that location. Dagster's open-source
event log cannot wipe a partition's materializations, but its partition status only counts
keys the set still has; a key comes back with the copy's next materialization.

An archive's set would grow with the archive (one key per package it holds, ~100k after a year
or two, where the UI's view of that asset gets slow), so past the policy's
``partition_horizon_days`` the packages whose lifecycle finished long ago leave it
(:func:`prune_partitions`): the ops DB, ``ccat status`` and the audit log still describe them.
"""

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from dagster import (
    AssetKey,
    AssetObservation,
    DagsterInstance,
    DynamicPartitionsDefinition,
    MetadataValue,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from ccat_dagster.defs.keys import (
    DATA_TRANSFER_PACKAGE,
    RAW_DATA_PACKAGE,
    STAGED_RAW_DATA_PACKAGE,
    asset_key,
)
from ccat_dagster.lifecycle.common.chunks import chunks
from ccat_dagster.lifecycle.integrity.holdings import HOLDING_STATUSES, EndedCopy, ended_copies
from ccat_ops_db.models import (
    CopyType,
    DataLocation,
    LocationType,
    PhysicalCopy,
    RawDataPackage,
    utcnow,
)


def partition_set_name(key: AssetKey) -> str:
    """``ccat__buffer__raw_data_package`` for ``ccat/buffer/raw_data_package``."""
    return "__".join(key.path)


def partitions_of(key: AssetKey) -> DynamicPartitionsDefinition:
    return DynamicPartitionsDefinition(name=partition_set_name(key))


def add_partition(instance: DagsterInstance, key: AssetKey, partition: str) -> None:
    """Add ``partition`` to ``key``'s set, once: a twin run adding the same key at the same moment
    meets the set's unique index on SQLite (PostgreSQL's insert skips conflicts)."""
    try:
        instance.add_dynamic_partitions(partition_set_name(key), [partition])
    except IntegrityError:
        if not instance.has_dynamic_partition(partition_set_name(key), partition):
            raise


#: the partitioned assets of a location by its type, and the copies their partitions stand for
_KINDS_AT = {
    LocationType.BUFFER: (
        (RAW_DATA_PACKAGE, CopyType.RAW_DATA_PACKAGE),
        (DATA_TRANSFER_PACKAGE, CopyType.DATA_TRANSFER_PACKAGE),
    ),
    LocationType.LONG_TERM_ARCHIVE: ((RAW_DATA_PACKAGE, CopyType.RAW_DATA_PACKAGE),),
    LocationType.PROCESSING: ((STAGED_RAW_DATA_PACKAGE, CopyType.RAW_DATA_PACKAGE),),
}


def _ended_metadata(ended: EndedCopy) -> dict[str, MetadataValue]:
    metadata: dict[str, MetadataValue] = {
        "status": MetadataValue.text(ended.status.value),
        "reason": MetadataValue.text(ended.reason or "not recorded"),
    }
    if ended.ended_at is not None:
        metadata["ended_at"] = MetadataValue.timestamp(ended.ended_at.replace(tzinfo=UTC))
    if ended.evidence:
        metadata["evidence"] = MetadataValue.json(ended.evidence)
    if ended.run_id:
        metadata["run"] = MetadataValue.dagster_run(ended.run_id)
    return metadata


def release_ended_partitions(
    instance: DagsterInstance, session: Session, location: DataLocation
) -> list[AssetObservation]:
    """Remove from the location's partition sets every package (bundle) whose copy there no
    longer holds its data, and return one observation per removed partition saying what ended
    it (status, rule or check, time, evidence, run): to be logged *before* the keys go, so a
    crash in between repeats an observation, never loses one."""
    observations: list[AssetObservation] = []
    for kind, copy_type in _KINDS_AT.get(location.location_type, ()):
        key = asset_key(location.site.short_name, location.name, kind)
        keys = instance.get_dynamic_partitions(partition_set_name(key))
        for ended in ended_copies(session, location.id, copy_type, keys):
            observations.append(
                AssetObservation(
                    asset_key=key,
                    partition=ended.name,
                    description=f"no longer at {location.qualified_name}",
                    metadata=_ended_metadata(ended),
                )
            )
    return observations


def drop_partitions(instance: DagsterInstance, observations: list[AssetObservation]) -> None:
    for obs in observations:
        if obs.partition is not None:
            instance.delete_dynamic_partition(partition_set_name(obs.asset_key), obs.partition)


#: partitions pruned per archive and cleanup run at most (the steady state is a day's packages)
PRUNE_PER_RUN = 5_000


def finished_before(
    session: Session, location_id: int, names: list[str], cutoff: datetime
) -> list[tuple[str, datetime]]:
    """Those of ``names`` (packages) whose lifecycle finished before ``cutoff``, with the time
    their copy at the archive ``location_id`` was created: that copy holds the data and was made
    before ``cutoff``, and no copy of the package outside the long-term archives holds its data
    or ended (was last changed) at or after ``cutoff``. One statement per chunk of names."""
    other = aliased(PhysicalCopy)
    other_location = aliased(DataLocation)
    unfinished = (
        sa.select(other.id)
        .join(other_location, other_location.id == other.data_location_id)
        .where(
            other.raw_data_package_id == RawDataPackage.id,
            other_location.location_type != LocationType.LONG_TERM_ARCHIVE,
            sa.or_(other.status.in_(HOLDING_STATUSES), other.updated_at >= cutoff),
        )
        .exists()
    )
    found: list[tuple[str, datetime]] = []
    for chunk in chunks(names):
        found.extend(
            session.execute(
                sa.select(RawDataPackage.name, PhysicalCopy.created_at)
                .join(PhysicalCopy, PhysicalCopy.raw_data_package_id == RawDataPackage.id)
                .where(
                    RawDataPackage.name.in_(chunk),
                    PhysicalCopy.data_location_id == location_id,
                    PhysicalCopy.status.in_(HOLDING_STATUSES),
                    PhysicalCopy.created_at < cutoff,
                    ~unfinished,
                )
            ).tuples()
        )
    return found


def prune_partitions(
    instance: DagsterInstance,
    session: Session,
    location: DataLocation,
    *,
    horizon_days: int,
    now: datetime | None = None,
    limit: int | None = PRUNE_PER_RUN,
) -> list[AssetObservation]:
    """The partitions of a long-term archive's set whose package finished its lifecycle more
    than ``horizon_days`` ago (:func:`finished_before`), one observation each saying so, to be
    logged before :func:`drop_partitions` removes the keys (as for ended copies). Nothing at
    other locations (their sets hold only what is in flight) and nothing when ``horizon_days``
    is 0. A package still held outside the archives, or whose copy there ended within the
    horizon, keeps its key; so does one whose archive copy is newer than the horizon. At most
    ``limit`` keys, the longest archived first: each is one observation and one
    ``delete_dynamic_partition`` (Dagster has no bulk delete), so a set that first meets the
    horizon is pruned over a few cleanups rather than in one long run."""
    if horizon_days <= 0 or location.location_type != LocationType.LONG_TERM_ARCHIVE:
        return []
    cutoff = (now or utcnow()) - timedelta(days=horizon_days)
    observations: list[AssetObservation] = []
    for kind, copy_type in _KINDS_AT[LocationType.LONG_TERM_ARCHIVE]:
        assert copy_type == CopyType.RAW_DATA_PACKAGE
        key = asset_key(location.site.short_name, location.name, kind)
        keys = instance.get_dynamic_partitions(partition_set_name(key))
        finished = sorted(
            finished_before(session, location.id, list(keys), cutoff), key=lambda f: f[1]
        )
        for name, archived_at in finished[:limit]:
            observations.append(
                AssetObservation(
                    asset_key=key,
                    partition=name,
                    description=(
                        f"partition pruned: lifecycle finished more than {horizon_days} days "
                        f"ago; the copy is still at {location.qualified_name}"
                    ),
                    metadata={
                        "status": MetadataValue.text("PRESENT"),
                        "reason": MetadataValue.text(f"partition_horizon_days={horizon_days}"),
                        "archived_at": MetadataValue.timestamp(archived_at.replace(tzinfo=UTC)),
                    },
                )
            )
    return observations
