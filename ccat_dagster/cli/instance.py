"""``ccat instance init``: write the Dagster instance config from the packaged template."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from ccat_dagster.cli._common import register_operator_error
from ccat_dagster.instance import (
    InstanceConfigExistsError,
    template_name,
    template_path,
    write_instance_config,
)

instance_app = typer.Typer(help="The Dagster instance config ($DAGSTER_HOME/dagster.yaml).")

register_operator_error(InstanceConfigExistsError)


@instance_app.command("init")
def init_command(
    home: Path | None = typer.Option(
        None,
        "--home",
        help="Directory to write dagster.yaml into (default: $DAGSTER_HOME).",
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing dagster.yaml."),
) -> None:
    """Write dagster.yaml: the PostgreSQL template when DAGSTER_PG_URL or DAGSTER_PG_HOST is
    set, else the SQLite one (both in ccat_dagster/instance_templates/)."""
    if home is None:
        if not os.environ.get("DAGSTER_HOME"):
            raise typer.BadParameter("set DAGSTER_HOME or pass --home DIR", param_hint="--home")
        home = Path(os.environ["DAGSTER_HOME"])
    name = template_name()
    target = write_instance_config(home, replace=force)
    typer.echo(f"wrote {target} from {template_path(name)}")


def register(app: typer.Typer) -> None:
    app.add_typer(instance_app, name="instance")
