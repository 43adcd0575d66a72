"""``ccat list-locations``: every site and location, with its operations and their pool names,
the sites it is unavailable from (since when, why), and the route overrides."""

from __future__ import annotations

import json
from dataclasses import asdict

import typer
from rich.table import Table

from ccat_dagster.cli._common import ops_session
from ccat_dagster.cli._tables import render, show, table
from ccat_dagster.lifecycle.common.locations import LocationInfo, describe_locations

_COLUMNS = ("SITE", "LOCATION", "TYPE", "STORAGE", "PRIORITY", "ACTIVE")


def locations_tables(rows: list[LocationInfo]) -> list[Table]:
    """The locations; the operations valid at each with their pools; where one is unavailable."""
    locations = table(*_COLUMNS, right=("PRIORITY",))
    pools = table("LOCATION", "OPERATION", "POOL", title="operations and their pools")
    unavailable = table(
        "LOCATION",
        "STATE",
        "SINCE",
        "REASON",
        title="unavailable locations (work needing them waits)",
    )
    for row in rows:
        locations.add_row(
            row.site,
            row.location,
            row.location_type,
            row.storage,
            str(row.priority),
            "yes" if row.active else "no",
        )
        name = f"{row.site}/{row.location}"
        for i, (op, pool) in enumerate(row.pools):
            pools.add_row(name if i == 0 else "", op, pool, end_section=i == len(row.pools) - 1)
        for observer, since, reason in row.unavailable:
            unavailable.add_row(name, f"unavailable from {observer}", str(since), reason)
    return [locations, pools] + ([unavailable] if unavailable.row_count else [])


def route_lines(rows: list[LocationInfo]) -> list[str]:
    """One line per route override, e.g. ``routes: ccat -> RELAY via hub -> us``."""
    routes = dict.fromkeys(route for row in rows for route in row.routes)
    if not routes:
        return ["routes: none (round-robin primary routes and secondary routes only)"]
    return [f"routes: {route}" for route in routes]


def format_locations_table(rows: list[LocationInfo]) -> str:
    """The tables of ``ccat list-locations`` as plain text."""
    return "\n".join([render(*locations_tables(rows)).rstrip("\n"), *route_lines(rows)]) + "\n"


def list_locations_command(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List every site and location (type, storage, priority, active), the operations that run
    at each with the names of their concurrency pools (exactly the pools the Dagster ops use),
    the sites a location is unavailable from (work needing it waits), and the route overrides
    of the topology (DIRECT, RELAY, CUSTOM; in --json: ``routes`` of each location, those from
    its site)."""
    with ops_session() as session:
        rows = describe_locations(session)
    if as_json:
        typer.echo(json.dumps([asdict(r) for r in rows], indent=2))
    elif not rows:
        typer.echo("no locations yet; apply a topology with `ccat topology apply FILE`")
    else:
        show(*locations_tables(rows))
        typer.echo("\n".join(route_lines(rows)))


def register(app: typer.Typer) -> None:
    app.command("list-locations")(list_locations_command)
