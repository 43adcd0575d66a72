"""The name of every Dagster concurrency pool, job, op, sensor and schedule of a site.

No Dagster import: ``ccat list-locations`` prints the pools without loading Dagster, and the
Dagster wiring (``ccat_dagster.defs``) takes every name from here.

Pools are ``{site}_{location}_{operation}`` (``DataLocation.pool_prefix`` is the
``{site}_{location}`` part), and only the operations of the matrix in
``lifecycle.common.operations`` get one. A pool exists where an op runs in it:

- a pipeline stage (one batched op per site) runs in the pool of its operation at the *primary*
  location of that operation's type at the site (first active one by priority, then name; a
  failover moves it with the next code-location load), if the site has what the stage needs
  (``STAGE_PLACEMENT``); the single-partition asset materializations of the stage use the same
  pool, so one limit holds for both;
- deletion runs in ``{site}_{location}_deletion``, one cleanup step per active location where
  deletion is valid (never a LONG_TERM_ARCHIVE), and per deactivated one still holding copies
  (draining), so a limit per location holds;
- monitoring: the re-verification of archive copies (the scrub) runs in
  ``{site}_{lta}_monitoring``; disk monitoring and probes run in sensors, which take no pool.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol, TypeVar

from ccat_dagster.lifecycle.common.operations import OperationType, operations_for_type
from ccat_ops_db.models import LocationType


class Placed(Protocol):
    """A location as the ops DB (``DataLocation``) or the Dagster snapshot (``LocationView``)
    has it."""

    @property
    def name(self) -> str: ...
    @property
    def location_type(self) -> LocationType: ...
    @property
    def priority(self) -> int: ...
    @property
    def pool_prefix(self) -> str: ...
    @property
    def qualified_name(self) -> str: ...


L = TypeVar("L", bound=Placed)

#: stage operation -> (type of the location whose pool it runs in, type the site must have)
STAGE_PLACEMENT: dict[OperationType, tuple[LocationType, LocationType]] = {
    OperationType.RAW_DATA_PACKAGE_CREATION: (LocationType.SOURCE, LocationType.SOURCE),
    OperationType.DATA_TRANSFER_PACKAGE_CREATION: (LocationType.BUFFER, LocationType.SOURCE),
    OperationType.DATA_TRANSFER: (LocationType.BUFFER, LocationType.BUFFER),
    OperationType.DATA_TRANSFER_UNPACKING: (LocationType.BUFFER, LocationType.LONG_TERM_ARCHIVE),
    OperationType.LONG_TERM_ARCHIVE_TRANSFER: (
        LocationType.LONG_TERM_ARCHIVE,
        LocationType.LONG_TERM_ARCHIVE,
    ),
    OperationType.STAGING: (LocationType.PROCESSING, LocationType.PROCESSING),
    # the re-verification of archive copies (the scrub)
    OperationType.MONITORING: (LocationType.LONG_TERM_ARCHIVE, LocationType.LONG_TERM_ARCHIVE),
}


# --------------------------------------------------------------------------- pools


def pool_name(location: Placed, operation: OperationType) -> str:
    """``{site}_{location}_{operation}``, e.g. ``cologne_buffer_data_transfer``.

    Raises ValueError for an operation that is not valid at the location's type (e.g. DELETION
    at a LONG_TERM_ARCHIVE), so a wrong pool can never be created by accident.
    """
    valid = operations_for_type(location.location_type)
    if operation not in valid:
        raise ValueError(
            f"operation {operation.value!r} is not valid at {location.qualified_name} "
            f"({location.location_type.value}); valid there: "
            f"{', '.join(op.value for op in valid)}"
        )
    return f"{location.pool_prefix}_{operation.value}"


def _by_priority(locations: Iterable[L]) -> list[L]:
    return sorted(locations, key=lambda loc: (loc.priority, loc.name))


def stage_location(active: Sequence[L], operation: OperationType) -> L | None:
    """Where a stage of ``operation`` runs at a site whose active locations are ``active``
    (the location whose pool it takes); None when the stage does not run at that site."""
    at, needs = STAGE_PLACEMENT[operation]
    if not any(loc.location_type == needs for loc in active):
        return None
    return next((loc for loc in _by_priority(active) if loc.location_type == at), None)


def cleaned_locations(active: Sequence[L]) -> list[L]:
    """The locations of a site with a deletion step of its own in the site's cleanup job."""
    return [
        loc
        for loc in _by_priority(active)
        if OperationType.DELETION in operations_for_type(loc.location_type)
    ]


def site_pools(active: Sequence[Placed]) -> dict[tuple[str, OperationType], str]:
    """Every pool the Dagster ops of a site use, ``(location name, operation) -> pool``, given
    the site's active locations."""
    pools = {}
    for operation in STAGE_PLACEMENT:
        location = stage_location(active, operation)
        if location is not None:
            pools[(location.name, operation)] = pool_name(location, operation)
    for location in cleaned_locations(active):
        pools[(location.name, OperationType.DELETION)] = pool_name(location, OperationType.DELETION)
    return pools


# --------------------------------------------------------------------------- jobs and ops


def stage_job(site: str, stage: str) -> str:
    """The batched job of a pipeline stage, e.g. ``cologne_data_transfer``."""
    return f"{site}_{stage}"


def stage_op(site: str, stage: str) -> str:
    return f"{stage_job(site, stage)}_batch"


def cleanup_job(site: str) -> str:
    return f"{site}_cleanup"


def cleanup_check_op(site: str) -> str:
    """The first step of the cleanup job: live lta_presence checks (it takes the run config)."""
    return f"{cleanup_job(site)}_lta_presence"


def cleanup_delete_op(site: str, location: str) -> str:
    """The deletion step of one location (in that location's deletion pool)."""
    return f"{cleanup_job(site)}_delete_{location}"


def cleanup_temporaries_op(site: str) -> str:
    return f"{cleanup_job(site)}_temporaries"


def cleanup_partitions_op(site: str) -> str:
    """The step pruning the site's archive partition sets past ``partition_horizon_days``."""
    return f"{cleanup_job(site)}_partitions"


def consistency_audit_job(site: str) -> str:
    """The consistency audit of the site's locations (one slice of each that is due)."""
    return f"{site}_consistency_audit"


def consistency_audit_op(site: str) -> str:
    return f"{consistency_audit_job(site)}_op"


def create_staging_job(site: str) -> str:
    return f"{site}_create_staging_job"


def create_staging_op(site: str) -> str:
    return f"{create_staging_job(site)}_op"


# --------------------------------------------------------------------------- sensors, schedules


def restore_drill_job(site: str) -> str:
    return f"{site}_restore_drill"


def restore_drill_schedule(site: str) -> str:
    return f"{restore_drill_job(site)}_schedule"


def stage_sensor(site: str, stage: str) -> str:
    return f"{stage_job(site, stage)}_sensor"


def cleanup_schedule(site: str) -> str:
    return f"{cleanup_job(site)}_schedule"


def consistency_audit_schedule(site: str) -> str:
    return f"{consistency_audit_job(site)}_schedule"


def ingest_sensor(site: str, location: str) -> str:
    """The sensor that files new raw data files at SOURCE ``location`` of ``site``."""
    return f"{site}_{location}_ingest_sensor"


def buffer_monitor_sensor(site: str) -> str:
    return f"{site}_buffer_monitor_sensor"


def location_probe_sensor(site: str) -> str:
    return f"{site}_location_probe_sensor"


def release_claims_sensor(site: str) -> str:
    return f"{site}_release_claims_sensor"


def alert_sensor(site: str) -> str:
    """Evaluates the site's alert conditions and sends what is due."""
    return f"{site}_alert_sensor"


def run_failure_alert_sensor(site: str) -> str:
    return f"{site}_run_failure_alert_sensor"
