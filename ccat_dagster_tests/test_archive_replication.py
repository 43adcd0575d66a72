"""Replication between archives (issue 14): every archived package ends verified in every active
long-term archive, also in one that joins after everything was archived and cleaned.

Three sites on local disks (telescope SOURCE + buffer, two archive sites each with a buffer and a
disk LTA); two obs units x two modules are archived in both archives, then every buffer and the
SOURCE are cleaned by the cleanup rules. A third archive site joins through ``ccat topology
apply`` and the pipeline is driven again: no bundle and no buffer copy is left to forward, so the
new archive is backfilled from the other archives, a few packages per run. Runs on SQLite and
PostgreSQL.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from dagster import (
    AssetKey,
    DagsterRunStatus,
    RunsFilter,
)
from sqlalchemy import select
from typer.testing import CliRunner

from ccat_dagster.cli import app
from ccat_dagster.lifecycle.archive.backfill import backfill_candidates
from ccat_dagster.lifecycle.archive.repair import record_lta_check
from ccat_dagster.lifecycle.archive.verification import make_storage_lta_verifier, verify_lta_copy
from ccat_dagster.lifecycle.deletion.cycle import run_cleanup_cycle
from ccat_dagster.lifecycle.summary import packages_missing_from_ltas
from ccat_dagster.lifecycle.transfer.routing import plan_secondary_transfers
from ccat_dagster.storage.factory import StorageRegistry
from ccat_dagster_tests.dagster_instance import instance_for_test
from ccat_dagster_tests.pipeline_support import (
    drive,
    let_retention_elapse,
    real_topology,
    setup_pipeline,
    sha256,
)
from ccat_ops_db.models import (
    DataLocation,
    DataTransfer,
    DataTransferPackagePhysicalCopy,
    LocationType,
    LongTermArchiveTransfer,
    PackageState,
    PhysicalCopyStatus,
    RawDataFilePhysicalCopy,
    RawDataPackage,
    RawDataPackagePhysicalCopy,
    Site,
    Status,
)
from ccat_ops_db.session import session_scope

pytestmark = pytest.mark.slow

S = PhysicalCopyStatus
PER_RUN = 3  # lta_backfill_max_per_run: 4 packages need two archive runs at the new site
ARCHIVE_STAGE = "long_term_archive_transfer"


def _lta_copy(session, package: RawDataPackage, site: str) -> RawDataPackagePhysicalCopy | None:
    return session.scalar(
        select(RawDataPackagePhysicalCopy)
        .join(DataLocation, DataLocation.id == RawDataPackagePhysicalCopy.data_location_id)
        .join(Site, Site.id == DataLocation.site_id)
        .where(
            RawDataPackagePhysicalCopy.raw_data_package_id == package.id,
            Site.short_name == site,
            DataLocation.location_type == LocationType.LONG_TERM_ARCHIVE,
        )
    )


def _present_outside_archives(session) -> list[str]:
    """Every package tar, bundle and raw file still PRESENT (or waiting) outside the archives."""
    left = []
    for model in (RawDataPackagePhysicalCopy, DataTransferPackagePhysicalCopy):
        for copy in session.scalars(
            select(model)
            .join(DataLocation, DataLocation.id == model.data_location_id)
            .where(DataLocation.location_type != LocationType.LONG_TERM_ARCHIVE)
        ):
            if copy.status in (S.PRESENT, S.DELETION_POSSIBLE):
                left.append(f"{model.__name__} {copy.id} at {copy.data_location_id}")
    for copy in session.scalars(select(RawDataFilePhysicalCopy)):
        if copy.status in (S.PRESENT, S.DELETION_POSSIBLE):
            left.append(f"raw file copy {copy.id}: {copy.status}")
    return left


@pytest.fixture
def cleaned(ops_db_url, tmp_path):
    """Four packages archived in cologne and us; every copy outside the archives deleted."""
    topology = real_topology(
        tmp_path,
        policy={
            "retention_period_minutes": 5,
            "data_transfer_package_max_bytes": 1,
            "lta_backfill_max_per_run": PER_RUN,
        },
    )
    setup_pipeline(ops_db_url, topology, tmp_path, n_obs_units=2, files_per_unit=3, max_size=60_000)
    with instance_for_test() as instance:
        assert not drive(ops_db_url, instance).failed_runs
        let_retention_elapse(ops_db_url)
        assert not drive(ops_db_url, instance).failed_runs
    with session_scope(ops_db_url) as session:
        packages = session.scalars(select(RawDataPackage)).all()
        assert len(packages) == 4
        assert all(p.state == PackageState.ARCHIVED for p in packages)
        assert _present_outside_archives(session) == [], "everything outside the archives went"
    return ops_db_url, tmp_path, topology


def _with_third_archive_site(topology: dict, root: Path) -> dict:
    for part in ("buffer", "lta"):
        (root / "bonn" / part).mkdir(parents=True, exist_ok=True)
    bonn = {
        "short_name": "bonn",
        "name": "University of Bonn",
        "locations": [
            {"name": "buffer", "type": "BUFFER", "storage": _disk(root / "bonn" / "buffer")},
            {"name": "lta", "type": "LONG_TERM_ARCHIVE", "storage": _disk(root / "bonn" / "lta")},
        ],
    }
    return {**topology, "sites": [*topology["sites"], bonn]}


def _disk(path: Path) -> dict:
    return {"kind": "disk", "path": str(path)}


def _apply(url: str, topology: dict, root: Path) -> None:
    path = root / "topology.yaml"
    path.write_text(yaml.safe_dump(topology))
    result = CliRunner().invoke(app, ["topology", "apply", str(path)], env={"CCAT_OPS_DB_URL": url})
    assert result.exit_code == 0, result.output


def _archive_runs(instance, site: str) -> list:
    return [
        r
        for r in instance.get_runs(
            RunsFilter(tags={"ccat/site": site, "ccat/stage": ARCHIVE_STAGE})
        )
        if r.status == DagsterRunStatus.SUCCESS
    ]


def _killed_backfill(url: str) -> int:
    """What a backfill run killed in the middle of its copy leaves: its LongTermArchiveTransfer
    IN_PROGRESS, and no copy row at the archive (nothing is under the final key)."""
    with session_scope(url) as session:
        package = session.scalars(select(RawDataPackage).order_by(RawDataPackage.id)).first()
        assert package is not None
        location = {
            loc.qualified_name: loc
            for loc in session.scalars(
                select(DataLocation).where(
                    DataLocation.location_type == LocationType.LONG_TERM_ARCHIVE
                )
            )
        }
        transfer = LongTermArchiveTransfer(
            raw_data_package_id=package.id,
            origin_location_id=location["cologne/lta"].id,
            destination_location_id=location["bonn/lta"].id,
            status=Status.IN_PROGRESS,
        )
        session.add(transfer)
        session.commit()
        return transfer.id


def test_an_archive_site_added_after_everything_was_cleaned_is_backfilled(cleaned):
    url, root, topology = cleaned
    _apply(url, _with_third_archive_site(topology, root), root)
    # the new archive is empty: ccat verify lists every package as missing there
    before = CliRunner().invoke(app, ["verify", "--json"], env={"CCAT_OPS_DB_URL": url})
    assert before.exit_code != 0
    missing = json.loads(before.stdout)["violations"]
    assert len(missing) == 4
    assert {v["location"] for v in missing} == {"bonn/lta"}
    killed = _killed_backfill(url)

    with instance_for_test() as instance:
        report = drive(url, instance)
        assert not report.failed_runs

        with session_scope(url) as session:
            packages = session.scalars(select(RawDataPackage).order_by(RawDataPackage.id)).all()
            assert packages_missing_from_ltas(session) == []
            for package in packages:
                copy = _lta_copy(session, package, "bonn")
                assert copy is not None, f"{package.name} never reached bonn"
                assert copy.status == S.PRESENT
                assert copy.verified_at is not None
                data = (root / "bonn" / "lta" / package.relative_path).read_bytes()
                assert sha256(data) == package.checksum
                # copied from another archive: nothing else is left to copy from
                transfer = session.scalars(
                    select(LongTermArchiveTransfer).where(
                        LongTermArchiveTransfer.raw_data_package_id == package.id,
                        LongTermArchiveTransfer.destination_location_id == copy.data_location_id,
                    )
                ).one()
                origin = session.get_one(DataLocation, transfer.origin_location_id)
                assert origin.location_type == LocationType.LONG_TERM_ARCHIVE
                assert origin.site.short_name in ("cologne", "us")
            # no bundle went to bonn (none was left), and nothing outside the archives came back
            bonn_site = session.scalars(select(Site).where(Site.short_name == "bonn")).one()
            assert not session.scalars(
                select(DataTransfer)
                .join(DataLocation, DataLocation.id == DataTransfer.destination_location_id)
                .where(DataLocation.site_id == bonn_site.id)
            ).all()
            assert _present_outside_archives(session) == []
            names = {p.name for p in packages}
            # the killed run's transfer was taken up again, not counted as a failure
            resumed = session.get_one(LongTermArchiveTransfer, killed)
            assert resumed.status == Status.COMPLETED
            assert not resumed.retry_count

        # visible in Dagster: the new archive's partitions materialized, in rate-limited runs
        key = AssetKey(["bonn", "lta", "raw_data_package"])
        assert instance.get_materialized_partitions(key) == names
        runs = _archive_runs(instance, "bonn")
        sizes = [
            len(r.run_config["ops"][next(iter(r.run_config["ops"]))]["config"]["items"])
            for r in runs
        ]
        assert sum(sizes) == len(names)
        assert len(sizes) >= 2, sizes
        assert max(sizes) <= PER_RUN, sizes

        # a second drive finds nothing more to replicate
        assert not drive(url, instance).failed_runs
        assert _archive_runs(instance, "bonn") == runs

    result = CliRunner().invoke(app, ["verify", "--json"], env={"CCAT_OPS_DB_URL": url})
    assert result.exit_code == 0, result.output
    verified = json.loads(result.stdout)
    assert verified["violations"] == []
    assert verified["counters"]["lta_copies_expected"] == 3 * len(names)


def test_a_lost_archive_copy_is_restored_from_the_other_archive(cleaned):
    """No tar is left outside the archives: the LOST copy in us comes back from cologne."""
    url, root, _topology = cleaned
    with session_scope(url) as session, StorageRegistry(local_site="us") as storages:
        package = session.scalars(select(RawDataPackage).order_by(RawDataPackage.id)).first()
        assert package is not None
        lost = _lta_copy(session, package, "us")
        assert lost is not None
        lta = session.get_one(DataLocation, lost.data_location_id)
        (root / "us" / "lta" / package.relative_path).unlink()
        evidence = verify_lta_copy(storages.get(lta), package, prefer_stored_checksum=False)
        assert record_lta_check(session, package, lta, evidence, run_id="test") == S.LOST
        session.commit()
        package_id, lta_id = package.id, lta.id

    with instance_for_test() as instance:
        assert not drive(url, instance).failed_runs
        assert package.name in instance.get_materialized_partitions(
            AssetKey(["us", "lta", "raw_data_package"])
        )

    with session_scope(url) as session:
        package = session.get_one(RawDataPackage, package_id)
        restored = _lta_copy(session, package, "us")
        assert restored is not None
        assert restored.status == S.PRESENT
        assert restored.verified_at is not None
        data = (root / "us" / "lta" / package.relative_path).read_bytes()
        assert sha256(data) == package.checksum
        transfer = session.scalars(
            select(LongTermArchiveTransfer).where(
                LongTermArchiveTransfer.raw_data_package_id == package_id,
                LongTermArchiveTransfer.destination_location_id == lta_id,
            )
        ).one()
        origin = session.get_one(DataLocation, transfer.origin_location_id)
        assert (origin.site.short_name, origin.name) == ("cologne", "lta")
        assert _present_outside_archives(session) == []
    result = CliRunner().invoke(app, ["verify"], env={"CCAT_OPS_DB_URL": url})
    assert result.exit_code == 0, result.output


def _cleanup_at(url: str, site: str, name: str) -> None:
    with session_scope(url) as session, StorageRegistry(local_site=site) as storages:
        location = session.scalars(
            select(DataLocation)
            .join(Site, Site.id == DataLocation.site_id)
            .where(Site.short_name == site, DataLocation.name == name)
        ).one()
        report = run_cleanup_cycle(
            session,
            storage_for=storages.get,
            verify_lta_copy=make_storage_lta_verifier(storages.get),
            run_id=f"cleanup-{site}-{name}",
            location=location,
        )
        assert report.deleted, report


def _bonn_backfill(session) -> list[tuple[str, str]]:
    site = session.scalars(select(Site).where(Site.short_name == "bonn")).one()
    found = backfill_candidates(session, site, max_packages=100, max_bytes=10**12)
    return [(package.name, source.qualified_name) for package, source, _lta in found]


def _backfill_waits_for_the_bundles(url: str) -> None:
    """Every bundle lies unpacked in a buffer of cologne or us: backfill leaves every package
    to it, before its secondary route to bonn is planned and while it is under way; a package
    whose transfer to bonn FAILED is backfilled from an archive instead."""
    with session_scope(url) as session:
        assert _bonn_backfill(session) == []
        planned = plan_secondary_transfers(session, run_id="test")
        assert planned
        assert all(t.destination_location.site.short_name == "bonn" for t in planned)
        assert _bonn_backfill(session) == []
        failed = planned[0]
        failed.status = Status.FAILED
        session.commit()
        names = {p.name for p in failed.data_transfer_package.raw_data_packages}
        found = _bonn_backfill(session)
        assert {name for name, _ in found} == names
        assert {source for _, source in found} <= {"cologne/lta", "us/lta"}
        failed.status = Status.PENDING  # as `ccat retry` does
        session.commit()


def test_an_archive_site_added_while_bundles_wait_in_buffers_gets_them_by_bundle(
    ops_db_url, tmp_path
):
    """The normal path is not raced: a package whose bundle still lies in an archive site's
    buffer reaches the new site by a secondary route and is archived there from the site's own
    buffer, once. cologne's buffer was cleaned first, so the bundles cologne received by their
    primary route are left only in us's buffer, where a secondary route put them: they are
    forwarded from there (else us's copies would wait for the new site forever)."""
    url = ops_db_url
    topology = real_topology(
        tmp_path, policy={"retention_period_minutes": 5, "data_transfer_package_max_bytes": 1}
    )
    setup_pipeline(url, topology, tmp_path, n_obs_units=2, files_per_unit=3, max_size=60_000)
    with instance_for_test() as instance:
        assert not drive(url, instance, include_schedules=False).failed_runs
    _cleanup_at(url, "cologne", "buffer")
    with session_scope(url) as session:
        via_cologne = {
            t.data_transfer_package_id
            for t in session.scalars(
                select(DataTransfer).where(DataTransfer.route_kind == "primary")
            )
            if t.destination_location.site.short_name == "cologne"
        }
        assert via_cologne, "round-robin sent some bundles to cologne"
    _apply(url, _with_third_archive_site(topology, tmp_path), tmp_path)
    _backfill_waits_for_the_bundles(url)

    with instance_for_test() as instance:
        assert not drive(url, instance, include_schedules=False).failed_runs
        key = AssetKey(["bonn", "lta", "raw_data_package"])
        materialized = instance.fetch_materializations(key, limit=1000).records
        with session_scope(url) as session:
            packages = session.scalars(select(RawDataPackage)).all()
            assert packages_missing_from_ltas(session) == []
            bonn = session.scalars(select(Site).where(Site.short_name == "bonn")).one()
            for package in packages:
                copy = _lta_copy(session, package, "bonn")
                assert copy is not None
                assert copy.status == S.PRESENT
                assert copy.verified_at is not None
                transfer = session.scalars(
                    select(LongTermArchiveTransfer).where(
                        LongTermArchiveTransfer.raw_data_package_id == package.id,
                        LongTermArchiveTransfer.destination_location_id == copy.data_location_id,
                    )
                ).one()
                origin = session.get_one(DataLocation, transfer.origin_location_id)
                assert (origin.site_id, origin.location_type) == (bonn.id, LocationType.BUFFER)
            for transfer in session.scalars(
                select(DataTransfer)
                .join(DataLocation, DataLocation.id == DataTransfer.destination_location_id)
                .where(DataLocation.site_id == bonn.id)
            ):
                assert transfer.route_kind == "secondary"
                if transfer.data_transfer_package_id in via_cologne:
                    assert transfer.origin_location.site.short_name == "us"
            # one archive copy per package: each partition materialized once
            assert sorted(str(r.partition_key) for r in materialized) == sorted(
                p.name for p in packages
            )

        # and the cleanup is not wedged by the new site: every buffer empties
        assert not drive(url, instance).failed_runs
        let_retention_elapse(url)
        assert not drive(url, instance).failed_runs
    with session_scope(url) as session:
        assert _present_outside_archives(session) == []
