"""`make ui` on a fresh clone: the code locations load before any topology is applied (a
placeholder says what to do), and ``ccat demo --prepare`` (what `make ui` runs first) makes a
demo home on which every code location loads in full."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey
from typer.testing import CliRunner

from ccat_dagster.cli import app
from ccat_dagster.defs.setup import SETUP_ASSET
from ccat_dagster.demo import MARKER, PREPARED

REPO = Path(__file__).resolve().parents[2]
SITES = ("ccat", "cologne", "us")
runner = CliRunner()


def _site_defs(name: str):
    """What the workspace entry ``attribute: <name>`` of ``ccat_dagster.sites.site`` loads."""
    return getattr(importlib.import_module("ccat_dagster.sites.site"), name)()


def _only_placeholder(defs, site: str) -> str:
    """The description of the site's placeholder asset; asserts nothing else is defined."""
    graph = defs.resolve_asset_graph()
    assert [k.path for k in graph.get_all_asset_keys()] == [[site, SETUP_ASSET]]
    repo = defs.get_repository_def()
    assert not repo.sensor_defs
    assert not repo.schedule_defs
    assert not [j for j in repo.get_all_jobs() if not j.name.startswith("__")]
    return graph.get(AssetKey([site, SETUP_ASSET])).description or ""


def test_code_locations_load_without_an_ops_db(tmp_path, monkeypatch):
    missing = tmp_path / "nothing-here" / "ops.db"
    monkeypatch.setenv("CCAT_OPS_DB_URL", f"sqlite:///{missing}")
    for site in SITES:
        text = _only_placeholder(_site_defs(site), site)
        assert "there is no ops DB" in text
        assert "ccat topology apply FILE" in text
    assert not missing.exists(), "loading a code location never creates a database"


def test_code_locations_load_on_an_empty_ops_db(empty_sqlite):
    Path(empty_sqlite.removeprefix("sqlite:///")).touch()  # a database without a schema
    text = _only_placeholder(_site_defs("cologne"), "cologne")
    assert "no schema yet" in text
    assert "ccat topology apply FILE" in text


def test_code_locations_load_on_an_ops_db_without_sites(ops_db_url):
    text = _only_placeholder(_site_defs("us"), "us")
    assert "no active sites yet: run `ccat topology apply FILE`" in text


def test_an_unreachable_ops_db_still_fails_the_load(monkeypatch):
    """A fault to fix, not a first start: no placeholder hides it."""
    from ccat_dagster.defs.topology import TopologyUnavailableError

    monkeypatch.setenv("CCAT_OPS_DB_URL", "sqlite:////nonexistent-dir/for/ops.db")
    monkeypatch.setattr("ccat_dagster.defs.topology._missing_sqlite_file", lambda url: None)
    with pytest.raises(TopologyUnavailableError, match="cannot read the topology"):
        _site_defs("ccat")


def _validate(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_prepare_makes_a_demo_home_the_workspace_loads_in_full(tmp_path, monkeypatch):
    home = tmp_path / "demo-home"
    monkeypatch.setenv("CCAT_HOME", str(home))
    monkeypatch.delenv("CCAT_OPS_DB_URL", raising=False)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    env = {k: v for k, v in os.environ.items() if k != "CCAT_OPS_DB_URL"}

    result = runner.invoke(app, ["demo", "--prepare"])
    assert result.exit_code == 0, result.output
    assert "prepared" in result.stdout
    assert "Next: `make demo`" in result.stdout
    assert (home / MARKER).exists()
    assert (home / PREPARED).exists()
    assert (home / "dagster_home" / "dagster.yaml").exists()
    for site in SITES:
        graph = _site_defs(site).resolve_asset_graph()
        assert [site, SETUP_ASSET] not in [k.path for k in graph.get_all_asset_keys()]
        assert len(graph.get_all_asset_keys()) > 1

    loaded = _validate({**env, "DAGSTER_HOME": str(home / "dagster_home")})
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    assert "setup_required" not in loaded.stdout + loaded.stderr

    again = runner.invoke(app, ["demo", "--prepare"])  # a second `make ui` keeps the home
    assert again.exit_code == 0, again.output
    assert "kept as it is" in again.stdout

    from ccat_dagster.demo import reset_demo_home

    (home / "dagster_home" / "kept").write_text("a UI has this instance open")
    reset_demo_home(home)  # what `ccat demo` does first: a prepared home is filled, not wiped
    assert (home / "dagster_home" / "kept").exists()
