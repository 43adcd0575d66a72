"""``ccat topology``: apply a sites-and-locations YAML file to the ops database, or show it."""

from __future__ import annotations

from pathlib import Path

import typer

from ccat_dagster.cli._common import ops_session
from ccat_ops_db.topology import apply_topology, dump_topology, show_topology

topology_app = typer.Typer(help="Sites, data locations and policy (the topology YAML).")


@topology_app.command("apply")
def apply_command(
    file: Path = typer.Argument(..., help="Topology YAML (format: docs/configuration.md)."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Validate and print the changes, write nothing."
    ),
) -> None:
    """Validate FILE completely, then make the database match it in one transaction.

    Re-applying the same file changes nothing; a location missing from FILE is deactivated,
    never deleted. Creates the schema first if the database has none.
    """
    with ops_session(create_schema=True) as session:
        summary = apply_topology(session, file)
        for line in summary.lines():
            typer.echo(line)
        if dry_run:
            session.rollback()
            typer.echo("dry run: nothing was written")


@topology_app.command("show")
def show_command() -> None:
    """Print the topology stored in the ops database as YAML (re-applying it changes nothing)."""
    with ops_session() as session:
        topology = show_topology(session)
    if not topology["sites"]:
        typer.echo("no sites yet; apply a topology with `ccat topology apply FILE`", err=True)
    typer.echo(dump_topology(topology), nl=False)


def register(app: typer.Typer) -> None:
    app.add_typer(topology_app, name="topology")
