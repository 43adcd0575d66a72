"""A bundle that rotted at rest at its origin is rebuilt; bytes spoiled on the way are re-pulled.

Found by the fault suite (schedule 103): a DataTransferPackage rotted in the telescope buffer
before the archive sites pulled it. Every pull failed its checksum against the same bad origin
copy, the retries ran out and its packages ended FAILED, waiting for an operator, although the
package tars it was made of were still there and verified. A pull that mismatches now re-reads
the origin; a bad origin copy is removed and the bundle rebuilt from its package tars, the
transfers wait for it without burning their retries. A mismatch whose origin reads back good
(the bytes went bad in transit) is retried from the origin as before. SQLite and PostgreSQL.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import pytest
from sqlalchemy import select

from ccat_dagster.lifecycle.summary import packages_missing_from_ltas
from ccat_dagster.lifecycle.transfer.transfers import execute_data_transfer
from ccat_dagster.storage.factory import StorageRegistry
from ccat_dagster_tests.dagster_instance import instance_for_test
from ccat_dagster_tests.pipeline_support import drive, real_topology, setup_pipeline
from ccat_ops_db.models import (
    AuditLog,
    DataTransfer,
    DataTransferPackage,
    DataTransferPackagePhysicalCopy,
    PackageState,
    PhysicalCopyStatus,
    RawDataPackage,
    Status,
)
from ccat_ops_db.session import session_scope


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _bundled(url: str, root: Path) -> tuple[int, str, Path]:
    """File one obs unit and let the telescope site package and bundle it."""
    setup_pipeline(url, real_topology(root), root, n_obs_units=1, files_per_unit=2)
    with instance_for_test() as instance:
        drive(url, instance, sites=["ccat"], include_schedules=False)
    with session_scope(url) as session:
        dtp = session.scalars(select(DataTransferPackage)).one()
        assert dtp.status == Status.COMPLETED
        assert session.scalars(select(DataTransfer)).all(), "the routes were planned"
        return dtp.id, dtp.checksum, root / "ccat" / "buffer" / dtp.relative_path


@pytest.mark.parametrize("spoiled", ["rotted", "gone"])
def test_bundle_rotted_at_origin_is_rebuilt_and_archived(ops_db_url, tmp_path, spoiled):
    """Rotted: a byte flipped at rest. Gone: removed by hand before any site pulled it (the
    pull fails with the object missing, not with a checksum mismatch)."""
    dtp_id, checksum, bundle = _bundled(ops_db_url, tmp_path)
    if spoiled == "rotted":
        _flip_byte(bundle, offset=bundle.stat().st_size // 2)
    else:
        bundle.unlink()

    with instance_for_test() as instance:
        drive(ops_db_url, instance, include_schedules=False)

    with session_scope(ops_db_url) as session:
        assert packages_missing_from_ltas(session) == []
        assert all(
            p.state == PackageState.ARCHIVED for p in session.scalars(select(RawDataPackage))
        )
        dtp = session.get(DataTransferPackage, dtp_id)
        assert dtp.status == Status.COMPLETED
        assert dtp.checksum == checksum, "the rebuilt bundle is byte for byte the recorded one"
        assert dtp.retry_count == 1, "the rebuild counts against the bundle"
        transfers = session.scalars(select(DataTransfer)).all()
        assert {t.status for t in transfers} == {Status.COMPLETED}
        assert all(t.retry_count == 0 for t in transfers), "no transfer burnt a retry on it"
        origin = session.scalar(
            select(DataTransferPackagePhysicalCopy).where(
                DataTransferPackagePhysicalCopy.data_transfer_package_id == dtp_id,
                DataTransferPackagePhysicalCopy.data_location_id == dtp.origin_location_id,
            )
        )
        reasons = [
            a.reason
            for a in session.scalars(
                select(AuditLog).where(AuditLog.entity_type == "physical_copy")
            )
        ]
    assert any("rotted at rest in ccat/telescope_buffer" in r for r in reasons), reasons
    # the origin copy was made again (and may since have been cleaned up as usual)
    assert origin is not None
    assert origin.checksum == checksum


class _FlipFirstRead:
    """The origin's real storage, except that the first read of ``key`` has one byte flipped
    on the way (as a bad link or NIC would): the object at rest stays good."""

    def __init__(self, inner, key: str) -> None:
        self._inner, self._key, self.flipped = inner, key, False

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    @contextmanager
    def open_read(self, key: str) -> Iterator[BinaryIO]:
        with self._inner.open_read(key) as stream:
            if key != self._key or self.flipped:
                yield stream
                return
            self.flipped = True
            data = bytearray(stream.read())
            data[len(data) // 2] ^= 0xFF
            yield io.BytesIO(bytes(data))


def test_bytes_spoiled_in_transit_are_pulled_again_from_the_good_origin(ops_db_url, tmp_path):
    dtp_id, checksum, bundle = _bundled(ops_db_url, tmp_path)
    before = bundle.read_bytes()
    with session_scope(ops_db_url) as session, StorageRegistry(local_site="cologne") as storages:
        transfer = session.scalars(
            select(DataTransfer).where(DataTransfer.data_transfer_package_id == dtp_id)
        ).first()
        origin = storages.get(transfer.origin_location)
        flipping = _FlipFirstRead(origin, transfer.data_transfer_package.relative_path)

        def storage_for(location):
            return (
                flipping if location.id == transfer.origin_location_id else storages.get(location)
            )

        first = execute_data_transfer(session, transfer, storage_for=storage_for)
        assert flipping.flipped
        assert not first.ok
        assert "checksum mismatch" in (first.error or "")
        assert transfer.retry_count == 1
        assert transfer.status == Status.PENDING
        dtp = session.get(DataTransferPackage, dtp_id)
        assert dtp.status == Status.COMPLETED, "the origin is good"
        assert dtp.retry_count == 0
        origin_copy = session.scalar(
            select(DataTransferPackagePhysicalCopy).where(
                DataTransferPackagePhysicalCopy.data_transfer_package_id == dtp_id,
                DataTransferPackagePhysicalCopy.data_location_id == dtp.origin_location_id,
            )
        )
        assert origin_copy.status == PhysicalCopyStatus.PRESENT

        second = execute_data_transfer(session, transfer, storage_for=storage_for)
        assert second.ok, second.error
        assert transfer.status == Status.COMPLETED
    assert bundle.read_bytes() == before
    assert checksum


def test_bundle_rotted_in_the_buffer_it_is_forwarded_from_is_rebuilt_there(ops_db_url, tmp_path):
    """Found by the fault suite (schedule 584): a bundle rotted in the buffer of the archive
    site that forwards it to the other archive site (the secondary route). Its packages are
    archived at that site, so the bundle is rebuilt there from their verified copies and pulled
    again: every package reaches every LTA."""
    dtp_id, checksum, _bundle = _bundled(ops_db_url, tmp_path)
    with session_scope(ops_db_url) as session:
        [primary] = session.scalars(select(DataTransfer)).all()
        first_site = primary.destination_location.site.short_name
    with instance_for_test() as instance:
        drive(ops_db_url, instance, sites=["ccat", first_site], include_schedules=False)
    with session_scope(ops_db_url) as session:
        forwards = [
            t
            for t in session.scalars(select(DataTransfer))
            if t.origin_location.site.short_name == first_site
        ]
        assert forwards, "the secondary route was planned"
        relay = forwards[0].origin_location
        relay_id = relay.id
        forwarded = Path(relay.path) / forwards[0].data_transfer_package.relative_path
    _flip_byte(forwarded, offset=forwarded.stat().st_size // 2)

    with instance_for_test() as instance:
        drive(ops_db_url, instance, include_schedules=False)

    with session_scope(ops_db_url) as session:
        assert packages_missing_from_ltas(session) == []
        assert {t.status for t in session.scalars(select(DataTransfer))} == {Status.COMPLETED}
        reasons = [
            a.reason
            for a in session.scalars(
                select(AuditLog).where(AuditLog.entity_type == "physical_copy")
            )
        ]
    assert any(f"rotted at rest in {first_site}/buffer" in r for r in reasons), reasons
    assert any("rebuilt from the verified copies of its packages" in r for r in reasons)
    with session_scope(ops_db_url) as session:
        rebuilt = session.scalar(
            select(DataTransferPackagePhysicalCopy).where(
                DataTransferPackagePhysicalCopy.data_transfer_package_id == dtp_id,
                DataTransferPackagePhysicalCopy.data_location_id == relay_id,
            )
        )
        assert rebuilt.checksum == checksum, "byte for byte the recorded bundle"
