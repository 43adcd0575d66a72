"""Admission: work that writes into a disk BUFFER starts only when the space it needs is free.

A full buffer must never turn into failed packages or a deadlock (issue 10, bug 10): packaging
that fills the buffer with package tars leaves no room for the bundles that would let the data
leave. So every piece of outstanding work at a buffer holds a *claim* on its future bytes, and
claims are granted in pipeline order until the disk would reach the policy's EMERGENCY level
(``buffer_thresholds_percent.emergency``):

1. pending bundles (DataTransferPackages) written there: the bundle tar;
2. pending unpacks of bundles that arrived there: the unpacked package tars;
3. completed packages there not yet bundled: their share of a future bundle (reserved);
4. pending transfers into it: the bundle, and its unpacked packages at an archive site;
5. pending packages whose tar goes there: the tar now and its share of a bundle later.

Work is admitted in that order (and by id within a kind) while the used bytes plus the claims
up to and including it stay at or below the limit; the first that does not fit waits, and so
does everything after it, so a big item is never starved by smaller later ones. Work that waits
is not a failure: it stays PENDING and is admitted when cleanup has freed space. Locations
without a capacity (S3) admit everything. No Dagster here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.common.locations import get_primary_buffer_for_site, is_lta_site
from ccat_dagster.lifecycle.common.policy import Policy, get_policy
from ccat_dagster.storage.base import DiskUsage
from ccat_ops_db.models import (
    DataLocation,
    DataTransfer,
    DataTransferPackage,
    LocationType,
    PackageState,
    PhysicalCopyStatus,
    RawDataFile,
    RawDataPackage,
    RawDataPackagePhysicalCopy,
    Status,
)

PENDING = (Status.PENDING, Status.SCHEDULED, Status.IN_PROGRESS)
_BLOCK = 512
#: a PAX tar member costs up to three header blocks (long or non-ASCII names) and padding
_MEMBER_OVERHEAD = 3 * _BLOCK + _BLOCK - 1
#: manifest member, end-of-archive blocks and padding to a full 10 KiB record
_TAR_OVERHEAD = 3 * _BLOCK + 2 * _BLOCK + 20 * _BLOCK + 1024
#: manifest bytes per member besides its name: checksum, algorithm, size, JSON punctuation
_MANIFEST_PER_MEMBER = 200


def estimate_tar_size(total_bytes: int, members: int, name_chars: int) -> int:
    """An upper estimate of a package tar of ``members`` files of ``total_bytes`` whose names
    have ``name_chars`` characters (in the manifest and the headers)."""
    return (
        int(total_bytes)
        + members * (_MEMBER_OVERHEAD + _MANIFEST_PER_MEMBER)
        + 2 * int(name_chars)
        + _TAR_OVERHEAD
    )


def package_key(package_id: int | str) -> str:
    return f"package:{package_id}"


def bundle_key(dtp_id: int | str) -> str:
    return f"bundle:{dtp_id}"


def transfer_key(transfer_id: int | str) -> str:
    return f"transfer:{transfer_id}"


def unpack_key(transfer_id: int | str) -> str:
    return f"unpack:{transfer_id}"


@dataclass(frozen=True)
class Claim:
    """Bytes that outstanding work will still write at a location; ``key`` None: reserved
    for work that is not admitted on its own (a completed package's share of a bundle)."""

    key: str | None
    need: int
    what: str


@dataclass
class Admission:
    """The verdict for every claim at one location."""

    location: str
    limit_bytes: int | None
    used_bytes: int | None
    refused: dict[str, str] = field(default_factory=dict)
    admitted: list[str] = field(default_factory=list)

    def admits(self, key: str) -> bool:
        return key not in self.refused

    def reason(self, key: str) -> str | None:
        return self.refused.get(key)


def _bundle_sizes(session: Session, dtp_ids: list[int]) -> dict[int, tuple[int, int, int]]:
    """dtp id -> (bytes, members, name characters) of the packages it carries."""
    if not dtp_ids:
        return {}
    rows = session.execute(
        sa.select(
            RawDataPackage.data_transfer_package_id,
            sa.func.coalesce(sa.func.sum(RawDataPackage.size), 0),
            sa.func.count(RawDataPackage.id),
            sa.func.coalesce(sa.func.sum(sa.func.length(RawDataPackage.name) + 4), 0),
        )
        .where(RawDataPackage.data_transfer_package_id.in_(dtp_ids))
        .group_by(RawDataPackage.data_transfer_package_id)
    ).all()
    return {dtp: (int(b or 0), int(n), int(c or 0)) for dtp, b, n, c in rows if dtp is not None}


def _bundle_claims(session: Session, buffer: DataLocation) -> list[Claim]:
    ids = list(
        session.scalars(
            sa.select(DataTransferPackage.id)
            .where(
                DataTransferPackage.origin_location_id == buffer.id,
                DataTransferPackage.status.in_(PENDING),
            )
            .order_by(DataTransferPackage.id)
        )
    )
    sizes = _bundle_sizes(session, ids)
    return [
        Claim(bundle_key(i), estimate_tar_size(*sizes.get(i, (0, 0, 0))), f"bundle {i}")
        for i in ids
    ]


def _unpack_claims(session: Session, buffer: DataLocation) -> list[Claim]:
    rows = session.execute(
        sa.select(DataTransfer.id, DataTransfer.data_transfer_package_id)
        .where(
            DataTransfer.destination_location_id == buffer.id,
            DataTransfer.status == Status.COMPLETED,
            DataTransfer.unpack_status.in_(PENDING),
        )
        .order_by(DataTransfer.id)
    ).all()
    sizes = _bundle_sizes(session, [dtp for _, dtp in rows])
    return [
        Claim(unpack_key(t), sizes.get(dtp, (0, 0, 0))[0], f"unpack of transfer {t}")
        for t, dtp in rows
    ]


def _bundle_share_claims(session: Session, buffer: DataLocation) -> list[Claim]:
    present = sa.exists().where(
        RawDataPackagePhysicalCopy.raw_data_package_id == RawDataPackage.id,
        RawDataPackagePhysicalCopy.data_location_id == buffer.id,
        RawDataPackagePhysicalCopy.status == PhysicalCopyStatus.PRESENT,
    )
    total, count = session.execute(
        sa.select(sa.func.coalesce(sa.func.sum(RawDataPackage.size), 0), sa.func.count()).where(
            RawDataPackage.status == Status.COMPLETED,
            RawDataPackage.state == PackageState.WAITING,
            RawDataPackage.data_transfer_package_id.is_(None),
            present,
        )
    ).one()
    if not count:
        return []
    need = int(total or 0) + int(count) * (_MEMBER_OVERHEAD + _MANIFEST_PER_MEMBER)
    return [Claim(None, need, f"bundle share of {count} packaged, unbundled packages")]


def _transfer_claims(session: Session, buffer: DataLocation) -> list[Claim]:
    rows = session.execute(
        sa.select(DataTransfer.id, DataTransfer.data_transfer_package_id, DataTransferPackage.size)
        .join(DataTransferPackage, DataTransferPackage.id == DataTransfer.data_transfer_package_id)
        .where(
            DataTransfer.destination_location_id == buffer.id,
            DataTransfer.status.in_(PENDING),
        )
        .order_by(DataTransfer.id)
    ).all()
    unpacked_here = is_lta_site(buffer.site)
    sizes = _bundle_sizes(session, [dtp for _, dtp, _ in rows]) if unpacked_here else {}
    return [
        Claim(
            transfer_key(t),
            int(size or 0) + (sizes.get(dtp, (0, 0, 0))[0] if unpacked_here else 0),
            f"transfer {t}",
        )
        for t, dtp, size in rows
    ]


def _package_claims(session: Session, buffer: DataLocation) -> list[Claim]:
    primary = get_primary_buffer_for_site(session, buffer.site)
    if primary is None or primary.id != buffer.id:
        return []
    sources = [
        loc.id
        for loc in buffer.site.locations
        if loc.active and loc.location_type == LocationType.SOURCE
    ]
    if not sources:
        return []
    rows = session.execute(
        sa.select(
            RawDataPackage.id,
            sa.func.coalesce(sa.func.sum(RawDataFile.size), 0),
            sa.func.count(RawDataFile.id),
            sa.func.coalesce(sa.func.sum(sa.func.length(RawDataFile.relative_path)), 0),
        )
        .outerjoin(RawDataFile, RawDataFile.raw_data_package_id == RawDataPackage.id)
        .where(
            RawDataPackage.source_location_id.in_(sources),
            RawDataPackage.status.in_(PENDING),
        )
        .group_by(RawDataPackage.id)
        .order_by(RawDataPackage.id)
    ).all()
    # the tar now, and the same bytes again in a bundle later
    return [
        Claim(package_key(p), 2 * estimate_tar_size(b, n, c), f"package {p}") for p, b, n, c in rows
    ]


def buffer_claims(session: Session, buffer: DataLocation) -> list[Claim]:
    """Every claim on ``buffer``'s space, in admission order (few aggregate queries)."""
    return (
        _bundle_claims(session, buffer)
        + _unpack_claims(session, buffer)
        + _bundle_share_claims(session, buffer)
        + _transfer_claims(session, buffer)
        + _package_claims(session, buffer)
    )


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def plan_admission(
    session: Session,
    location: DataLocation,
    usage: DiskUsage | None,
    *,
    policy: Policy | None = None,
) -> Admission:
    """Which outstanding work at ``location`` may start now, given its ``usage`` (None: no
    capacity to fill, everything is admitted)."""
    name = location.qualified_name
    if usage is None or usage.total_bytes <= 0:
        return Admission(name, None, None)
    policy = policy or get_policy(session)
    emergency = policy.buffer_thresholds_percent.emergency
    limit = int(usage.total_bytes * emergency / 100)
    admission = Admission(name, limit, usage.used_bytes)
    running = usage.used_bytes
    first: str | None = None
    for claim in buffer_claims(session, location):
        ahead = running - usage.used_bytes
        running += claim.need
        if claim.key is None:
            continue
        if first is None and running <= limit:
            admission.admitted.append(claim.key)
        elif first is None:
            first = (
                f"{claim.what} needs {_mb(claim.need)} at {name}; with {_mb(usage.used_bytes)} "
                f"used and {_mb(ahead)} claimed by work ahead of it, that would pass the "
                f"EMERGENCY level ({emergency}% of {_mb(usage.total_bytes)}); it waits for "
                "cleanup to free space"
            )
            admission.refused[claim.key] = first
        else:
            admission.refused[claim.key] = f"waits behind earlier work: {first}"
    return admission
