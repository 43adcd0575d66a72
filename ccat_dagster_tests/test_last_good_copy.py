"""The last copy of raw data outside the archives goes only after its archive copies were
re-verified live; a bad archive copy is marked, kept out of every decision and repaired.

Three sites on local disks (telescope SOURCE + buffer, two archive sites each with a buffer and a
disk LTA), two obs units archived and cleaned until the SOURCE files are DELETION_POSSIBLE.
Then one LTA copy of obs unit A rots, both LTA copies of obs unit B vanish and the retention
elapses: the issue's data-loss reproduction. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import AssetKey, DagsterEventType, EventRecordsFilter
from sqlalchemy import select
from typer.testing import CliRunner

from ccat_dagster.cli import app
from ccat_dagster.lifecycle.archive.verification import make_storage_lta_verifier
from ccat_dagster.lifecycle.deletion.cycle import run_cleanup_cycle
from ccat_dagster.storage.factory import StorageRegistry
from ccat_dagster_tests.dagster_instance import instance_for_test
from ccat_dagster_tests.pipeline_support import (
    drive,
    let_retention_elapse,
    real_topology,
    setup_pipeline,
    sha256,
    tar_members,
)
from ccat_ops_db.models import (
    AuditLog,
    DataLocation,
    ExecutedObsUnit,
    PackageState,
    PhysicalCopy,
    PhysicalCopyStatus,
    RawDataFile,
    RawDataFilePhysicalCopy,
    RawDataPackage,
    RawDataPackagePhysicalCopy,
    Site,
)
from ccat_ops_db.session import session_scope

pytestmark = pytest.mark.slow

S = PhysicalCopyStatus
LTAS = ("cologne", "us")


def _flip(path: Path, offset: int = 700) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _packages_of(session, obs_unit: str) -> list[RawDataPackage]:
    return list(
        session.scalars(
            select(RawDataPackage)
            .join(ExecutedObsUnit, ExecutedObsUnit.id == RawDataPackage.executed_obs_unit_id)
            .where(ExecutedObsUnit.name == obs_unit)
            .order_by(RawDataPackage.id)
        )
    )


def _source_copies(session) -> list[RawDataFilePhysicalCopy]:
    return list(
        session.scalars(
            select(RawDataFilePhysicalCopy)
            .join(DataLocation, DataLocation.id == RawDataFilePhysicalCopy.data_location_id)
            .where(DataLocation.name == "primecam_raw_data")
        )
    )


def _lta_copy(session, package: RawDataPackage, site: str) -> RawDataPackagePhysicalCopy:
    return session.scalar(
        select(RawDataPackagePhysicalCopy)
        .join(DataLocation, DataLocation.id == RawDataPackagePhysicalCopy.data_location_id)
        .join(Site, Site.id == DataLocation.site_id)
        .where(
            RawDataPackagePhysicalCopy.raw_data_package_id == package.id,
            Site.short_name == site,
            DataLocation.name == "lta",
        )
    )


@pytest.fixture
def archived(ops_db_url, tmp_path):
    """Two obs units (x two modules) archived in both LTAs; SOURCE files DELETION_POSSIBLE."""
    topology = real_topology(
        tmp_path,
        policy={"retention_period_minutes": 5, "data_transfer_package_max_bytes": 1},
    )
    files = setup_pipeline(
        ops_db_url, topology, tmp_path, n_obs_units=2, files_per_unit=3, max_size=60_000
    )
    with instance_for_test() as instance:
        report = drive(ops_db_url, instance)
        assert not report.failed_runs
    with session_scope(ops_db_url) as session:
        packages = session.scalars(select(RawDataPackage)).all()
        assert len(packages) == 4
        assert all(p.state == PackageState.ARCHIVED for p in packages)
        statuses = {c.status for c in _source_copies(session)}
        assert statuses == {S.DELETION_POSSIBLE}
        obs_units = sorted({f.obs_unit for f in files})
    return ops_db_url, tmp_path, files, obs_units


def _corrupt(url: str, root: Path, obs_a: str, obs_b: str) -> tuple[list[str], list[str]]:
    """One LTA copy of every package of A rots; both LTA copies of every package of B vanish."""
    with session_scope(url) as session:
        pkgs_a = [p.relative_path for p in _packages_of(session, obs_a)]
        pkgs_b = [p.relative_path for p in _packages_of(session, obs_b)]
    for key in pkgs_a:
        _flip(root / "us" / "lta" / key)
    for key in pkgs_b:
        for site in LTAS:
            (root / site / "lta" / key).unlink()
    return pkgs_a, pkgs_b


def _cleanup_once(url: str, run_id: str):
    with session_scope(url) as session, StorageRegistry(local_site="ccat") as storages:
        return run_cleanup_cycle(
            session,
            storage_for=storages.get,
            verify_lta_copy=make_storage_lta_verifier(storages.get),
            run_id=run_id,
        )


def test_source_files_kept_and_lta_copies_marked_when_archive_copies_rot(archived):
    url, root, files, (obs_a, obs_b) = archived
    _corrupt(url, root, obs_a, obs_b)
    let_retention_elapse(url)

    report = _cleanup_once(url, "cleanup-after-rot")

    with session_scope(url) as session:
        # not one SOURCE file went: every package's archive copies failed their live check
        assert {c.status for c in _source_copies(session)} == {S.DELETION_POSSIBLE}
        for f in files:
            assert f.path.exists()
        # the catalogue no longer claims what storage does not hold
        for package in _packages_of(session, obs_a):
            assert _lta_copy(session, package, "us").status == S.BAD
            assert _lta_copy(session, package, "cologne").status == S.PRESENT
        for package in _packages_of(session, obs_b):
            for site in LTAS:
                assert _lta_copy(session, package, site).status == S.LOST
        # evidence: the refused deletions and the marking are in the audit log
        marked = session.scalars(
            select(AuditLog).where(AuditLog.new_status.in_([S.BAD.value, S.LOST.value]))
        ).all()
        assert len(marked) == 2 + 4
        assert all(a.evidence and a.evidence.get("ok") is False for a in marked)
    assert report.errors, "the operator is told: the cleanup run fails with the reasons"
    assert report.deleted == 0

    # ccat status says so
    result = CliRunner().invoke(app, ["status"], env={"CCAT_OPS_DB_URL": url})
    assert result.exit_code == 0, result.output
    assert "BAD" in result.output
    assert "LOST" in result.output
    assert "repair" in result.output.lower()

    # a second cycle does not try again (the rules no longer allow it): no spinning
    again = _cleanup_once(url, "cleanup-again")
    assert again.deleted == 0
    assert not again.errors


def test_bad_and_lost_archive_copies_are_repaired_before_the_source_goes(archived):
    url, root, files, (obs_a, obs_b) = archived
    _corrupt(url, root, obs_a, obs_b)
    let_retention_elapse(url)

    with instance_for_test() as instance:
        drive(url, instance, max_passes=60)
        let_retention_elapse(url)
        report = drive(url, instance, max_passes=60)
        assert report.passes < 60

        # the UI: failed lta_presence evaluations for the partitions found bad, passed ones
        # again after the repair
        checks = instance.get_event_records(
            EventRecordsFilter(event_type=DagsterEventType.ASSET_CHECK_EVALUATION)
        )
        evaluations = [r.event_log_entry.dagster_event.event_specific_data for r in checks]
        failed = {(tuple(e.asset_key.path), e.partition) for e in evaluations if not e.passed}
        assert failed, "the failed live checks are visible on the LTA assets"
        assert all(path[0] in LTAS for path, _ in failed)
        us_key = AssetKey(["us", "lta", "raw_data_package"])
        assert instance.get_materialized_partitions(us_key)

    with session_scope(url) as session:
        by_path = {f.relative_path: f for f in session.scalars(select(RawDataFile))}
        seen: set[str] = set()
        for package in session.scalars(select(RawDataPackage)):
            for site in LTAS:
                copy = _lta_copy(session, package, site)
                assert copy.status == S.PRESENT, f"{package.name} at {site}/lta: {copy.status}"
                data = (root / site / "lta" / package.relative_path).read_bytes()
                assert sha256(data) == package.checksum
                for name, content in tar_members(data).items():
                    if name in by_path:
                        assert sha256(content) == by_path[name].checksum
                        seen.add(name)
        assert seen == set(by_path), "every filed file is safe in every archive"

        # the SOURCE files of a package went only after its repaired archive copies were back
        repaired = {}
        for a in session.scalars(
            select(AuditLog).where(
                AuditLog.entity_type == "physical_copy",
                AuditLog.old_status.in_([S.BAD.value, S.LOST.value]),
                AuditLog.new_status == S.PRESENT.value,
            )
        ):
            package_id = session.get(PhysicalCopy, a.entity_id).raw_data_package_id
            repaired[package_id] = max(repaired.get(package_id, 0), a.id)
        assert len(repaired) == 4, "every package had an archive copy repaired"
        deletions = session.scalars(
            select(AuditLog).where(
                AuditLog.new_status == S.DELETED.value,
                AuditLog.reason == "process_deletion_possible_raw_data_files",
            )
        ).all()
        assert len(deletions) == len(files)
        for a in deletions:
            file_copy = session.get(RawDataFilePhysicalCopy, a.entity_id)
            assert a.id > repaired[file_copy.raw_data_file.raw_data_package_id]
            checks = a.evidence["lta_verification"]
            assert {c["location"] for c in checks} == {"cologne/lta", "us/lta"}
            assert all(c["ok"] for c in checks)
            # the raw files are where the data came from: always checked, last copy or not
            assert isinstance(a.evidence["last_copy_outside_lta"], bool)

    # and the invariant, read from the storage itself
    result = CliRunner().invoke(app, ["verify"], env={"CCAT_OPS_DB_URL": url})
    assert result.exit_code == 0, result.output


def test_a_source_file_changed_after_it_was_filed_is_never_deleted(archived):
    """The instrument wrote more into a file after it was filed (a writer that paused longer
    than the ingest's settle time): the archives hold the old bytes only, so the SOURCE file
    is the one copy of the new ones and must stay."""
    url, root, files, _obs_units = archived
    grown = files[0].path
    with open(grown, "ab") as out:
        out.write(b"written after it was filed")
    content = grown.read_bytes()
    let_retention_elapse(url)

    report = _cleanup_once(url, "cleanup-after-append")

    assert grown.read_bytes() == content, "the only copy of the appended bytes is kept"
    assert all(f.path.exists() is (f.path == grown) for f in files), "the others went"
    [failure] = report.failures
    assert "changed since it was filed" in failure.error
    with session_scope(url) as session:
        statuses = {c.raw_data_file.relative_path: c.status for c in _source_copies(session)}
    assert statuses.pop(grown.relative_to(root / "ccat" / "src").as_posix()) == S.DELETION_FAILED
    assert set(statuses.values()) == {S.DELETED}


def test_a_source_file_rewritten_in_place_after_it_was_filed_is_never_deleted(archived):
    """Same size, other bytes (an instrument that rewrites a file in place after it was filed):
    the size check cannot see it; its modification time, after its filing, sends the executor
    to read it. Written back with its filed bytes (a restore from a backup), it may go."""
    url, root, files, _obs_units = archived
    rewritten = files[1].path
    original = rewritten.read_bytes()
    content = bytearray(original)
    content[:8] = bytes(b ^ 0xFF for b in content[:8])
    rewritten.write_bytes(bytes(content))
    let_retention_elapse(url)

    report = _cleanup_once(url, "cleanup-after-rewrite")

    assert rewritten.read_bytes() == bytes(content), "the only copy of the new bytes is kept"
    assert all(f.path.exists() is (f.path == rewritten) for f in files), "the others went"
    [failure] = report.failures
    assert "rewritten since it was filed" in failure.error
    with session_scope(url) as session:
        statuses = {c.raw_data_file.relative_path: c.status for c in _source_copies(session)}
    key = rewritten.relative_to(root / "ccat" / "src").as_posix()
    assert statuses.pop(key) == S.DELETION_FAILED
    assert set(statuses.values()) == {S.DELETED}

    rewritten.write_bytes(original)  # restored: a new modification time, the filed bytes
    report = _cleanup_once(url, "cleanup-after-restore")
    assert not report.failures, report.failures
    assert not rewritten.exists(), "its bytes are the archived ones: it went"
