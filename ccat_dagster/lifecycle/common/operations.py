"""The operations of the data lifecycle and the location types where each may run.

The operation-location matrix ``QUEUE_OPERATIONS_BY_LOCATION_TYPE`` is the table of
docs/lifecycle.md (operations per location type): which operations are valid at which type of
location. An operation valid at a location may have a Dagster concurrency pool there, named
``{site}_{location}_{operation}`` (``lifecycle.common.names``, which also says which ones the ops
use). LONG_TERM_ARCHIVE locations have no DELETION on purpose: nothing is ever deleted from a
long-term archive.
"""

from __future__ import annotations

import enum

from ccat_ops_db.models import LocationType


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


def operations_for_type(location_type: LocationType) -> tuple[OperationType, ...]:
    """The operations valid at a location of ``location_type``."""
    return QUEUE_OPERATIONS_BY_LOCATION_TYPE[location_type]
