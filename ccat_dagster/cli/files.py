"""``ccat files``: register raw data files an instrument wrote at a SOURCE location."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from ccat_dagster.cli._common import ops_session
from ccat_dagster.lifecycle.filing import register_raw_data_files

files_app = typer.Typer(help="Raw data files at SOURCE locations.")


@files_app.command("register")
def register_command(
    paths: list[Path] = typer.Argument(
        ..., help="Files or directories (every regular file below) under the location root."
    ),
    location: str = typer.Option(
        ..., "--location", "-l", help="SOURCE location: site/name, or a name unique across sites."
    ),
    obs_unit: str = typer.Option(..., "--obs-unit", help="ExecutedObsUnit name (created if new)."),
    instrument_module: str = typer.Option(
        ..., "--instrument-module", help="InstrumentModule name (created if new)."
    ),
) -> None:
    """Register files at a SOURCE location: size, checksum and a PRESENT copy for each.

    All paths are checked first; any problem rejects the whole call and nothing is written.
    Registering a file again is a no-op. Creates the schema first if the database has none.
    """
    # In a shell a relative path means "from here" (the library takes them from the root).
    absolute = [os.path.abspath(p) for p in paths]
    with ops_session(create_schema=True) as session:
        result = register_raw_data_files(session, location, obs_unit, instrument_module, absolute)
    typer.echo(
        f"registered {result.registered} new file(s) at {result.location} "
        f"(obs unit {result.obs_unit}, instrument module {result.instrument_module}); "
        f"{result.already_registered} already registered"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(files_app, name="files")
