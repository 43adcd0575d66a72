"""``ccat retry``: give failed work another chance after an operator fixed the cause: FAILED
packages and their operations, and deletions that failed ``max_retries`` times."""

from __future__ import annotations

import getpass

import typer

from ccat_dagster.cli._common import OperatorError, ops_session, register_operator_error
from ccat_dagster.lifecycle.recovery import RetryError

register_operator_error(RetryError)


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


def retry_command(
    package: list[str] = typer.Option(
        None,
        "--package",
        "-p",
        help="Only these raw data packages (default: every FAILED one); no deletion is reset.",
    ),
    location: str = typer.Option(
        None,
        "--location",
        "-l",
        help="Only the failed deletions at this location (site/name or a unique name); no "
        "package is reset.",
    ),
) -> None:
    """Reset failed work after the cause is fixed: FAILED packages and failed deletions.

    FAILED packages and their failed operations go back to PENDING; copies whose deletion
    failed `max_retries` times (DELETION_FAILED) get their retries back. Retry counts start
    again from zero; every change is audited; nothing is deleted here. The sensors (or `ccat
    run-until-idle`) pick the packages up again; the next cleanup evaluates the copies by the
    deletion rules again and deletes them only if the rules still allow it.
    """
    from ccat_dagster.lifecycle.common.locations import resolve_location
    from ccat_dagster.lifecycle.deletion.retry import retry_failed_deletions
    from ccat_dagster.lifecycle.recovery import retry_failed

    if package and location:
        raise OperatorError(
            "give --package (packages) or --location (failed deletions), not both; without "
            "either, `ccat retry` resets both everywhere"
        )
    summary, deletions = None, {}
    with ops_session() as session:
        if not location:
            try:
                summary = retry_failed(session, package_names=package or ())
            except RetryError:
                if package:
                    raise  # an unknown package name: say which
        if not package:
            loc = resolve_location(session, location) if location else None
            deletions = retry_failed_deletions(session, location=loc, reset_by=_user())
    if summary is None and not deletions:
        where = f" at {location}" if location else ""
        raise OperatorError(
            f"nothing to retry{where}: no FAILED raw data package and no permanently failed "
            "deletion (`ccat status`, `ccat deletion-plan`)"
        )
    if summary is not None:
        for line in summary.lines():
            typer.echo(line)
    for name, n in sorted(deletions.items()):
        typer.echo(
            f"failed deletions reset at {name}: {n} (the next cleanup evaluates them by the "
            "rules again)"
        )


def register(app: typer.Typer) -> None:
    app.command("retry")(retry_command)
