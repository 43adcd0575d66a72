"""Location outages (issue 10, bug 4): errors that belong to a location wait, never fail packages.

Three sites (``pipeline_support.real_topology``), the real sensors and jobs driven until idle.
Both long-term archive directories made unusable (one renamed away, one replaced by a file), an
S3 endpoint (a moto server of the test's own) stopped, the SSH host of the telescope buffer (an
sshd of the test's own) stopped, an archive disk (a tmpfs) full: the pipeline goes idle with
nothing FAILED and no retry counted, the location is shown unavailable, and once it is back a
second ``run-until-idle`` finishes the work by itself, without ``ccat retry``.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterEventType, EventRecordsFilter
from sqlalchemy import select
from typer.testing import CliRunner

from ccat_dagster.cli import app
from ccat_dagster.lifecycle.summary import packages_missing_from_ltas
from ccat_dagster_tests.dagster_instance import instance_for_test
from ccat_dagster_tests.fixtures.s3server import (
    FAKE_ENV,
    empty_and_delete_bucket,
    s3_admin_client,
    stoppable_moto_server,
)
from ccat_dagster_tests.fixtures.sshd import running_sshd
from ccat_dagster_tests.pipeline_support import (
    assert_nothing_failed_or_counted,
    availability,
    drive,
    real_topology,
    resize_tmpfs,
    setup_pipeline,
    tmpfs,
)
from ccat_ops_db.models import PackageState, RawDataPackage
from ccat_ops_db.session import session_scope

# whole pipelines through outages on real servers: minutes, not the edit loop
pytestmark = pytest.mark.slow


def test_lta_outage_waits_and_resumes_by_itself(ops_db_url: str, tmp_path: Path):
    url = ops_db_url
    topology = real_topology(tmp_path, policy={"data_transfer_package_max_bytes": 1})
    setup_pipeline(url, topology, tmp_path, n_obs_units=2, files_per_unit=2, max_size=60_000)
    us_lta, cologne_lta = tmp_path / "us" / "lta", tmp_path / "cologne" / "lta"
    away = tmp_path / "us" / "lta.unmounted"
    us_lta.rename(away)  # directory missing
    cologne_lta.rmdir()
    cologne_lta.write_text("a file where the archive directory should be\n")  # not a directory

    with instance_for_test() as instance:
        report = drive(url, instance)
        assert not report.failed_runs, report.failed_runs
        assert_nothing_failed_or_counted(url)
        assert not us_lta.exists(), "a missing archive root must not be re-created by a write"
        with session_scope(url) as session:
            assert packages_missing_from_ltas(session), "nothing can be archived yet"
            states = {p.state for p in session.scalars(select(RawDataPackage))}
            assert PackageState.ARCHIVED not in states
        seen = availability(url)
        assert seen[("us/lta", "us")] is False
        assert seen[("cologne/lta", "cologne")] is False

        # the UI: a failed location_available check on the archive's asset, from the run
        failed_checks = location_checks(instance, AssetKey(["us", "lta", "raw_data_package"]))
        assert failed_checks
        assert not failed_checks[-1].passed

        status = CliRunner().invoke(app, ["status"])
        assert status.exit_code == 0, status.output
        assert "unavailable" in status.output
        assert "us/lta" in status.output
        assert "cologne/lta" in status.output
        listing = CliRunner().invoke(app, ["list-locations"])
        assert listing.exit_code == 0, listing.output
        lines = [line for line in listing.output.splitlines() if "unavailable from" in line]
        assert len(lines) == 2, listing.output

        # the disks come back; nobody runs `ccat retry`
        cologne_lta.unlink()
        cologne_lta.mkdir()
        away.rename(us_lta)
        report = drive(url, instance)
        assert not report.failed_runs, report.failed_runs

    assert_nothing_failed_or_counted(url)
    with session_scope(url) as session:
        assert packages_missing_from_ltas(session) == []
        assert all(
            p.state == PackageState.ARCHIVED for p in session.scalars(select(RawDataPackage))
        )
    seen = availability(url)
    assert seen[("us/lta", "us")] is True
    assert seen[("cologne/lta", "cologne")] is True


def location_checks(instance, key: AssetKey) -> list:
    """``location_available`` evaluations of ``key`` recorded in the instance, oldest first."""
    records = instance.get_event_records(
        EventRecordsFilter(event_type=DagsterEventType.ASSET_CHECK_EVALUATION), ascending=True
    )
    evaluations = [r.event_log_entry.dagster_event.event_specific_data for r in records]
    return [e for e in evaluations if e.check_name == "location_available" and e.asset_key == key]


def archived_everywhere(url: str) -> bool:
    with session_scope(url) as session:
        packages = session.scalars(select(RawDataPackage)).all()
        if packages and not packages_missing_from_ltas(session):
            return True
    print(CliRunner().invoke(app, ["status"]).output)  # what is missing, if this fails
    return False


@pytest.fixture
def fake_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in FAKE_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def test_s3_endpoint_down_waits_and_resumes(ops_db_url: str, tmp_path: Path, fake_aws):
    url = ops_db_url
    with stoppable_moto_server() as s3:
        client = s3_admin_client(s3.endpoint)
        bucket = f"ccat-outage-{uuid.uuid4().hex[:8]}"
        client.create_bucket(Bucket=bucket)
        topology = real_topology(
            tmp_path,
            s3_endpoint=s3.endpoint,
            bucket=bucket,
            policy={"data_transfer_package_max_bytes": 1},
        )
        setup_pipeline(url, topology, tmp_path, n_obs_units=1, files_per_unit=2, max_size=50_000)
        with instance_for_test() as instance:
            drive(url, instance, sites=["ccat"])  # packaged and bundled
            s3.stop()  # the cologne archive endpoint goes down
            report = drive(url, instance)
            assert not report.failed_runs, report.failed_runs
            assert_nothing_failed_or_counted(url)
            assert availability(url)[("cologne/lta", "cologne")] is False
            assert not archived_everywhere(url)

            s3.start()  # same port: the endpoint answers again
            report = drive(url, instance)
            assert not report.failed_runs, report.failed_runs
        assert_nothing_failed_or_counted(url)
        assert archived_everywhere(url)
        assert availability(url)[("cologne/lta", "cologne")] is True
        empty_and_delete_bucket(client, bucket)


def test_ssh_host_down_waits_and_resumes(ops_db_url: str, tmp_path: Path, monkeypatch):
    url = ops_db_url
    with running_sshd(tmp_path / "sshd") as sshd:
        monkeypatch.setenv("CCAT_SSH_KEY_FILE", sshd.key_file)
        root = tmp_path / "sites"
        topology = real_topology(root, sshd=sshd, policy={"data_transfer_package_max_bytes": 1})
        setup_pipeline(url, topology, root, n_obs_units=1, files_per_unit=2, max_size=50_000)
        with instance_for_test() as instance:
            drive(url, instance, sites=["ccat"])  # packaged and bundled at the telescope
            sshd.stop_daemon()  # the archive sites cannot reach the telescope buffer
            report = drive(url, instance)
            assert not report.failed_runs, report.failed_runs
            assert_nothing_failed_or_counted(url)
            seen = availability(url)
            assert seen[("ccat/telescope_buffer", "cologne")] is False
            assert seen[("ccat/telescope_buffer", "us")] is False
            assert ("ccat/telescope_buffer", "ccat") not in seen, "local there: it works"

            sshd.start_daemon()
            report = drive(url, instance)
            assert not report.failed_runs, report.failed_runs
    assert_nothing_failed_or_counted(url)
    assert archived_everywhere(url)
    assert availability(url)[("ccat/telescope_buffer", "us")] is True


def test_full_archive_disk_waits_and_resumes(ops_db_url: str, tmp_path: Path):
    url = ops_db_url
    topology = real_topology(tmp_path, policy={"data_transfer_package_max_bytes": 1})
    with tmpfs(tmp_path / "us" / "lta", "1m") as us_lta:
        # four packages, 4.1 MB in all, two of them over 1.6 MB: they cannot fit in 1 MB
        setup_pipeline(url, topology, tmp_path, n_obs_units=2, files_per_unit=3, max_size=2_000_000)
        with instance_for_test() as instance:
            report = drive(url, instance)
            assert not report.failed_runs, report.failed_runs
            assert_nothing_failed_or_counted(url)
            assert availability(url)[("us/lta", "us")] is False
            assert not archived_everywhere(url)
            assert not [p for p in us_lta.rglob("*") if ".part-" in p.name], "no partial file"

            resize_tmpfs(us_lta, "64m")  # an operator adds space
            report = drive(url, instance)
            assert not report.failed_runs, report.failed_runs
        assert_nothing_failed_or_counted(url)
        assert archived_everywhere(url)
        assert availability(url)[("us/lta", "us")] is True
