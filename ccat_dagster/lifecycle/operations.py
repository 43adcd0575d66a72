"""The operations of the data lifecycle, where each may run, and the pool that limits it.

The operation-location matrix ``QUEUE_OPERATIONS_BY_LOCATION_TYPE`` is the table of
docs/lifecycle.md (operations per location type); ``{site}_{location}_{operation}`` is the name
of the Dagster concurrency pool of that operation at that location. LONG_TERM_ARCHIVE locations
have no DELETION on purpose: nothing is ever deleted from a long-term archive.
"""

from __future__ import annotations

import enum

from ccat_ops_db.models import DataLocation, LocationType


class OperationType(enum.Enum):
    RAW_DATA_PACKAGE_CREATION = "raw_data_package_creation"
    DATA_TRANSFER_PACKAGE_CREATION = "data_transfer_package_creation"
    DATA_TRANSFER = "data_transfer"
    DATA_TRANSFER_UNPACKING = "data_transfer_unpacking"
    LONG_TERM_ARCHIVE_TRANSFER = "long_term_archive_transfer"
    STAGING = "staging"
    DELETION = "deletion"
    MONITORING = "monitoring"


QUEUE_OPERATIONS_BY_LOCATION_TYPE: dict[LocationType, tuple[OperationType, ...]] = {
    LocationType.SOURCE: (
        OperationType.RAW_DATA_PACKAGE_CREATION,
        OperationType.DELETION,
        OperationType.MONITORING,
    ),
    LocationType.BUFFER: (
        OperationType.DATA_TRANSFER_PACKAGE_CREATION,
        OperationType.DATA_TRANSFER,
        OperationType.DATA_TRANSFER_UNPACKING,
        OperationType.DELETION,
        OperationType.MONITORING,
    ),
    LocationType.LONG_TERM_ARCHIVE: (
        OperationType.LONG_TERM_ARCHIVE_TRANSFER,
        OperationType.MONITORING,
    ),
    LocationType.PROCESSING: (
        OperationType.STAGING,
        OperationType.DELETION,
        OperationType.MONITORING,
    ),
}


def operations_for(location: DataLocation) -> tuple[OperationType, ...]:
    """The operations valid at ``location`` (by its type)."""
    return QUEUE_OPERATIONS_BY_LOCATION_TYPE[location.location_type]


def pool_name(location: DataLocation, operation: OperationType) -> str:
    """``{site}_{location}_{operation}``, e.g. ``cologne_buffer_data_transfer``.

    Raises ValueError for an operation that is not valid at the location's type (e.g. DELETION
    at a LONG_TERM_ARCHIVE), so a wrong pool can never be created by accident.
    """
    if operation not in QUEUE_OPERATIONS_BY_LOCATION_TYPE[location.location_type]:
        valid = ", ".join(op.value for op in operations_for(location))
        raise ValueError(
            f"operation {operation.value!r} is not valid at {location.site.short_name}/"
            f"{location.name} ({location.location_type.value}); valid there: {valid}"
        )
    return f"{location.site.short_name}_{location.name}_{operation.value}"


def pool_names_for(location: DataLocation) -> dict[OperationType, str]:
    """Every operation valid at ``location`` mapped to its pool name."""
    return {op: pool_name(location, op) for op in operations_for(location)}
