"""The topology's ``routes``: validated with messages naming the route and the fix, written as
DataTransferRoute rows idempotently, deactivated (never deleted) when removed, shown back."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import event, select
from typer.testing import CliRunner

from ccat_dagster.cli import app
from ccat_dagster_tests.pipeline_support import real_topology
from ccat_ops_db.models import DataTransferRoute, RouteType
from ccat_ops_db.topology import TopologyError, apply_topology, parse_topology, show_topology

RELAY = {"origin": "ccat", "type": "RELAY", "relay": "hub", "destination": "us"}
DIRECT = {"origin": "ccat", "type": "DIRECT", "destination": "cologne"}
CUSTOM = {"origin": "ccat", "type": "CUSTOM", "destination": "us", "location": "intake"}


def _topology(tmp_path, *routes: dict) -> dict:
    return real_topology(tmp_path, routes=[dict(r) for r in routes])


def _errors(topology: dict) -> list[str]:
    with pytest.raises(TopologyError) as info:
        parse_topology(topology)
    return info.value.errors


def _rows(session) -> list[DataTransferRoute]:
    return list(session.scalars(select(DataTransferRoute).order_by(DataTransferRoute.id)))


def test_routes_are_written_idempotently_and_deactivated_not_deleted(session, engine, tmp_path):
    inactive_direct = {**DIRECT, "active": False}
    summary = apply_topology(session, _topology(tmp_path, RELAY, inactive_direct))
    session.commit()
    assert "route ccat -> RELAY via hub -> us" in summary.created
    assert "route ccat -> DIRECT -> cologne (inactive)" in summary.created
    relay, direct = _rows(session)
    assert relay.route_type is RouteType.RELAY
    assert relay.active
    assert (relay.origin_site.short_name, relay.relay_site.short_name) == ("ccat", "hub")
    assert relay.destination_site.short_name == "us"
    assert direct.route_type is RouteType.DIRECT
    assert not direct.active

    writes: list[str] = []

    def count(conn, cursor, statement, *args):
        if statement.split()[0].upper() in ("INSERT", "UPDATE", "DELETE"):
            writes.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        again = apply_topology(session, _topology(tmp_path, RELAY, inactive_direct))
        session.commit()
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert not again.changed, again.lines()
    assert writes == []

    # the shown topology round-trips (with the inactive route)
    assert show_topology(session)["routes"] == [RELAY, inactive_direct]
    assert not apply_topology(session, show_topology(session)).changed

    # swap which route is active; then remove both: deactivated, never deleted
    summary = apply_topology(session, _topology(tmp_path, {**RELAY, "active": False}, DIRECT))
    session.commit()
    assert sorted(summary.updated) == [
        "route ccat -> DIRECT -> cologne: active False -> True",
        "route ccat -> RELAY via hub -> us: active True -> False",
    ]
    summary = apply_topology(session, _topology(tmp_path))
    session.commit()
    assert summary.deactivated == ["route ccat -> DIRECT -> cologne (not in the topology)"]
    assert [r.active for r in _rows(session)] == [False, False]


def test_custom_route_names_a_buffer_of_the_destination(session, tmp_path):
    apply_topology(session, _topology(tmp_path, CUSTOM))
    session.commit()
    (row,) = _rows(session)
    assert row.destination_location.qualified_name == "us/intake"
    assert show_topology(session)["routes"] == [CUSTOM]
    # "site/name" is accepted for the same location
    assert not apply_topology(
        session, _topology(tmp_path, {**CUSTOM, "location": "us/intake"})
    ).changed


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        (
            {**RELAY, "destination": "mars"},
            "routes[0] (ccat -> RELAY via hub -> mars): destination 'mars' is not a site of the "
            "topology (sites: ccat, cologne, hub, us)",
        ),
        (
            {**RELAY, "relay": "cologne_x"},
            "routes[0] (ccat -> RELAY via cologne_x -> us): relay 'cologne_x' is not a site",
        ),
        ({**RELAY, "type": "SIDEWAYS"}, "unknown route type 'SIDEWAYS'; use one of: DIRECT"),
        ({"origin": "ccat", "type": "RELAY", "destination": "us"}, "needs relay: <site"),
        ({**DIRECT, "relay": "hub"}, "relay is only for RELAY routes"),
        ({**CUSTOM, "location": None}, "a CUSTOM route needs location"),
        ({**CUSTOM, "location": "nowhere"}, "location 'nowhere' is not a location of site 'us'"),
        (
            {**CUSTOM, "location": "cologne/buffer"},
            "location 'cologne/buffer' is at site 'cologne', not at the destination 'us'",
        ),
        ({**CUSTOM, "location": "lta"}, "us/lta is a LONG_TERM_ARCHIVE, not a BUFFER"),
        ({**RELAY, "relay": "ccat"}, "relay 'ccat' is the route's origin (a loop)"),
        ({**RELAY, "relay": "us"}, "relay 'us' is the route's destination (a loop)"),
        ({**DIRECT, "destination": "ccat"}, "destination is the origin itself"),
        ({**DIRECT, "destination": "hub"}, "destination 'hub' has no active LONG_TERM_ARCHIVE"),
        ({**DIRECT, "origin": "us"}, "origin 'us' has no active SOURCE location"),
        ({**RELAY, "extra": 1}, "unknown key 'extra'"),
    ],
)
def test_invalid_route_is_refused_naming_it_and_the_fix(tmp_path, route, expected):
    errors = _errors(_topology(tmp_path, route))
    assert any(expected in e for e in errors), errors
    assert all(e.startswith("routes[0]") for e in errors), errors


def test_relay_without_a_buffer_and_destination_without_a_buffer_are_refused(tmp_path):
    topology = _topology(tmp_path, RELAY)
    hub = topology["sites"][3]
    hub["locations"][0]["active"] = False
    assert any("relay site 'hub' has no active BUFFER" in e for e in _errors(topology))

    topology = _topology(tmp_path, DIRECT)
    for loc in topology["sites"][1]["locations"]:
        if loc["type"] == "BUFFER":
            loc["active"] = False
    errors = _errors(topology)
    assert any("destination 'cologne' has no active BUFFER to receive" in e for e in errors)


def test_route_to_an_inactive_site_is_refused_unless_the_route_is_inactive(tmp_path):
    topology = _topology(tmp_path, RELAY)
    hub = topology["sites"][3]
    hub["active"] = False
    hub["locations"][0]["active"] = False
    errors = _errors(topology)
    assert any(
        "relay site 'hub' is inactive; activate it, or set active: false" in e for e in errors
    )
    topology["routes"][0]["active"] = False
    assert parse_topology(topology).routes[0].active is False


def test_two_active_routes_from_one_origin_and_relay_loops_are_refused(tmp_path):
    errors = _errors(_topology(tmp_path, RELAY, DIRECT))
    assert any(
        e.startswith(
            "routes[1] (ccat -> DIRECT -> cologne): origin 'ccat' already has an active "
            "route (routes[0] (ccat -> RELAY via hub -> us))"
        )
        for e in errors
    ), errors
    assert parse_topology(_topology(tmp_path, RELAY, {**DIRECT, "active": False}))

    # two source sites relaying into each other
    topology = _topology(
        tmp_path,
        RELAY,
        {"origin": "hub", "type": "RELAY", "relay": "ccat", "destination": "cologne"},
    )
    hub = topology["sites"][3]
    hub["locations"].append(
        {"name": "raw", "type": "SOURCE", "storage": {"kind": "disk", "path": str(tmp_path)}}
    )
    errors = _errors(topology)
    assert any("form a loop (ccat -> hub -> ccat)" in e for e in errors), errors
    assert any("routes[0]" in e and "routes[1]" in e for e in errors), errors


def test_every_problem_of_the_routes_is_reported_together(tmp_path):
    errors = _errors(_topology(tmp_path, {**RELAY, "relay": "us"}, {**CUSTOM, "location": "lta"}))
    assert len(errors) == 2, errors


def test_list_locations_shows_the_routes_in_text_and_json(ops_db_url, session, tmp_path):
    apply_topology(session, _topology(tmp_path, RELAY, {**DIRECT, "active": False}))
    session.commit()
    runner = CliRunner()
    listed = runner.invoke(app, ["list-locations"], env={"CCAT_OPS_DB_URL": ops_db_url})
    assert listed.exit_code == 0, listed.output
    assert "routes: ccat -> RELAY via hub -> us" in listed.stdout.splitlines()
    assert "routes: ccat -> DIRECT -> cologne (inactive)" in listed.stdout.splitlines()

    doc = json.loads(
        runner.invoke(app, ["list-locations", "--json"], env={"CCAT_OPS_DB_URL": ops_db_url}).stdout
    )
    by_name = {f"{r['site']}/{r['location']}": r for r in doc}
    expected = ["ccat -> RELAY via hub -> us", "ccat -> DIRECT -> cologne (inactive)"]
    assert by_name["ccat/telescope_buffer"]["routes"] == expected
    assert by_name["hub/buffer"]["routes"] == []
