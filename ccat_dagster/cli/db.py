"""``ccat db``: create or migrate the ops-database schema and show its revision."""

from __future__ import annotations

import typer

from ccat_dagster.cli._common import head_revision, shown_url
from ccat_ops_db.config import ops_db_url

db_app = typer.Typer(help="The ops database (CCAT_OPS_DB_URL, default SQLite in CCAT_HOME).")


@db_app.command("upgrade")
def upgrade_command() -> None:
    """Create the ops-database schema, or migrate it to the newest revision."""
    from ccat_ops_db.migrate import current, upgrade

    url = ops_db_url()
    upgrade(url)
    typer.echo(f"ops database at {shown_url(url)} is at revision {current(url)} (head)")


@db_app.command("current")
def current_command() -> None:
    """Show the schema revision of the ops database."""
    from ccat_ops_db.migrate import current

    url = ops_db_url()
    revision, head = current(url), head_revision()
    if revision is None:
        typer.echo(f"ops database at {shown_url(url)}: no schema; run `ccat db upgrade`")
    elif revision == head:
        typer.echo(f"ops database at {shown_url(url)}: revision {revision} (head)")
    else:
        typer.echo(
            f"ops database at {shown_url(url)}: revision {revision}, head is {head}; "
            "run `ccat db upgrade`"
        )


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
