"""A full buffer never deadlocks itself (issue 10, bug 10).

The telescope buffer is a real 30 MB tmpfs and more than twice that much data is filed. Before
admission, packaging filled the buffer with package tars, bundling found no room and packages
and bundles went FAILED. Now work is admitted only while the buffer stays below the EMERGENCY
level with room for what already-admitted work will still write; everything else waits, the
cleanup frees space, and repeated ``run-until-idle`` archives everything.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from ccat_dagster.lifecycle.capacity.buffer_policy import BufferLevel
from ccat_dagster.lifecycle.summary import packages_missing_from_ltas
from ccat_dagster_tests.dagster_instance import instance_for_test
from ccat_dagster_tests.pipeline_support import (
    assert_nothing_failed_or_counted,
    drive,
    real_topology,
    setup_pipeline,
    tmpfs,
)
from ccat_ops_db.models import (
    DataLocation,
    DiskUsageSample,
    PackageState,
    RawDataFile,
    RawDataPackage,
    Site,
)
from ccat_ops_db.session import session_scope

pytestmark = pytest.mark.slow


@pytest.fixture
def tmpfs_30m(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path/ccat/buffer`` (the telescope buffer of ``real_topology``) as a 30 MB tmpfs."""
    mount_point = tmp_path / "ccat" / "buffer"
    mount_point.mkdir(parents=True)
    with tmpfs(mount_point, "30m"):
        yield mount_point


def test_small_buffer_archives_everything_without_failures(ops_db_url, tmp_path, tmpfs_30m):
    url = ops_db_url
    topology = real_topology(
        tmp_path,
        policy={"data_transfer_package_max_bytes": 1, "retention_period_minutes": 0},
    )
    # 20 packages, ~72 MB in all (the largest 7.5 MB): more than twice the buffer
    setup_pipeline(
        url, topology, tmp_path, n_obs_units=10, files_per_unit=5, max_size=6_000_000, seed=7
    )
    with session_scope(url) as session:
        filed = session.scalar(select(func.sum(RawDataFile.size)))
    assert filed > 60_000_000

    with instance_for_test() as instance:
        for _ in range(8):
            report = drive(url, instance, max_passes=200)
            assert not report.failed_runs, report.failed_runs
            assert_nothing_failed_or_counted(url)
            with session_scope(url) as session:
                if not packages_missing_from_ltas(session):
                    break

    with session_scope(url) as session:
        assert packages_missing_from_ltas(session) == []
        packages = session.scalars(select(RawDataPackage)).all()
        assert len(packages) == 20
        assert all(p.state == PackageState.ARCHIVED for p in packages)
        # the buffer monitor sampled the telescope buffer every pass: never at EMERGENCY
        samples = session.scalars(
            select(DiskUsageSample)
            .join(DataLocation, DataLocation.id == DiskUsageSample.data_location_id)
            .join(Site, Site.id == DataLocation.site_id)
            .where(Site.short_name == "ccat", DataLocation.name == "telescope_buffer")
        ).all()
        assert samples
        assert all(s.level != BufferLevel.EMERGENCY.name for s in samples), max(
            s.percent for s in samples
        )
