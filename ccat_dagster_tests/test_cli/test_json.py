"""``--json`` of ``status``, ``list-locations``, ``deletion-plan``, ``disk-monitor`` and ``staging
list``: one JSON document on stdout with the keys docs/operations.md promises, nothing else."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ccat_dagster.cli import app

runner = CliRunner()


@pytest.fixture
def applied(ops_db_url, topology_file, tmp_path):
    result = runner.invoke(app, ["topology", "apply", str(topology_file)])
    assert result.exit_code == 0, result.output
    # disk-monitor measures the storage roots: they exist on a real deployment
    for root in (tmp_path / "home").glob("*/*"):
        root.mkdir(parents=True, exist_ok=True)
    return ops_db_url


def _json(args: list[str]):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "\x1b[" not in result.stdout, "no terminal markup in --json"
    return json.loads(result.stdout)  # the whole of stdout is the document


def test_status_json(applied):
    doc = _json(["status", "--json"])
    assert set(doc) == {
        "files",
        "packages_by_state",
        "packages_by_status",
        "bundles_by_status",
        "transfers",
        "archive_transfers",
        "copies",
        "unusable_archive_copies",
        "unavailable_locations",
        "ingest_findings",
        "lost_files",
    }
    assert doc["files"] == {"count": 0, "bytes": 0}
    assert doc["copies"] == []
    assert doc["unavailable_locations"] == []


def test_list_locations_json(applied):
    doc = _json(["list-locations", "--json"])
    lta = next(r for r in doc if (r["site"], r["location"]) == ("cologne", "lta"))
    assert set(lta) == {
        "site",
        "location",
        "location_type",
        "storage",
        "priority",
        "active",
        "pools",
        "unavailable",
        "routes",
    }
    assert lta["location_type"] == "LONG_TERM_ARCHIVE"
    assert ["long_term_archive_transfer", "cologne_lta_long_term_archive_transfer"] in lta["pools"]


def test_deletion_plan_json(applied):
    doc = _json(["deletion-plan", "--json", "--location", "cologne/buffer"])
    assert set(doc) == {
        "at",
        "location",
        "deletable_by_rule",
        "bytes_to_free_by_location",
        "blocked_by_rule",
        "staged_packages_to_close",
        "permanent_failures",
    }
    assert doc["location"] == "cologne/buffer"
    assert doc["at"].endswith("Z")
    assert doc["permanent_failures"] == []
    assert doc["staged_packages_to_close"] == 0


def test_disk_monitor_json(applied):
    doc = _json(["disk-monitor", "--site", "cologne", "--json"])
    assert set(doc) == {"forecast_window_hours", "locations"}
    names = {row["location"] for row in doc["locations"]}
    assert "cologne/buffer" in names
    row = doc["locations"][0]
    assert set(row) == {
        "location",
        "measured_at",
        "used_bytes",
        "total_bytes",
        "used_percent",
        "level",
        "samples",
        "fill_rate_percent_per_hour",
        "hours_to",
        "alert",
    }
    assert set(row["hours_to"]) == {"warning", "critical", "full"}
    assert row["total_bytes"] > 0
    assert row["level"] in {"NORMAL", "WARNING", "CRITICAL", "EMERGENCY"}


def test_staging_list_json(applied):
    assert _json(["staging", "list", "--json"]) == []
    assert _json(["staging", "list", "--json", "--active", "-l", "cologne/ramses_processing"]) == []


def test_staging_list_json_rows(session, tmp_path):
    """A job past its retention is flagged, as the table does."""
    from ccat_dagster_tests import factories as f

    topo = f.make_topology(session, tmp_path, lta_sites=("cologne",))
    pkg, _ = f.archived_package(topo)
    waiting, _ = f.archived_package(topo)
    job = f.stage(topo, [pkg], retention_minutes=0)
    job.raw_data_packages.append(waiting)  # in the job, not staged yet
    session.commit()
    [row] = _json(["staging", "list", "--json"])
    assert set(row) == {
        "id",
        "active",
        "status",
        "location",
        "packages",
        "staged",
        "retention_ends_at",
        "requested_by",
        "failure_reason",
        "past_retention",
    }
    assert row["id"] == job.id
    assert row["packages"] == sorted([pkg.name, waiting.name])
    assert row["staged"] == 1  # the progress of staging
    assert row["active"] is True
    assert row["past_retention"] is True
    assert row["retention_ends_at"].endswith("Z")
