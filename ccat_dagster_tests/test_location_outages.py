"""Location outages (issue 10, bug 4): errors that belong to a location wait, never fail packages.

Three sites on local disks (``pipeline_support.real_topology``), the real sensors and jobs driven
until idle. Both long-term archives are made unusable (one renamed away, one replaced by a
file): the pipeline goes idle with nothing FAILED and no retry counted, both archives are shown
unavailable, and once the directories are back a second ``run-until-idle`` archives everything
by itself.
"""

from __future__ import annotations

from pathlib import Path

from dagster import instance_for_test
from sqlalchemy import select
from typer.testing import CliRunner

from ccat_dagster.cli import app
from ccat_dagster.lifecycle.summary import packages_missing_from_ltas
from ccat_dagster_tests.pipeline_support import drive, real_topology, setup_pipeline
from ccat_ops_db.models import (
    DataLocation,
    DataTransfer,
    DataTransferPackage,
    LocationAvailability,
    LongTermArchiveTransfer,
    PackageState,
    RawDataPackage,
    Site,
    Status,
)
from ccat_ops_db.session import session_scope


def assert_nothing_failed_or_counted(url: str) -> None:
    """No operation FAILED and no retry counted anywhere: an outage is not the packages' fault."""
    with session_scope(url) as session:
        for model in (RawDataPackage, DataTransferPackage, DataTransfer, LongTermArchiveTransfer):
            rows = session.scalars(select(model)).all()
            assert all(r.status != Status.FAILED for r in rows), model.__name__
            assert all((r.retry_count or 0) == 0 for r in rows), [
                (model.__name__, r.id, r.retry_count, r.failure_reason) for r in rows
            ]
        assert all(
            t.unpack_status != Status.FAILED and (t.unpack_retry_count or 0) == 0
            for t in session.scalars(select(DataTransfer))
        )
        assert all(
            p.state != PackageState.FAILED for p in session.scalars(select(RawDataPackage))
        )


def availability(url: str) -> dict[tuple[str, str], bool]:
    """(location ``site/name``, observer) -> available, for every recorded row."""
    with session_scope(url) as session:
        rows = session.execute(
            select(Site.short_name, DataLocation.name, LocationAvailability)
            .join(DataLocation, DataLocation.id == LocationAvailability.data_location_id)
            .join(Site, Site.id == DataLocation.site_id)
        ).all()
        return {(f"{s}/{n}", row.observer): row.available for s, n, row in rows}


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

        status = CliRunner().invoke(app, ["status"])
        assert status.exit_code == 0, status.output
        assert "unavailable" in status.output
        assert "us/lta" in status.output and "cologne/lta" in status.output
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
        assert all(p.state == PackageState.ARCHIVED for p in session.scalars(select(RawDataPackage)))
    seen = availability(url)
    assert seen[("us/lta", "us")] is True and seen[("cologne/lta", "cologne")] is True
