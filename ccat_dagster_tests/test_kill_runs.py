"""Bug: a ``kill -9`` of ``ccat run-until-idle`` left its Dagster run STARTED for good, the
sensors kept its packages busy and the next run reported idle with work PENDING. Here the real
command, in a process of its own, is killed at seeded random moments 20 times in a row, each soon
after it started executing runs (new raw data is filed before most attempts, so the kills land
mid-stage), then run to idle once more: every package is ARCHIVED in both LTAs with matching
bytes, no run is left in flight, no deletion claim and no temporary is left, and the telescope
is cleaned. Three sites on local disks, the ops DB on SQLite and on PostgreSQL.

The commands are forked from the fault harness's fork server (``faults/zygote.py``), which has
imported ``ccat`` once: each attempt would otherwise begin with seconds of imports, 21 times per
database. A forked command is the whole command all the same, and its SIGKILL takes its session."""

from __future__ import annotations

import hashlib
import os
import random
import time

import pytest
from dagster import DagsterInstance, RunsFilter
from sqlalchemy import select

from ccat_dagster.instance import write_instance_config
from ccat_dagster.lifecycle.summary import packages_missing_from_ltas
from ccat_dagster.run_health import LIVE_STATUSES, OWNER_PID_TAG
from ccat_dagster.runner import open_instance
from ccat_dagster.storage.local import LocalDiskStorage
from ccat_dagster_tests.deployment_support import wait_until
from ccat_dagster_tests.faults.launcher import Command, Zygote
from ccat_dagster_tests.pipeline_support import copy_statuses, file_simulated_data, real_topology
from ccat_ops_db.models import (
    DataLocation,
    DiskDataLocation,
    LocationType,
    PackageState,
    PhysicalCopy,
    PhysicalCopyStatus,
    RawDataFile,
    RawDataPackage,
    RawDataPackagePhysicalCopy,
)
from ccat_ops_db.session import session_scope
from ccat_ops_db.topology import apply_topology

pytestmark = pytest.mark.slow

KILLS = 20
SEED = 20261130
FINAL_TIMEOUT = 900
S = PhysicalCopyStatus


def _executing(instance: DagsterInstance, command: Command) -> bool:
    """True once the command has created a run (or has ended)."""
    if not command.running():
        return True
    return bool(instance.get_runs(RunsFilter(tags={OWNER_PID_TAG: str(command.pid)}), limit=1))


def test_twenty_kills_in_a_row_then_everything_converges(ops_db_url, tmp_path):
    root = tmp_path / "sites"
    topology = real_topology(root, policy={"retention_period_minutes": 0})
    with session_scope(ops_db_url) as session:
        apply_topology(session, topology)
    home = tmp_path / "dagster_home"
    write_instance_config(home)
    env = {
        **os.environ,
        "CCAT_OPS_DB_URL": ops_db_url,
        "CCAT_HOME": str(tmp_path / "ccat_home"),
        "DAGSTER_HOME": str(home),
        "CCAT_TEMP_SWEEP_MARGIN_SECONDS": "0",
    }
    log = tmp_path / "run-until-idle.log"
    rng = random.Random(SEED)
    filed = 0
    zygote = Zygote(tmp_path)
    try:
        with open_instance(home) as instance:
            for attempt in range(KILLS):
                if attempt % 4 != 3:  # every fourth attempt files nothing: the cleanup is hit too
                    with session_scope(ops_db_url) as session:
                        file_simulated_data(
                            session,
                            root,
                            n_obs_units=1,
                            files_per_unit=2,
                            max_size=600_000,
                            seed=attempt,
                        )
                    filed += 1
                command = zygote.start(["run-until-idle"], env, log)
                # once it executes runs (or has ended), at a seeded random moment
                wait_until(
                    lambda command=command: _executing(instance, command),
                    timeout=120,
                    what="run-until-idle to start a run",
                    interval=0.2,
                )
                time.sleep(rng.uniform(0.0, 4.0))
                command.kill()  # SIGKILL, the command and all it started
        returncode = zygote.run(["run-until-idle"], env, log, timeout=FINAL_TIMEOUT)
    finally:
        zygote.close()
    output = log.read_text(errors="replace")
    assert returncode in (0, 1), output[-5000:]
    assert "dead run marked failed" in output, "runs of killed commands were recovered"

    with open_instance(home) as instance:
        in_flight = instance.get_runs(RunsFilter(statuses=LIVE_STATUSES))
        assert in_flight == [], [(r.job_name, r.status) for r in in_flight]

    with session_scope(ops_db_url) as session:
        assert packages_missing_from_ltas(session) == []
        packages = session.scalars(select(RawDataPackage)).all()
        files = session.scalars(select(RawDataFile)).all()
        assert len(files) == filed * 2 * 2  # obs units x 2 modules x 2 files
        assert all(f.raw_data_package_id is not None for f in files)
        assert packages
        assert all(p.state == PackageState.ARCHIVED for p in packages)
        for package in packages:
            for site in ("cologne", "us"):
                data = (root / site / "lta" / package.relative_path).read_bytes()
                assert hashlib.sha256(data).hexdigest() == package.checksum
        claimed = session.scalars(
            select(PhysicalCopy).where(
                PhysicalCopy.status.in_([S.DELETION_SCHEDULED, S.DELETION_IN_PROGRESS])
            )
        ).all()
        assert claimed == [], [(c.id, c.status, c.claimed_by) for c in claimed]
        # the telescope is cleaned: its buffer copies and the raw files at the source are gone
        for location_type in (LocationType.BUFFER, LocationType.SOURCE):
            statuses = copy_statuses(ops_db_url, "ccat", location_type)
            assert statuses, (location_type, statuses)
            assert set(statuses) == {S.DELETED}, (location_type, statuses)
        lta_copies = session.scalars(
            select(RawDataPackagePhysicalCopy)
            .join(DataLocation, DataLocation.id == RawDataPackagePhysicalCopy.data_location_id)
            .where(DataLocation.location_type == LocationType.LONG_TERM_ARCHIVE)
        ).all()
        assert {c.status for c in lta_copies} == {S.PRESENT}
        assert len(lta_copies) == 2 * len(packages)
        leftovers = [
            f"{loc.site.short_name}/{loc.name}: {t.describe()}"
            for loc in session.scalars(select(DiskDataLocation))
            for t in LocalDiskStorage(loc.name, loc.path).list_temporaries()
        ]
        assert leftovers == []
