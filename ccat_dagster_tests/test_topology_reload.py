"""A topology change reaches a running deployment without restarting its code servers: a real
``dagster code-server start`` (the one site module, ``CCAT_SITE``) behind a real
``dagster-webserver`` (a ``grpc_server`` workspace, a temporary SQLite Dagster instance and
ops DB); ``ccat topology apply --webserver-url`` adds a location, reloads, and the new asset and
sensor are there through GraphQL while the code server process is the same; deactivating the
location takes them away again. Plus the command without a webserver and with one that does not
answer. Every process is stopped in teardown (SIGTERM, then SIGKILL), bounded in time."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from ccat_dagster.cli import app
from ccat_dagster.cli._reload import RELOAD_COMMAND
from ccat_dagster_tests.deployment_support import (
    Deployment,
    GraphQLClient,
    code_server_ready,
    free_port,
    loaded_locations,
    wait_until,
    write_workspace,
)
from ccat_dagster_tests.pipeline_support import MARKER_INGEST, real_topology

REPO = Path(__file__).resolve().parents[1]
SITE = "ccat"
NEW_SOURCE = "spectrometer_raw_data"
NEW_SENSOR = f"{SITE}_{NEW_SOURCE}_ingest_sensor"
NEW_ASSET = [SITE, NEW_SOURCE, "raw_data_files"]

LOCATION_QUERY = """
query Location {
  workspaceOrError {
    ... on Workspace {
      locationEntries {
        name
        locationOrLoadError {
          __typename
          ... on RepositoryLocation {
            repositories { sensors { name } assetNodes { assetKey { path } } }
          }
          ... on PythonError { message }
        }
      }
    }
  }
}
"""


def _topology(root: Path, *, with_new_source: bool) -> dict[str, Any]:
    topology = real_topology(root)
    if with_new_source:
        path = root / SITE / "spectrometer"
        path.mkdir(parents=True, exist_ok=True)
        ccat = next(s for s in topology["sites"] if s["short_name"] == SITE)
        ccat["locations"].append(
            {
                "name": NEW_SOURCE,
                "type": "SOURCE",
                "storage": {"kind": "disk", "path": str(path)},
                "ingest": MARKER_INGEST,
            }
        )
    return topology


def _apply(tmp_path: Path, topology: dict[str, Any], *args: str):
    file = tmp_path / "topology.yaml"
    file.write_text(yaml.safe_dump(topology, sort_keys=False))
    return CliRunner().invoke(app, ["topology", "apply", str(file), *args])


def _sensors_and_assets(gql: GraphQLClient) -> tuple[set[str], set[tuple[str, ...]]]:
    entries = gql(LOCATION_QUERY)["workspaceOrError"]["locationEntries"]
    (entry,) = [e for e in entries if e["name"] == SITE]
    loaded = entry["locationOrLoadError"]
    assert loaded["__typename"] == "RepositoryLocation", loaded.get("message")
    sensors = {s["name"] for r in loaded["repositories"] for s in r["sensors"]}
    assets = {tuple(a["assetKey"]["path"]) for r in loaded["repositories"] for a in r["assetNodes"]}
    return sensors, assets


@dataclass
class Running:
    deployment: Deployment
    gql: GraphQLClient
    url: str


@pytest.fixture
def running(tmp_path, fresh_sqlite_url, monkeypatch) -> Iterator[Running]:
    """One code server (site ccat) and a webserver reaching it over gRPC, on loopback only."""
    from ccat_dagster.instance import write_instance_config
    from ccat_dagster.runner import open_instance

    monkeypatch.setenv("CCAT_OPS_DB_URL", fresh_sqlite_url)
    monkeypatch.delenv("DAGSTER_PG_URL", raising=False)  # the SQLite instance template
    monkeypatch.delenv("CCAT_DAGSTER_WEBSERVER_URL", raising=False)  # only the test's own webserver
    result = _apply(tmp_path, _topology(tmp_path / "data", with_new_source=False))
    assert result.exit_code == 0, result.output

    home = tmp_path / "dagster_home"
    write_instance_config(home)
    with open_instance(home) as instance:  # the storages are created once, before any process
        instance.get_runs_count()
    port = free_port()
    workspace = write_workspace(tmp_path / "workspace.yaml", {SITE: port})
    env = {**os.environ, "CCAT_OPS_DB_URL": fresh_sqlite_url, "DAGSTER_HOME": str(home)}
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    deployment = Deployment(root=REPO, env=env, log_dir=log_dir)
    try:
        deployment.start_code_server(SITE, port)
        wait_until(
            lambda: deployment.check_alive() or code_server_ready(port),
            timeout=180,
            what=f"the code server of {SITE} to serve",
            describe=deployment.logs,
        )
        deployment.start_webserver(workspace, free_port())
        gql = GraphQLClient(deployment.webserver_port or 0)
        wait_until(
            lambda: deployment.check_alive() or loaded_locations(gql, [SITE]),
            timeout=180,
            what="dagster-webserver to load the code location",
            describe=deployment.logs,
        )
        yield Running(deployment, gql, gql.base_url)
    finally:
        killed = deployment.stop(timeout=30)
        assert all(not p.alive() for p in deployment.processes), deployment.logs()
        print(f"killed after the SIGTERM timeout: {killed}")


@pytest.mark.slow
def test_apply_reloads_the_running_code_server_and_the_new_location_appears_and_goes(
    running, tmp_path
):
    code_server = next(p for p in running.deployment.processes if p.name.startswith("code-server"))
    sensors, assets = _sensors_and_assets(running.gql)
    assert NEW_SENSOR not in sensors
    assert NEW_ASSET not in [list(a) for a in assets]

    result = _apply(
        tmp_path,
        _topology(tmp_path / "data", with_new_source=True),
        "--webserver-url",
        running.url,
    )
    assert result.exit_code == 0, result.output
    assert f"created {SITE}/{NEW_SOURCE}" in result.output, result.output
    assert f"reloaded {SITE}: " in result.output, result.output
    sensors, assets = _sensors_and_assets(running.gql)
    assert NEW_SENSOR in sensors
    assert tuple(NEW_ASSET) in assets
    assert code_server.alive(), "the code server was not restarted, it reloaded"

    result = _apply(
        tmp_path,
        _topology(tmp_path / "data", with_new_source=False),
        "--webserver-url",
        running.url,
    )
    assert result.exit_code == 0, result.output
    assert f"deactivated {SITE}/{NEW_SOURCE} (not in the topology)" in result.output
    assert f"reloaded {SITE}: " in result.output, result.output
    sensors, assets = _sensors_and_assets(running.gql)
    assert NEW_SENSOR not in sensors
    assert tuple(NEW_ASSET) not in assets
    assert f"{SITE}_raw_data_package_creation_sensor" in sensors  # the rest is still there
    assert code_server.alive()

    # the reload alone, as the printed command does it
    reload = CliRunner().invoke(app, ["topology", "reload", "--webserver-url", running.url])
    assert reload.exit_code == 0, reload.output
    assert reload.output.startswith(f"reloaded {SITE}: ")


def test_apply_without_a_webserver_prints_the_one_command_to_run(
    tmp_path, fresh_sqlite_url, monkeypatch
):
    monkeypatch.setenv("CCAT_OPS_DB_URL", fresh_sqlite_url)
    monkeypatch.delenv("CCAT_DAGSTER_WEBSERVER_URL", raising=False)
    result = _apply(tmp_path, _topology(tmp_path / "data", with_new_source=False))
    assert result.exit_code == 0, result.output
    assert RELOAD_COMMAND in result.output
    again = _apply(tmp_path, _topology(tmp_path / "data", with_new_source=False))
    assert "no changes" in again.output
    assert RELOAD_COMMAND not in again.output  # nothing changed: nothing to reload
    dry = _apply(tmp_path, _topology(tmp_path / "data", with_new_source=True), "--dry-run")
    assert "dry run" in dry.output
    assert RELOAD_COMMAND not in dry.output


def test_a_webserver_that_does_not_answer_is_an_error_after_the_topology_is_applied(
    tmp_path, fresh_sqlite_url, monkeypatch
):
    monkeypatch.setenv("CCAT_OPS_DB_URL", fresh_sqlite_url)
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("CCAT_DAGSTER_WEBSERVER_URL", url)
    result = _apply(tmp_path, _topology(tmp_path / "data", with_new_source=False))
    assert result.exit_code == 1
    assert "created site ccat" in result.output  # applied before the reload was tried
    assert f"cannot reach the Dagster webserver at {url}" in result.output
    reload = CliRunner().invoke(app, ["topology", "reload"])
    assert reload.exit_code == 1
    assert "cannot reach the Dagster webserver" in reload.output


def test_reload_without_a_url_says_how_to_give_one(monkeypatch):
    monkeypatch.delenv("CCAT_DAGSTER_WEBSERVER_URL", raising=False)
    result = CliRunner().invoke(app, ["topology", "reload"])
    assert result.exit_code == 1
    assert "--webserver-url" in result.output
    assert "CCAT_DAGSTER_WEBSERVER_URL" in result.output
