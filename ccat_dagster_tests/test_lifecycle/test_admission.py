"""Admission of buffer writes: claims in pipeline order, granted while the buffer stays at or
below the EMERGENCY level, the rest waiting in order (on SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest

from ccat_dagster.lifecycle.capacity.admission import (
    buffer_claims,
    bundle_key,
    estimate_tar_size,
    package_key,
    plan_admission,
    transfer_key,
    unpack_key,
)
from ccat_dagster.lifecycle.common.policy import BufferThresholds, Policy
from ccat_dagster.storage.base import DiskUsage
from ccat_dagster_tests import factories as f
from ccat_ops_db.models import Status

#: EMERGENCY at 100 %: the limit is the disk size, which keeps the arithmetic readable
FULL_DISK = Policy(buffer_thresholds_percent=BufferThresholds(70, 85, 100))


@pytest.fixture
def topo(session, tmp_path):
    topology = f.make_topology(session, tmp_path, lta_sites=("cologne", "us"))
    session.commit()
    return topology


def _pending_package(topo):
    package = f.file_raw_data_package(topo, write=False)
    package.status = Status.PENDING
    return package


def test_a_tar_estimate_is_never_below_the_bytes_it_holds():
    assert estimate_tar_size(0, 0, 0) >= 10_240
    assert estimate_tar_size(10_000_000, 10, 500) > 10_000_000 + 10 * 512


def test_bundles_first_then_shares_then_packages_in_order(session, topo):
    buffer = topo.source_buffer
    dtp = f.bundle(topo, [f.file_raw_data_package(topo, write=False)], write=False)
    dtp.status = Status.PENDING
    f.file_raw_data_package(topo, write=False)  # packaged, not bundled: a reserved share
    first, second = _pending_package(topo), _pending_package(topo)
    session.commit()

    claims = buffer_claims(session, buffer)
    assert [c.key for c in claims] == [
        bundle_key(dtp.id),
        None,
        package_key(first.id),
        package_key(second.id),
    ]
    files = sum(rdf.size for rdf in first.raw_data_files)
    assert claims[2].need >= 2 * files, "a package claims its tar and its share of a bundle"

    used = 1_000_000
    room_for_two = used + sum(c.need for c in claims[:3])  # bundle, share, first package
    admission = plan_admission(
        session, buffer, DiskUsage(total_bytes=room_for_two, used_bytes=used), policy=FULL_DISK
    )
    assert admission.admitted == [bundle_key(dtp.id), package_key(first.id)]
    assert not admission.admits(package_key(second.id))
    assert "EMERGENCY" in admission.reason(package_key(second.id))

    # nothing fits: the bundle waits, and every package behind it, however small
    admission = plan_admission(
        session, buffer, DiskUsage(total_bytes=used + 1, used_bytes=used), policy=FULL_DISK
    )
    assert admission.admitted == []
    assert admission.reason(package_key(first.id)).startswith("waits behind earlier work")

    # a location without capacity (S3) admits everything
    assert plan_admission(session, buffer, None).admits(package_key(second.id))


def test_the_emergency_level_is_the_limit(session, topo):
    package = _pending_package(topo)
    session.commit()
    [claim] = buffer_claims(session, topo.source_buffer)
    total = 10 * claim.need
    # 95 % of the disk: room for it at 85 % used, none at 91 %
    fits = DiskUsage(total_bytes=total, used_bytes=int(0.85 * total))
    full = DiskUsage(total_bytes=total, used_bytes=int(0.91 * total))
    assert plan_admission(session, topo.source_buffer, fits).admits(package_key(package.id))
    assert not plan_admission(session, topo.source_buffer, full).admits(package_key(package.id))


def test_archive_site_buffer_unpacks_before_transfers(session, topo):
    pkg_a = f.file_raw_data_package(topo, write=False)
    pkg_b = f.file_raw_data_package(topo, write=False)
    dtp_a = f.bundle(topo, [pkg_a], write=False)
    dtp_b = f.bundle(topo, [pkg_b], write=False)
    arrived = f.transfer(topo, dtp_a, to_site="cologne", unpack_status=Status.PENDING, write=False)
    waiting = f.transfer(topo, dtp_b, to_site="cologne", status=Status.PENDING, write=False)
    session.commit()

    claims = buffer_claims(session, topo.buffer("cologne"))
    assert [c.key for c in claims] == [unpack_key(arrived.id), transfer_key(waiting.id)]
    assert claims[0].need == pkg_a.size
    assert claims[1].need == dtp_b.size + pkg_b.size  # the bundle, then its packages unpacked
    only_the_unpack = DiskUsage(total_bytes=claims[0].need, used_bytes=0)
    admission = plan_admission(session, topo.buffer("cologne"), only_the_unpack, policy=FULL_DISK)
    assert admission.admitted == [unpack_key(arrived.id)]
    assert not admission.admits(transfer_key(waiting.id))
