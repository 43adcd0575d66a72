"""Staging for processing on SQLite and PostgreSQL, with real package tars in disk LTAs: jobs are
validated before anything is written, packages are streamed from the nearest verified LTA copy
and unpacked verified, shared between jobs without a second fetch, restored after a mistake, and
cleaned up only by the deletion rules once no live job uses them."""

from __future__ import annotations

from datetime import timedelta
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy import func, select

from ccat_dagster.lifecycle.archive.verification import make_storage_lta_verifier
from ccat_dagster.lifecycle.deletion.cycle import run_cleanup_cycle
from ccat_dagster.lifecycle.staging import execution as staging
from ccat_dagster.lifecycle.staging import requests as jobs
from ccat_dagster.packaging import PackageMember, write_package
from ccat_dagster_tests import factories as f
from ccat_ops_db.models import (
    AuditLog,
    ExecutedObsUnit,
    PackageState,
    PhysicalCopyStatus,
    RawDataFilePhysicalCopy,
    RawDataPackage,
    RawDataPackagePhysicalCopy,
    StagingJob,
    Status,
)

S = PhysicalCopyStatus


class RecordingStorages:
    """``storage_for`` over the local disks that counts package reads per location."""

    def __init__(self) -> None:
        self.reads: list[tuple[str, str]] = []

    def __call__(self, location):
        storage = f.local_storage_for(location)
        original = storage.open_read
        name = f"{location.site.short_name}/{location.name}"

        def open_read(key):
            self.reads.append((name, key))
            return original(key)

        storage.open_read = open_read
        return storage

    def reads_from(self, location) -> int:
        return sum(1 for n, _ in self.reads if n == f"{location.site.short_name}/{location.name}")


@pytest.fixture
def topo(session, tmp_path):
    t = f.make_topology(session, tmp_path, lta_sites=("cologne", "us"))
    session.commit()
    return t


def archived(topo, *, sites=("cologne",), n_files: int = 3, name: str | None = None):
    """A package filed at the SOURCE whose real tar is PRESENT and verified in ``sites``' LTAs."""
    pkg = f.file_raw_data_package(topo, name, n_files=n_files)
    src = f.local_storage_for(topo.source)
    members = [
        PackageMember(
            arcname=r.relative_path,
            size=r.size,
            checksum=r.checksum,
            algorithm=r.checksum_algorithm,
            open=partial(src.open_read, r.relative_path),
        )
        for r in pkg.raw_data_files
    ]
    for site in sites:
        with f.local_storage_for(topo.lta(site)).open_write(pkg.relative_path) as out:
            result = write_package(out, members, kind="raw_data_package", name=pkg.name)
        pkg.size, pkg.checksum = result.size, result.checksum
        f.add_package_copy(topo, pkg, topo.lta(site), verified=True, write=False)
    if sites:
        pkg.state = PackageState.ARCHIVED
    topo.session.commit()
    return pkg


def corrupt_member(lta, pkg) -> None:
    """Flip one byte inside the content of the package's last file in the archived tar."""
    tar = Path(lta.path) / pkg.relative_path
    data = bytearray(tar.read_bytes())
    last = pkg.raw_data_files[-1]
    offset = data.find((Path(pkg.source_location.path) / last.relative_path).read_bytes())
    assert offset > 0
    data[offset + 3] ^= 0xFF
    tar.write_bytes(bytes(data))


def stage_all(session, topo, storages=None):
    storages = storages or RecordingStorages()
    outcomes = []
    for pid, lid in staging.staging_candidates(session, topo.sites["cologne"]):
        outcomes.append(
            staging.stage_raw_data_package(
                session,
                session.get(RawDataPackage, pid),
                topo.processing,
                storage_for=storages,
                run_id="test-run",
            )
        )
        assert lid == topo.processing.id
    return outcomes


def processing_file(topo, rdf) -> Path:
    return Path(topo.processing.path) / rdf.relative_path


def file_copy(session, topo, rdf):
    return session.scalars(
        select(RawDataFilePhysicalCopy).where(
            RawDataFilePhysicalCopy.raw_data_file_id == rdf.id,
            RawDataFilePhysicalCopy.data_location_id == topo.processing.id,
        )
    ).one_or_none()


def package_copy(session, topo, pkg):
    return session.scalars(
        select(RawDataPackagePhysicalCopy).where(
            RawDataPackagePhysicalCopy.raw_data_package_id == pkg.id,
            RawDataPackagePhysicalCopy.data_location_id == topo.processing.id,
        )
    ).one_or_none()


def cleanup(session, *, now=None):
    return run_cleanup_cycle(
        session,
        storage_for=f.local_storage_for,
        verify_lta_copy=make_storage_lta_verifier(f.local_storage_for),
        run_id="cleanup-test",
        now=now,
    )


def job_trail(session, job) -> list[str]:
    return [
        a.new_status
        for a in session.scalars(
            select(AuditLog)
            .where(AuditLog.entity_type == "staging_job", AuditLog.entity_id == job.id)
            .order_by(AuditLog.id)
        )
    ]


# --------------------------------------------------------------------------- staging


def test_staging_unpacks_verified_files_and_marks_the_package_staged(session, topo):
    pkg = archived(topo)
    job = jobs.create_staging_job(
        session, location="cologne/processing", packages=[pkg.name], requested_by="alice"
    )
    assert job.status == Status.PENDING
    assert job.active

    [outcome] = stage_all(session, topo)

    assert outcome.ok, outcome.error
    assert not outcome.skipped, outcome.error
    assert outcome.metadata["source"] == "cologne/lta"
    assert outcome.metadata["file_count"] == 3
    source_root = Path(topo.source.path)
    for rdf in pkg.raw_data_files:
        assert (
            processing_file(topo, rdf).read_bytes()
            == (source_root / rdf.relative_path).read_bytes()
        )
        copy = file_copy(session, topo, rdf)
        assert copy.status == S.PRESENT
        assert copy.verified_at is not None
        assert copy.checksum == rdf.checksum
    assert package_copy(session, topo, pkg).status == S.STAGED
    assert not (Path(topo.processing.path) / pkg.relative_path).exists(), "no tar is kept"
    session.refresh(job)
    assert job.status == Status.COMPLETED
    assert job.completed_at is not None
    assert job_trail(session, job) == ["PENDING", "IN_PROGRESS", "COMPLETED"]
    assert staging.staging_candidates(session, topo.sites["cologne"]) == []


def test_obs_unit_selects_all_its_packages(session, topo):
    pkg = archived(topo)
    job = jobs.create_staging_job(
        session, location="processing", obs_units=[pkg.executed_obs_unit.name]
    )
    assert [p.name for p in job.raw_data_packages] == [pkg.name]
    by_id = jobs.create_staging_job(
        session, location="processing", obs_units=[str(pkg.executed_obs_unit_id)]
    )
    assert [p.name for p in by_id.raw_data_packages] == [pkg.name]


def test_second_job_shares_the_files_without_a_second_fetch(session, topo):
    pkg = archived(topo)
    storages = RecordingStorages()
    first = jobs.create_staging_job(session, location="processing", packages=[pkg.name])
    stage_all(session, topo, storages)
    assert storages.reads_from(topo.lta("cologne")) == 1

    second = jobs.create_staging_job(session, location="processing", packages=[pkg.name])
    [outcome] = stage_all(session, topo, storages)

    assert outcome.ok
    assert outcome.skipped
    assert storages.reads_from(topo.lta("cologne")) == 1, "shared, not fetched again"
    session.refresh(first)
    session.refresh(second)
    assert first.status == second.status == Status.COMPLETED


def test_same_site_archive_first_then_any_and_a_bad_copy_falls_back(session, topo):
    both = archived(topo, sites=("cologne", "us"))
    us_only = archived(topo, sites=("us",))
    jobs.create_staging_job(session, location="processing", packages=[both.name, us_only.name])
    # the same-site archive copy of `both` is corrupt: the us copy is used instead
    corrupt_member(topo.lta("cologne"), both)

    outcomes = {o.partition: o for o in stage_all(session, topo)}

    assert outcomes[both.name].ok
    assert outcomes[both.name].metadata["source"] == "us/lta"
    assert outcomes[us_only.name].ok
    assert outcomes[us_only.name].metadata["source"] == "us/lta"
    assert staging.lta_sources(session, both, topo.processing)[0] == topo.lta("cologne")


def test_corrupt_archive_copy_fails_the_job_after_retries_and_writes_nothing(session, topo):
    pkg = archived(topo)
    corrupt_member(topo.lta("cologne"), pkg)
    job = jobs.create_staging_job(session, location="processing", packages=[pkg.name])

    for attempt in range(1, 4):
        [outcome] = stage_all(session, topo)
        assert not outcome.ok, attempt
        assert not outcome.permanent, attempt
        session.refresh(job)
        assert job.status == Status.PENDING
    [outcome] = stage_all(session, topo)

    assert not outcome.ok
    assert outcome.permanent
    session.refresh(job)
    assert job.status == Status.FAILED
    assert pkg.name in job.failure_reason
    assert "checksum" in job.failure_reason or "does not match" in job.failure_reason
    assert staging.staging_candidates(session, topo.sites["cologne"]) == []
    assert all(not processing_file(topo, r).exists() for r in pkg.raw_data_files)
    assert package_copy(session, topo, pkg) is None
    assert pkg.state == PackageState.ARCHIVED, "a staging failure does not touch the archive"


def test_a_different_file_in_the_way_is_never_overwritten(session, topo):
    pkg = archived(topo)
    rdf = pkg.raw_data_files[0]
    path = processing_file(topo, rdf)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"a scientist's own file")
    jobs.create_staging_job(session, location="processing", packages=[pkg.name])

    [outcome] = stage_all(session, topo)

    assert not outcome.ok
    assert "nothing was overwritten" in outcome.error
    assert path.read_bytes() == b"a scientist's own file"


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"packages": ["no_such_package"]}, "unknown raw data package"),
        ({"obs_units": ["no_such_obs_unit"]}, "unknown executed obs unit"),
        ({"obs_units": ["999999"]}, "unknown executed obs unit"),
        ({"location": "cologne/lta"}, "not PROCESSING"),
        ({"location": "cologne/buffer"}, "not PROCESSING"),
        ({"location": "nowhere"}, "unknown location"),
        ({"packages": ["@unarchived"]}, "nothing archived yet"),
        ({"obs_units": ["@unarchived_obs"]}, "nothing archived yet"),
        ({"obs_units": ["@unpackaged_obs"]}, "no RawDataPackage yet"),
        ({"packages": []}, "at least one package"),
        ({"retention_days": -1}, "must be positive"),
    ],
)
def test_bad_request_is_refused_and_creates_no_job(session, topo, kwargs, message):
    good = archived(topo)
    waiting = archived(topo, sites=())
    empty_unit = ExecutedObsUnit(name="obs_without_packages")
    session.add(empty_unit)
    session.commit()
    aliases = {
        "@unarchived": waiting.name,
        "@unarchived_obs": waiting.executed_obs_unit.name,
        "@unpackaged_obs": empty_unit.name,
    }
    request = {"location": "cologne/processing", "packages": [good.name]}
    request.update(kwargs)
    for key in ("packages", "obs_units"):
        if key in request:
            request[key] = [aliases.get(v, v) for v in request[key]]
    if "obs_units" in kwargs:
        request["packages"] = []

    with pytest.raises(jobs.StagingError, match=message):
        jobs.create_staging_job(session, **request)
    session.rollback()
    assert session.scalar(select(func.count()).select_from(StagingJob)) == 0


def test_retention_days_become_minutes_and_default_to_the_policy(session, topo):
    pkg = archived(topo)
    job = jobs.create_staging_job(
        session, location="processing", packages=[pkg.name], retention_days=2
    )
    assert job.retention_period_minutes == 2 * 24 * 60
    default = jobs.create_staging_job(session, location="processing", packages=[pkg.name])
    assert default.retention_period_minutes == 43_200


def test_complete_sets_inactive_once_and_unknown_id_is_an_error(session, topo):
    pkg = archived(topo)
    job = jobs.create_staging_job(session, location="processing", packages=[pkg.name])
    assert jobs.complete_staging_job(session, job.id)[1] is True
    assert jobs.complete_staging_job(session, job.id)[1] is False
    session.refresh(job)
    assert job.active is False
    assert job_trail(session, job)[-1] == "INACTIVE"
    with pytest.raises(jobs.StagingError, match="no staging job 4242"):
        jobs.complete_staging_job(session, 4242)


# --------------------------------------------------------------------------- cleanup, recovery


def test_files_stay_while_any_job_is_active_and_go_when_all_are_complete(session, topo):
    pkg = archived(topo)
    first = jobs.create_staging_job(session, location="processing", packages=[pkg.name])
    second = jobs.create_staging_job(session, location="processing", packages=[pkg.name])
    stage_all(session, topo)

    for _ in range(2):
        cleanup(session, now=f.minutes_ago(-60))  # forced cycles, an hour in the future
    jobs.complete_staging_job(session, first.id)
    cleanup(session)
    assert all(processing_file(topo, r).exists() for r in pkg.raw_data_files)
    assert package_copy(session, topo, pkg).status == S.STAGED

    jobs.complete_staging_job(session, second.id)
    report = cleanup(session)

    assert report.ok, report.errors
    assert all(not processing_file(topo, r).exists() for r in pkg.raw_data_files)
    session.expire_all()
    assert all(file_copy(session, topo, r).status == S.DELETED for r in pkg.raw_data_files)
    assert package_copy(session, topo, pkg).status == S.DELETED
    # the archive is untouched
    assert (Path(topo.lta("cologne").path) / pkg.relative_path).exists()


def test_an_active_job_keeps_its_files_after_its_retention_and_complete_releases_them(
    session, topo
):
    """Bug: the files of an active job were deleted once its retention had passed. The rule is
    that staged files stay while any job using them is active, whatever the retention."""
    pkg = archived(topo)
    job = jobs.create_staging_job(
        session, location="processing", packages=[pkg.name], retention_days=1
    )
    stage_all(session, topo)
    after_retention = jobs.retention_ends_at(job) + timedelta(days=30)

    report = cleanup(session, now=after_retention)

    assert report.ok, report.errors
    assert all(processing_file(topo, r).exists() for r in pkg.raw_data_files)
    session.expire_all()
    assert all(file_copy(session, topo, r).status == S.PRESENT for r in pkg.raw_data_files)
    assert package_copy(session, topo, pkg).status == S.STAGED

    jobs.complete_staging_job(session, job.id)
    report = cleanup(session, now=after_retention)

    assert report.ok, report.errors
    assert all(not processing_file(topo, r).exists() for r in pkg.raw_data_files)
    session.expire_all()
    assert package_copy(session, topo, pkg).status == S.DELETED


def test_new_job_restores_files_deleted_by_hand(session, topo):
    pkg = archived(topo)
    jobs.create_staging_job(session, location="processing", packages=[pkg.name])
    storages = RecordingStorages()
    stage_all(session, topo, storages)
    lost, kept = pkg.raw_data_files[0], pkg.raw_data_files[1]
    processing_file(topo, lost).unlink()  # a mistake: the catalogue still says PRESENT

    jobs.create_staging_job(session, location="processing", packages=[pkg.name])
    [outcome] = stage_all(session, topo, storages)

    assert outcome.ok
    assert not outcome.skipped
    assert outcome.metadata["files_restored"] == 1
    assert storages.reads_from(topo.lta("cologne")) == 2
    assert (
        processing_file(topo, lost).read_bytes()
        == (Path(topo.source.path) / lost.relative_path).read_bytes()
    )
    assert processing_file(topo, kept).exists()
    restored = session.scalars(
        select(AuditLog).where(AuditLog.reason.like("restored from %"))
    ).all()
    assert [a.entity_id for a in restored] == [file_copy(session, topo, lost).id]


def test_new_job_after_cleanup_revives_the_same_copy_rows(session, topo):
    pkg = archived(topo)
    job = jobs.create_staging_job(session, location="processing", packages=[pkg.name])
    stage_all(session, topo)
    ids = {r.id: file_copy(session, topo, r).id for r in pkg.raw_data_files}
    jobs.complete_staging_job(session, job.id)
    cleanup(session)
    session.expire_all()
    assert package_copy(session, topo, pkg).status == S.DELETED

    again = jobs.create_staging_job(session, location="processing", packages=[pkg.name])
    [outcome] = stage_all(session, topo)

    assert outcome.ok
    assert not outcome.skipped
    session.expire_all()
    for rdf in pkg.raw_data_files:
        copy = file_copy(session, topo, rdf)
        assert copy.id == ids[rdf.id]
        assert copy.status == S.PRESENT
        assert copy.deleted_at is None
        assert processing_file(topo, rdf).exists()
    assert package_copy(session, topo, pkg).status == S.STAGED
    session.refresh(again)
    assert again.status == Status.COMPLETED


def test_staging_waits_while_a_cleanup_run_is_deleting_the_files(session, topo):
    pkg = archived(topo)
    job = jobs.create_staging_job(session, location="processing", packages=[pkg.name])
    stage_all(session, topo)
    jobs.complete_staging_job(session, job.id)
    claimed = file_copy(session, topo, pkg.raw_data_files[0])
    claimed.status, claimed.claimed_by = S.DELETION_IN_PROGRESS, "a-cleanup-run"
    session.commit()

    jobs.create_staging_job(session, location="processing", packages=[pkg.name])
    assert staging.staging_candidates(session, topo.sites["cologne"]) == []
    outcome = staging.stage_raw_data_package(
        session, pkg, topo.processing, storage_for=RecordingStorages()
    )
    assert not outcome.ok
    assert not outcome.permanent
    assert "cleanup run" in outcome.error

    claimed.status, claimed.claimed_by = S.DELETED, None  # that cleanup finished
    session.commit()
    assert staging.staging_candidates(session, topo.sites["cologne"]) == [
        (pkg.id, topo.processing.id)
    ]
