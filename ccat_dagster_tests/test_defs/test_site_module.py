"""One code-location module for every site, selected by name: ``CCAT_SITE`` for a code server,
the workspace entry's ``attribute`` for a workspace that loads several sites; a missing,
unknown or inactive site stops the load with an error that names the active sites."""

from __future__ import annotations

import pytest

from ccat_dagster.defs.topology import UnknownSiteError
from ccat_dagster.simulate import default_topology
from ccat_dagster.sites import site
from ccat_ops_db.session import session_scope
from ccat_ops_db.topology import apply_topology

SITES = ("ccat", "cologne", "us")


def _own_names(defs, name: str) -> tuple[set[str], set[str]]:
    repo = defs.get_repository_def()
    sensors = {s.name for s in repo.sensor_defs}
    roots = {k.path[0] for k in defs.resolve_asset_graph().materializable_asset_keys}
    assert sensors, f"{name}: no sensors"
    return {s.split("_", 1)[0] for s in sensors}, roots


@pytest.mark.parametrize("name", SITES)
def test_ccat_site_selects_the_site(default_topology_db, monkeypatch, name):
    monkeypatch.setenv("CCAT_SITE", name)
    prefixes, roots = _own_names(site.defs(), name)
    assert prefixes == {name}
    assert roots == {name}


@pytest.mark.parametrize("name", SITES)
def test_the_workspace_attribute_selects_the_site(default_topology_db, monkeypatch, name):
    monkeypatch.setenv("CCAT_SITE", "us")  # the attribute wins: workspace.yaml has no env
    prefixes, roots = _own_names(getattr(site, name)(), name)
    assert prefixes == {name}
    assert roots == {name}


def test_a_missing_ccat_site_says_which_variable_and_the_active_sites(
    default_topology_db, monkeypatch
):
    monkeypatch.delenv("CCAT_SITE", raising=False)
    with pytest.raises(site.SiteNotSelectedError) as excinfo:
        site.defs()
    message = str(excinfo.value)
    assert "CCAT_SITE is not set" in message
    assert "ccat, cologne, us" in message
    assert "attribute" in message


def test_an_unknown_site_names_the_active_ones_and_the_fix(default_topology_db, monkeypatch):
    monkeypatch.setenv("CCAT_SITE", "tokyo")
    with pytest.raises(UnknownSiteError) as excinfo:
        site.defs()
    message = str(excinfo.value)
    assert "'tokyo' is not in the topology" in message
    assert "active sites: ccat, cologne, us" in message
    assert "ccat topology apply" in message


def test_an_inactive_site_says_it_is_inactive(fresh_sqlite_url, monkeypatch):
    topology = default_topology()
    for entry in topology["sites"]:
        if entry["short_name"] == "us":
            entry["active"] = False
            for location in entry["locations"]:
                location["active"] = False
    monkeypatch.setenv("CCAT_OPS_DB_URL", fresh_sqlite_url)
    with session_scope(fresh_sqlite_url) as session:
        apply_topology(session, topology)
    monkeypatch.setenv("CCAT_SITE", "us")
    with pytest.raises(UnknownSiteError) as excinfo:
        site.defs()
    message = str(excinfo.value)
    assert "'us' is inactive in the ops DB" in message
    assert "active sites: ccat, cologne" in message
    # the other sites load without it, and nothing of theirs depends on it
    graph = site.cologne().resolve_asset_graph()
    deps = {
        parent.path[0]
        for key in graph.get_all_asset_keys()
        for parent in graph.get(key).parent_keys
    }
    assert "us" not in deps


def test_private_names_are_not_sites():
    with pytest.raises(AttributeError):
        site.__wrapped__  # noqa: B018
    assert not hasattr(site, "_anything")
