"""``ccat verify``: check the catalogue against the storage; exit 0 (no violation), 1
(violations) or 2 (it could not run: unknown site or location, bad option, no ops database)."""

from __future__ import annotations

import json
import os

import typer

from ccat_dagster.cli._common import operator_error_message, ops_session, register_operator_error
from ccat_dagster.cli._tables import progress as progress_bar
from ccat_dagster.lifecycle.integrity import VerifyScopeError

register_operator_error(VerifyScopeError)

#: exit code when verify could not run at all (1 means: it ran and found violations)
EXIT_UNUSABLE = 2


def _run_clauses():
    """(stale temporaries lister, dead runs) from the Dagster instance of ``DAGSTER_HOME`` (or
    ``$CCAT_HOME/dagster_home`` when it holds a dagster.yaml); (None, None) without an instance:
    then clauses (f) and (g) are reported as not checked."""
    from datetime import UTC, datetime

    from ccat_dagster.defs.temporaries import sweep_margin_seconds
    from ccat_dagster.lifecycle.temporaries import temporaries_older_than
    from ccat_dagster.run_health import dead_runs, temporaries_cutoff
    from ccat_dagster.runner import open_instance
    from ccat_ops_db.config import ccat_home

    home = os.environ.get("DAGSTER_HOME")
    if not home:
        default = ccat_home() / "dagster_home"
        if not (default / "dagster.yaml").exists():
            return None, None
        home = str(default)
    with open_instance(home) as instance:
        cutoff = temporaries_cutoff(instance, margin_seconds=sweep_margin_seconds())
        dead = [(d.run_id, f"{d.run.job_name}: {d.reason}") for d in dead_runs(instance)]
    return temporaries_older_than(datetime.fromtimestamp(cutoff, UTC)), dead


def _fail(message: str) -> typer.Exit:
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(EXIT_UNUSABLE)


def verify_command(
    site: list[str] = typer.Option(
        None, "--site", "-s", help="Only the locations of this site (repeatable)."
    ),
    location: list[str] = typer.Option(
        None, "--location", "-l", help="Only this location, site/name (repeatable)."
    ),
    sample: float = typer.Option(
        1.0,
        "--sample",
        help="Fraction of objects whose bytes are read, 0 < f <= 1 (every copy is still "
        "stat'ed; the catalogue checks stay complete).",
    ),
    seed: int = typer.Option(0, "--seed", help="Picks the sampled subset (same seed, same set)."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole report as JSON."),
    from_site: str = typer.Option(
        None,
        "--from-site",
        help="Reach the storages as this site's code server would (its disks locally, other "
        "hosts over SSH); default: disks with a host over SSH.",
    ),
    workers: int = typer.Option(4, "--workers", help="Objects checked in parallel."),
    limit: int = typer.Option(50, "--limit", help="Violations listed in the text output."),
) -> None:
    """Check the catalogue against the storage: every raw file has a good copy, every archived
    package a good copy in every active long-term archive, no archive copy was ever deleted,
    every deletion is on record with its rule and evidence, nothing under a final name is
    partial. Reads the bytes (not stored checksums). Exit 0: no violation; 1: violations; 2:
    could not run (unknown site/location, bad option, ops database unusable).
    """
    from ccat_dagster.lifecycle.integrity import verify_catalogue
    from ccat_dagster.storage.factory import StorageRegistry

    if not 0 < sample <= 1:
        raise _fail(f"--sample must be a fraction in (0, 1], e.g. 0.01 for 1 %; got {sample}")
    if workers < 1:
        raise _fail(f"--workers must be at least 1; got {workers}")
    try:
        stale_temporaries, dead = _run_clauses()
        with (
            ops_session() as session,
            StorageRegistry(local_site=from_site) as storages,
            progress_bar() as progress,
        ):
            report = verify_catalogue(
                session,
                storages.get,
                site=site or None,
                location=location or None,
                sample=sample,
                seed=seed,
                workers=workers,
                progress=progress,
                stale_temporaries=stale_temporaries,
                dead_runs=dead,
            )
    except Exception as exc:
        message = operator_error_message(exc)
        if message is None or os.environ.get("CCAT_DEBUG"):
            raise
        raise _fail(message) from exc
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        typer.echo(report.render(limit=limit))
    if not report.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("verify")(verify_command)
