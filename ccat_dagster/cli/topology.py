"""``ccat topology``: apply a sites-locations-and-routes YAML file to the ops database, or show
it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ccat_dagster.cli._common import ops_session, register_operator_error
from ccat_dagster.cli._reload import (
    RELOAD_COMMAND,
    WEBSERVER_URL_ENV,
    ReloadError,
    reload_code_locations,
)
from ccat_ops_db.topology import apply_topology, dump_topology, show_topology

register_operator_error(ReloadError)

topology_app = typer.Typer(help="Sites, data locations, routes and policy (the topology YAML).")


def _webserver_url_option() -> Any:
    return typer.Option(
        None,
        "--webserver-url",
        envvar=WEBSERVER_URL_ENV,
        help=(
            "The Dagster webserver (e.g. http://127.0.0.1:3000) through which the code "
            f"locations are reloaded; default ${WEBSERVER_URL_ENV}."
        ),
    )


def _reload(url: str) -> None:
    """Reload every code location through the webserver at ``url``; exit 1 if one failed."""
    outcomes = reload_code_locations(url)
    for outcome in outcomes:
        typer.echo(outcome.line())
    if not all(outcome.ok for outcome in outcomes):
        raise typer.Exit(1)


@topology_app.command("apply")
def apply_command(
    file: Path = typer.Argument(..., help="Topology YAML (format: docs/configuration.md)."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Validate and print the changes, write nothing."
    ),
    webserver_url: str | None = _webserver_url_option(),
) -> None:
    """Validate FILE completely, then make the database match it in one transaction.

    Re-applying the same file changes nothing; a site, location or route missing from FILE is
    deactivated, never deleted (routes: DIRECT, RELAY, CUSTOM overrides of the round-robin).
    Creates the schema first if the database has none. After a change, the code locations are
    reloaded through the webserver when its URL is known (--webserver-url or
    CCAT_DAGSTER_WEBSERVER_URL); otherwise the command that does it is printed.
    """
    with ops_session(create_schema=True) as session:
        summary = apply_topology(session, file)
        for line in summary.lines():
            typer.echo(line)
        if dry_run:
            session.rollback()
            typer.echo("dry run: nothing was written")
            return
    if not summary.changed:
        return
    # The code locations hold the topology they loaded: they see the change once reloaded.
    if webserver_url:
        _reload(webserver_url)
    else:
        typer.echo(
            f"the code locations load the topology when they load; reload them: {RELOAD_COMMAND}"
        )


@topology_app.command("reload")
def reload_command(webserver_url: str | None = _webserver_url_option()) -> None:
    """Reload every Dagster code location through the webserver, without restarting the code
    servers, so they build their assets and sensors from the topology in the ops DB now."""
    if not webserver_url:
        raise ReloadError(
            f"no webserver to ask: give --webserver-url http://HOST:PORT or set {WEBSERVER_URL_ENV}"
        )
    _reload(webserver_url)


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
