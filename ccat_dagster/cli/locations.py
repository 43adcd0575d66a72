"""``ccat list-locations``: every site and location, with its operations and their pool names,
and the sites it is unavailable from (since when, why)."""

from __future__ import annotations

import json
from dataclasses import asdict

import typer

from ccat_dagster.cli._common import ops_session
from ccat_dagster.lifecycle.locations import LocationInfo, describe_locations

_COLUMNS = ("SITE", "LOCATION", "TYPE", "STORAGE", "PRIORITY", "ACTIVE")


def format_locations_table(rows: list[LocationInfo]) -> str:
    """A plain-text table: one line per location, its operations and pools indented below."""
    cells = [
        (
            r.site,
            r.location,
            r.location_type,
            r.storage,
            str(r.priority),
            "yes" if r.active else "no",
        )
        for r in rows
    ]
    widths = [max(len(c[i]) for c in [_COLUMNS, *cells]) for i in range(len(_COLUMNS))]

    def line(values: tuple[str, ...]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    out = [line(_COLUMNS)]
    for row, cell in zip(rows, cells, strict=True):
        out.append(line(cell))
        for observer, since, reason in row.unavailable:
            out.append(f"    UNAVAILABLE: unavailable from {observer} since {since}: {reason}")
        op_width = max((len(op) for op, _ in row.pools), default=0)
        for op, pool in row.pools:
            out.append(f"    {op.ljust(op_width)}  pool {pool}")
    return "\n".join(out)


def list_locations_command(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List every site and location (type, storage, priority, active) and, below each, the
    sites it is unavailable from (work needing it waits) and the operations that run there
    with the names of their concurrency pools (exactly the pools the Dagster ops use)."""
    with ops_session() as session:
        rows = describe_locations(session)
    if as_json:
        typer.echo(json.dumps([asdict(r) for r in rows], indent=2))
    elif not rows:
        typer.echo("no locations yet; apply a topology with `ccat topology apply FILE`")
    else:
        typer.echo(format_locations_table(rows))


def register(app: typer.Typer) -> None:
    app.command("list-locations")(list_locations_command)
