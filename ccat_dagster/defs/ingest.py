"""The ingest sensor of each SOURCE location with an ``ingest`` key: new complete raw data files
are filed without anyone typing ``ccat files register``, and what each tick found is recorded
as an observation of the SOURCE's ``raw_data_files`` asset ("is the instrument's data
arriving?"). The detection itself is ``lifecycle.ingest.detection``."""

from __future__ import annotations

from dagster import (
    AssetObservation,
    DefaultSensorStatus,
    MetadataValue,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from ccat_dagster.defs.activity import skip_if_inactive
from ccat_dagster.defs.keys import location_asset_key
from ccat_dagster.defs.resources import OpsDbResource, SiteStorageResource
from ccat_dagster.defs.stages import location_named
from ccat_dagster.defs.topology import LocationView, SiteView
from ccat_dagster.lifecycle.capacity.availability import record_location_error
from ccat_dagster.lifecycle.common import names
from ccat_dagster.lifecycle.ingest.detection import (
    MAX_LISTED,
    IngestCursor,
    IngestError,
    IngestTick,
    ingest_tick,
)
from ccat_dagster.lifecycle.ingest.source_tree import source_tree
from ccat_dagster.storage.errors import LocationUnavailableError, StorageError
from ccat_ops_db.ingest_spec import IngestSpec
from ccat_ops_db.models import DiskDataLocation, LocationType


def _listed(items: list[str]) -> MetadataValue:
    more = len(items) - MAX_LISTED
    lines = [f"- `{item}`" for item in items[:MAX_LISTED]]
    return MetadataValue.md("\n".join(lines + ([f"- ... and {more} more"] if more > 0 else [])))


def tick_metadata(tick: IngestTick, spec: IngestSpec) -> dict[str, MetadataValue]:
    """What one tick found, for the observation of the SOURCE's asset."""
    metadata: dict[str, MetadataValue] = {
        "files_registered": MetadataValue.int(tick.registered),
        "bytes_registered": MetadataValue.int(tick.registered_bytes),
        "files_not_complete_yet": MetadataValue.int(tick.waiting),
        "files_left_for_next_tick": MetadataValue.int(tick.deferred),
        "unmatched_files": MetadataValue.int(len(tick.unmatched)),
        "markers_without_files": MetadataValue.int(len(tick.markers_without_files)),
        "files_rejected": MetadataValue.int(len(tick.rejected)),
        "ingest_pattern": MetadataValue.text(spec.pattern),
    }
    if tick.newest is not None:
        metadata["newest_file"] = MetadataValue.path(tick.newest)
        metadata["newest_file_changed"] = MetadataValue.timestamp(tick.newest_ns / 1e9)
    for key, items in (
        ("unmatched", tick.unmatched),
        ("lonely_markers", tick.markers_without_files),
        ("rejections", tick.rejected),
    ):
        if items:
            metadata[key] = _listed(items)
    return metadata


def build_ingest_sensor(
    site: SiteView, location: LocationView, spec: IngestSpec, *, interval_seconds: int
) -> SensorDefinition:
    s = site.short_name
    key = location_asset_key(s, location.name, LocationType.SOURCE)

    @sensor(
        name=names.ingest_sensor(s, location.name),
        minimum_interval_seconds=interval_seconds,
        default_status=DefaultSensorStatus.STOPPED,
        description=(
            f"Files the new complete raw data files at {location.qualified_name} (pattern "
            f"{spec.pattern!r}, ready: {spec.ready}); the packaging sensor takes them from there."
        ),
    )
    def ingest_sensor(
        context: SensorEvaluationContext, ops_db: OpsDbResource, storage: SiteStorageResource
    ):
        with ops_db.session() as session, storage.registry() as storages:
            stopped = skip_if_inactive(context, session, s, location.name)
            if stopped is not None:
                return stopped
            source = location_named(session, s, location.name)
            assert isinstance(source, DiskDataLocation)  # validated by the topology
            try:
                tree = source_tree(source, storages.get(source))
                cursor = IngestCursor.from_json(context.cursor)
                tick = ingest_tick(session, source, spec, cursor, tree=tree)
            except LocationUnavailableError as exc:
                # an instrument computer that does not answer: shown as unavailable from this
                # site (ccat status, the UI) and probed with backoff like any location
                session.rollback()
                record_location_error(session, exc, observer=s)
                context.log.error(f"{location.qualified_name}: {exc}")
                return SkipReason(f"{location.qualified_name}: {exc}")
            except (IngestError, StorageError) as exc:
                context.log.error(f"{location.qualified_name}: {exc}")
                return SkipReason(f"{location.qualified_name}: {exc}")
        for line in tick.lines():
            context.log.info(line)
        cursor = tick.cursor.to_json()
        if not tick.news:
            waiting = f"; {tick.waiting} file(s) not complete yet" if tick.waiting else ""
            context.update_cursor(cursor)
            return SkipReason(f"nothing new at {location.qualified_name}{waiting}")
        observation = AssetObservation(asset_key=key, metadata=tick_metadata(tick, spec))
        return SensorResult(asset_events=[observation], cursor=cursor)

    return ingest_sensor


def build_ingest_sensors(site: SiteView, *, interval_seconds: int) -> list[SensorDefinition]:
    """One ingest sensor per SOURCE of ``site`` whose topology entry has ``ingest``."""
    return [
        build_ingest_sensor(site, location, location.ingest, interval_seconds=interval_seconds)
        for location in site.of_type(LocationType.SOURCE)
        if location.ingest is not None
    ]
