"""Every site's code location loads as workspace.yaml loads it, and the asset graph spans sites."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dagster import AllPartitionMapping
from typer.testing import CliRunner

from ccat_dagster.cli import app
from ccat_dagster.defs.definitions import build_site_definitions
from ccat_dagster.simulate import DEFAULT_TOPOLOGY_PATH
from ccat_ops_db.session import session_scope
from ccat_ops_db.topology import apply_topology

REPO = Path(__file__).resolve().parents[2]
SITES = ("ccat", "cologne", "us")


def _site_defs(name: str):
    """The site's definitions as workspace.yaml selects them (``attribute: <site>`` of the one
    site module), built now (``@definitions``: nothing at import)."""
    return getattr(importlib.import_module("ccat_dagster.sites.site"), name)()


def _deps(defs) -> dict[str, set[str]]:
    graph = defs.resolve_asset_graph()
    return {
        key.to_user_string(): {p.to_user_string() for p in graph.get(key).parent_keys}
        for key in graph.get_all_asset_keys()
        if graph.get(key).is_materializable
    }


def test_every_site_module_loads_and_the_chain_crosses_sites(default_topology_db):
    deps: dict[str, set[str]] = {}
    checks = set()
    for site in SITES:
        defs = _site_defs(site)
        deps.update(_deps(defs))
        checks |= {c.to_user_string() for c in defs.resolve_asset_graph().asset_check_keys}

    assert deps["ccat/telescope_buffer/raw_data_package"] == {
        "ccat/primecam_raw_data/raw_data_files"
    }
    assert deps["ccat/telescope_buffer/data_transfer_package"] == {
        "ccat/telescope_buffer/raw_data_package"
    }
    for lta_site in ("cologne", "us"):
        assert deps[f"{lta_site}/buffer/data_transfer_package"] == {
            "ccat/telescope_buffer/data_transfer_package"
        }
        assert deps[f"{lta_site}/buffer/raw_data_package"] == {
            f"{lta_site}/buffer/data_transfer_package"
        }
        assert deps[f"{lta_site}/lta/raw_data_package"] == {f"{lta_site}/buffer/raw_data_package"}
        assert f"{lta_site}/lta/raw_data_package:lta_presence" in checks


def test_site_holds_only_its_own_assets_jobs_and_sensors(default_topology_db):
    ccat = _site_defs("ccat")
    cologne = _site_defs("cologne")
    own = {k.path[0] for k in ccat.resolve_asset_graph().materializable_asset_keys}
    assert own == {"ccat"}
    repo = cologne.get_repository_def()
    assert {j.name for j in repo.get_all_jobs() if not j.name.startswith("__")} >= {
        "cologne_data_transfer",
        "cologne_data_transfer_unpacking",
        "cologne_long_term_archive_transfer",
    }
    assert all(s.name.startswith("cologne_") for s in repo.sensor_defs)
    graph = cologne.resolve_asset_graph()
    (lta_presence,) = [k for k in graph.asset_check_keys if k.name == "lta_presence"]
    check = graph.get_check_spec(lta_presence)
    assert check.blocking


def test_workspace_yaml_validates_with_dagster_cli(default_topology_db):
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for site in SITES:
        assert site in result.stdout + result.stderr


def test_unknown_site_gives_a_clear_error(default_topology_db):
    with pytest.raises(LookupError, match="ccat topology apply"):
        build_site_definitions("nowhere", ops_db_url=default_topology_db)


def _pools_of_ops(defs) -> set[str]:
    """The pools of every op of the Definitions (the stage, cleanup and asset ops)."""
    repo = defs.get_repository_def()
    return {
        op_def.pool
        for job in repo.get_all_jobs()
        for op_def in job.graph.iterate_op_defs()
        if op_def.pool
    }


def _listed_pools(url: str) -> dict[str, set[str]]:
    """Pool names printed by `ccat list-locations --json`, per site."""
    result = CliRunner().invoke(app, ["list-locations", "--json"], env={"CCAT_OPS_DB_URL": url})
    assert result.exit_code == 0, result.output
    listed: dict[str, set[str]] = {}
    for row in json.loads(result.stdout):
        listed.setdefault(row["site"], set()).update(pool for _op, pool in row["pools"])
    return listed


def test_list_locations_prints_exactly_the_pools_the_ops_use(default_topology_db):
    listed = _listed_pools(default_topology_db)
    for site in SITES:
        used = _pools_of_ops(build_site_definitions(site, ops_db_url=default_topology_db))
        assert used == listed[site], site
    # deletion runs per location in the pools list-locations prints; nothing unused is listed
    assert {"ccat_telescope_buffer_deletion", "ccat_primecam_raw_data_deletion"} <= listed["ccat"]
    # monitoring has a pool only where an op runs in it: the archives' re-verification
    monitoring = {p for pools in listed.values() for p in pools if p.endswith("_monitoring")}
    assert monitoring == {"cologne_lta_monitoring", "us_lta_monitoring"}
    assert "ccat_cleanup" not in listed["ccat"]


def test_pools_follow_the_primary_location_and_skip_inactive_ones(fresh_sqlite_url):
    """Two active buffers and an inactive one at cologne: the stages run in the primary
    buffer's pools, each active buffer has its own deletion pool, the inactive one none."""
    topology = yaml.safe_load(Path(DEFAULT_TOPOLOGY_PATH).read_text())
    cologne = next(s for s in topology["sites"] if s["short_name"] == "cologne")
    cologne["locations"] = [loc for loc in cologne["locations"] if loc["type"] != "BUFFER"]
    for name, priority, active in [
        ("b_second", 2, True),
        ("a_first", 1, True),
        ("c_off", 0, False),
    ]:
        cologne["locations"].append(
            {
                "name": name,
                "type": "BUFFER",
                "priority": priority,
                "active": active,
                "storage": {"kind": "disk", "path": f"/tmp/ccat-test/{name}"},
            }
        )
    with session_scope(fresh_sqlite_url) as session:
        apply_topology(session, topology)
    used = _pools_of_ops(build_site_definitions("cologne", ops_db_url=fresh_sqlite_url))
    assert used == _listed_pools(fresh_sqlite_url)["cologne"]
    assert {
        "cologne_a_first_data_transfer",
        "cologne_a_first_data_transfer_unpacking",
        "cologne_a_first_deletion",
        "cologne_b_second_deletion",
    } <= used
    assert not any(p.startswith(("cologne_b_second_data", "cologne_c_off")) for p in used)


def test_no_partition_depends_on_a_partition_of_another_location(default_topology_db):
    """Each location's asset has its own partitions (the copies it holds now): a partition
    mapped onto its parent's would make Dagster's backfill refuse an archive partition whose
    buffer copy was cleaned ("depends on non-existent partitions")."""
    for site in SITES:
        graph = _site_defs(site).resolve_asset_graph()
        for key in graph.get_all_asset_keys():
            node = graph.get(key)
            if not node.is_materializable or node.partitions_def is None:
                continue
            for parent in node.parent_keys:
                mapping = graph.get_partition_mapping(key, parent)
                assert isinstance(mapping, AllPartitionMapping), (key, parent, mapping)
