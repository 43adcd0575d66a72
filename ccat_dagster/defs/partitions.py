"""One dynamic partition set per partitioned asset: the packages (or bundles) that location
holds now.

A partition is added when its copy is materialized there and removed when the copy no longer
holds its data (deleted by the rules, found BAD or LOST), so the UI's partitions of
``<site>/<location>/<kind>`` are the catalogue's copies at that location. Dagster's open-source
event log cannot wipe a partition's materializations, but its partition status only counts
keys the set still has; a key comes back with the copy's next materialization.
"""

from datetime import UTC

from dagster import (
    AssetKey,
    AssetObservation,
    DagsterInstance,
    DynamicPartitionsDefinition,
    MetadataValue,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ccat_dagster.defs.keys import (
    DATA_TRANSFER_PACKAGE,
    RAW_DATA_PACKAGE,
    STAGED_RAW_DATA_PACKAGE,
    asset_key,
)
from ccat_dagster.lifecycle.integrity.holdings import EndedCopy, ended_copies
from ccat_ops_db.models import CopyType, DataLocation, LocationType


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
