"""What the catalogue says a location holds, over one key range of the audit.

A key is *expected* where a PRESENT copy records it (a missing object, or one of another size,
is lost); a key is *known* where any copy not DELETED or LOST names it, or where work in
progress is about to make it one (a package being written, a bundle being built, a transfer,
unpacking or archive copy into the location that has not finished): such an object is never
dark. Key ranges compare in code point order, the order ``Storage.list`` yields keys in (byte
order on PostgreSQL through the "C" collation, SQLite's default).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ccat_ops_db.models import (
    CopyType,
    DataLocation,
    DataTransfer,
    DataTransferPackage,
    LongTermArchiveTransfer,
    PhysicalCopy,
    PhysicalCopyStatus,
    RawDataFile,
    RawDataPackage,
    Status,
)

S = PhysicalCopyStatus
#: copies whose object is not expected to be there any more
GONE_STATUSES = (S.DELETED, S.LOST)

#: each copy type and the key column of what it holds
_KEYS: tuple[tuple[CopyType, Any, Any], ...] = (
    (CopyType.RAW_DATA_FILE, PhysicalCopy.raw_data_file_id, RawDataFile),
    (CopyType.RAW_DATA_PACKAGE, PhysicalCopy.raw_data_package_id, RawDataPackage),
    (CopyType.DATA_TRANSFER_PACKAGE, PhysicalCopy.data_transfer_package_id, DataTransferPackage),
)


@dataclass(frozen=True)
class CatalogueCopy:
    copy_id: int
    key: str
    status: PhysicalCopyStatus
    size: int | None
    type: CopyType


def ordered(session: Session, column: Any) -> Any:
    """``column`` compared in code point order on either database."""
    return column.collate("C") if session.get_bind().dialect.name == "postgresql" else column


def copies_in_range(
    session: Session, location: DataLocation, after: str, upto: str | None
) -> list[CatalogueCopy]:
    """Every copy at ``location`` not DELETED or LOST whose key is in ``(after, upto]``
    (``upto`` None: to the end)."""
    out: list[CatalogueCopy] = []
    for copy_type, fk, model in _KEYS:
        key = ordered(session, model.relative_path)
        where = [
            PhysicalCopy.data_location_id == location.id,
            PhysicalCopy.type == copy_type,
            PhysicalCopy.status.not_in(GONE_STATUSES),
            key > after,
        ]
        if upto is not None:
            where.append(key <= upto)
        rows = session.execute(
            sa.select(PhysicalCopy.id, model.relative_path, PhysicalCopy.status, PhysicalCopy.size)
            .join(model, model.id == fk)
            .where(*where)
        ).all()
        out += [CatalogueCopy(i, k, status, size, copy_type) for i, k, status, size in rows]
    return out


def in_flight_keys(session: Session, location: DataLocation, keys: Collection[str]) -> set[str]:
    """Those of ``keys`` that work in progress writes into ``location``: not dark (yet)."""
    if not keys:
        return set()
    keys = list(keys)
    done = Status.COMPLETED
    lta_pending = sa.exists().where(
        LongTermArchiveTransfer.raw_data_package_id == RawDataPackage.id,
        LongTermArchiveTransfer.destination_location_id == location.id,
        LongTermArchiveTransfer.status != done,
    )
    unpack_pending = sa.exists().where(
        DataTransfer.data_transfer_package_id == RawDataPackage.data_transfer_package_id,
        DataTransfer.destination_location_id == location.id,
        DataTransfer.unpack_status != done,
    )
    packages = session.scalars(
        sa.select(RawDataPackage.relative_path).where(
            RawDataPackage.relative_path.in_(keys),
            sa.or_(RawDataPackage.status != done, lta_pending, unpack_pending),
        )
    )
    transfer_pending = sa.exists().where(
        DataTransfer.data_transfer_package_id == DataTransferPackage.id,
        DataTransfer.destination_location_id == location.id,
        DataTransfer.status != done,
    )
    bundles = session.scalars(
        sa.select(DataTransferPackage.relative_path).where(
            DataTransferPackage.relative_path.in_(keys),
            sa.or_(DataTransferPackage.status != done, transfer_pending),
        )
    )
    return {*packages, *bundles}
