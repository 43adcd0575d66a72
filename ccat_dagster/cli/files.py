"""``ccat files``: register raw data files an instrument wrote at a SOURCE location."""

from __future__ import annotations

import getpass
import os
from pathlib import Path

import typer

from ccat_dagster.cli._common import ops_session, register_operator_error
from ccat_dagster.cli._tables import progress
from ccat_dagster.lifecycle.ingest.filing import register_raw_data_files
from ccat_dagster.lifecycle.ingest.lost_files import LostFileError

register_operator_error(LostFileError)

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
    with ops_session(create_schema=True) as session, progress() as update:
        result = register_raw_data_files(
            session, location, obs_unit, instrument_module, absolute, progress=update
        )
    typer.echo(
        f"registered {result.registered} new file(s) at {result.location} "
        f"(obs unit {result.obs_unit}, instrument module {result.instrument_module}); "
        f"{result.already_registered} already registered"
    )


@files_app.command("declare-lost")
def declare_lost_command(
    paths: list[str] = typer.Argument(
        ...,
        help="The lost files: paths relative to the location root, as registered (the failure "
        "reason of their package names them), or absolute paths under the root.",
    ),
    location: str = typer.Option(
        ..., "--location", "-l", help="SOURCE location: site/name, or a name unique across sites."
    ),
    reason: str = typer.Option(
        ..., "--reason", help="Why the files are lost, for the audit log (required)."
    ),
) -> None:
    """Declare SOURCE files lost that vanished before they were packaged, so the rest of their
    obs unit and module is packaged and archived without them.

    Their SOURCE copies become LOST and the files are marked lost, audited with the reason and
    who declared them; their package goes back to PENDING with its retries reset (or, if every
    file of it is lost, is closed with nothing to archive). Refused, with nothing changed, for a
    file that still exists on disk or whose bytes are safe in a package copy or an archive.
    `ccat status` lists packages with lost files.
    """
    from ccat_dagster.lifecycle.ingest.lost_files import declare_files_lost

    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = None
    with ops_session() as session:
        result = declare_files_lost(session, location, paths, reason=reason, declared_by=who)
    for line in result.lines():
        typer.echo(line)
    if result.packages_reset:
        typer.echo("the packaging sensor (or `ccat run-until-idle`) packages them again")


def register(app: typer.Typer) -> None:
    app.add_typer(files_app, name="files")
