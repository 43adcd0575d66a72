"""Two real ``ccat run-until-idle`` processes at once over one ops database (bug 8 of issue 10).

Before planner locks this made 20 RawDataPackages of 10 obs units x 10 files, 10 of them empty,
packaged as empty tars and archived in both LTAs for good. Each process has its own Dagster
instance (so neither sees the other's runs in flight, like two daemons after a failover);
both share the ops database and the local-disk topology of the pipeline tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from ccat_dagster.lifecycle.ingest.filing import register_raw_data_files
from ccat_dagster.lifecycle.summary import packages_missing_from_ltas
from ccat_dagster.simulate import simulate_instrument
from ccat_dagster_tests.pipeline_support import real_topology
from ccat_ops_db.models import (
    DataTransfer,
    DataTransferPackage,
    LocationType,
    LongTermArchiveTransfer,
    PackageState,
    PhysicalCopyStatus,
    RawDataFile,
    RawDataPackage,
    RawDataPackagePhysicalCopy,
)
from ccat_ops_db.session import session_scope
from ccat_ops_db.topology import apply_topology

pytestmark = pytest.mark.slow

OBS_UNITS = 10
FILES_PER_UNIT = 10


def _ccat() -> list[str]:
    ccat = Path(sys.executable).parent / "ccat"
    return [str(ccat)] if ccat.exists() else [sys.executable, "-m", "ccat_dagster.cli"]


def _file_observations(url: str, root: Path) -> int:
    files = simulate_instrument(
        root / "ccat" / "src",
        n_obs_units=OBS_UNITS,
        modules=("pcam_280ghz",),
        files_per_unit=FILES_PER_UNIT,
        min_size=1_000,
        max_size=20_000,
        seed=8,
    )
    with session_scope(url) as session:
        for unit in sorted({f.obs_unit for f in files}):
            paths = [f.path for f in files if f.obs_unit == unit]
            register_raw_data_files(session, "ccat/primecam_raw_data", unit, "pcam_280ghz", paths)
    return len(files)


def test_two_run_until_idle_at_once_package_and_archive_everything_once(ops_db_url, tmp_path):
    with session_scope(ops_db_url) as session:
        # one package per bundle: ten bundles to route, round robin over both archives
        apply_topology(
            session, real_topology(tmp_path, policy={"data_transfer_package_max_bytes": 1})
        )
    n_files = _file_observations(ops_db_url, tmp_path)

    runs = []
    for name in ("first", "second"):
        env = {
            **os.environ,
            "CCAT_OPS_DB_URL": ops_db_url,
            "CCAT_HOME": str(tmp_path / name),
            "DAGSTER_HOME": str(tmp_path / name / "dagster_home"),
        }
        env.pop("CCAT_DEBUG", None)
        log = (tmp_path / f"{name}.log").open("w")
        runs.append(
            (
                subprocess.Popen(
                    [*_ccat(), "run-until-idle"], env=env, stdout=log, stderr=subprocess.STDOUT
                ),
                log,
            )
        )
    for proc, log in runs:
        proc.wait(timeout=1800)
        log.close()
    logs = {
        name: (tmp_path / f"{name}.log").read_text(errors="replace") for name in ("first", "second")
    }
    for (proc, _), (name, text) in zip(runs, logs.items(), strict=True):
        assert proc.returncode == 0, f"{name} run-until-idle failed:\n{text[-4000:]}"

    with session_scope(ops_db_url) as session:
        packages = session.scalars(select(RawDataPackage)).all()
        files = session.scalars(select(RawDataFile)).all()
        assert len(files) == n_files == OBS_UNITS * FILES_PER_UNIT
        assert len(packages) == OBS_UNITS, "one package per obs unit x module"
        per_package = Counter(f.raw_data_package_id for f in files)
        assert all(f.raw_data_package_id is not None for f in files), "every file packaged"
        assert all(p.file_count == per_package[p.id] == FILES_PER_UNIT for p in packages)
        assert all(p.state == PackageState.ARCHIVED for p in packages)
        assert packages_missing_from_ltas(session) == []
        lta_copies = Counter(
            (c.raw_data_package_id, c.data_location_id)
            for c in session.scalars(select(RawDataPackagePhysicalCopy))
            if c.data_location.location_type == LocationType.LONG_TERM_ARCHIVE
        )
        assert len(lta_copies) == 2 * OBS_UNITS
        assert set(lta_copies.values()) == {1}
        archived = session.scalars(select(LongTermArchiveTransfer)).all()
        assert len(archived) == 2 * OBS_UNITS, "each package archived in each LTA once"
        for copy in session.scalars(select(RawDataPackagePhysicalCopy)):
            if copy.data_location.location_type == LocationType.LONG_TERM_ARCHIVE:
                assert copy.status == PhysicalCopyStatus.PRESENT
                assert copy.verified_at
        bundles = session.scalars(select(DataTransferPackage)).all()
        assert len(bundles) == OBS_UNITS, "each package bundled once"
        for dtp in bundles:
            assert len(dtp.raw_data_packages) == 1
            sites = Counter(t.destination_location.site.short_name for t in dtp.data_transfers)
            assert sites == {"cologne": 1, "us": 1}, f"{dtp.name}: routed {dict(sites)}"
        primaries = session.scalars(
            select(DataTransfer).where(DataTransfer.route_kind == "primary")
        ).all()
        assert len(primaries) == OBS_UNITS
