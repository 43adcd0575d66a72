"""Bug: with an LTA copy corrupt, ``run-until-idle`` ran the failing cleanup 200 passes long.
Now a cleanup that keeps failing is not retried again in that invocation: the command stops
after a few passes, exits 2 and names the package, the copy and why (both ops DBs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from ccat_dagster.cli import app
from ccat_dagster.instance import write_instance_config
from ccat_dagster.runner import open_instance
from ccat_dagster_tests.pipeline_support import drive, real_topology, setup_pipeline
from ccat_ops_db.models import RawDataPackage
from ccat_ops_db.session import session_scope

pytestmark = pytest.mark.slow


def _flip_byte(path: Path, offset: int = 2048) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def corrupt_lta_copy(ops_db_url, tmp_path):
    """Everything archived in both LTAs (retention 0), then one us LTA copy's bytes flipped."""
    setup_pipeline(
        ops_db_url,
        real_topology(tmp_path, policy={"retention_period_minutes": 0}),
        tmp_path,
        n_obs_units=2,
        files_per_unit=2,
        max_size=50_000,
    )
    home = tmp_path / "dagster_home"
    write_instance_config(home)
    with open_instance(home) as instance:
        report = drive(ops_db_url, instance, include_schedules=False)
        assert not report.failed_runs
        assert report.idle
    with session_scope(ops_db_url) as session:
        package = session.scalars(select(RawDataPackage).order_by(RawDataPackage.id)).first()
        name, key = package.name, package.relative_path
    _flip_byte(tmp_path / "us" / "lta" / key)
    return ops_db_url, home, name


def test_failing_cleanup_is_blocked_after_a_few_runs_not_spun(corrupt_lta_copy):
    url, home, package = corrupt_lta_copy
    with open_instance(home) as instance:
        report = drive(url, instance, max_passes=200)
    # Before: 200 passes and hundreds of failed cleanup runs. A fix of the corrupt copy itself
    # (re-archiving it) may make the cleanup succeed instead; it must never spin.
    assert report.passes <= 20
    assert report.runs <= 30
    if report.blocked:
        assert not report.idle
        assert report.stopped is None
        blocked = [b for b in report.blocked if package in b.reason]
        assert blocked, [b.describe() for b in report.blocked]
        assert all(b.job_name.endswith("_cleanup") for b in blocked)
        assert any("us/lta" in b.reason for b in blocked)
        assert {b.failures for b in report.blocked} == {5}  # first attempt + max_retries 3 + 1


def test_cli_exits_2_and_names_what_is_blocked(corrupt_lta_copy, monkeypatch):
    url, home, package = corrupt_lta_copy
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("CCAT_OPS_DB_URL", url)
    result = CliRunner().invoke(app, ["run-until-idle"])
    if "BLOCKED" not in result.output:  # the corrupt copy was repaired instead (see above)
        assert result.exit_code in (0, 1), result.output
        return
    assert result.exit_code == 2, result.output
    assert "NOT idle" in result.output
    assert package in result.output
    assert "failed 5 times in a row" in result.output
