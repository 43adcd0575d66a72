"""``ccat quarantine``: the dark objects the consistency audit moved aside (docs/operations.md:
the consistency audit): list them, release one back under its key, or purge it for good."""

from __future__ import annotations

import getpass

import typer

from ccat_dagster.cli._common import OperatorError, ops_session
from ccat_dagster.cli._json import emit, json_option
from ccat_dagster.cli._tables import show, table

quarantine_app = typer.Typer(
    help="Dark objects the consistency audit quarantined: list, release, purge.",
    no_args_is_help=True,
)

FROM_SITE_HELP = (
    "Reach the storages as this site's code server would (its disks locally, other hosts over "
    "SSH); default: disks with a host over SSH."
)


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


@quarantine_app.command("list")
def list_command(
    location: str = typer.Option(None, "--location", "-l", help="Only this location."),
    as_json: bool = json_option(),
) -> None:
    """Every object in quarantine now: finding id, location, original key, size, when it was
    moved and where it is (`.ccat-quarantine/<date>/<key>` under the same location)."""
    from ccat_dagster.lifecycle.audit.quarantine import quarantined
    from ccat_dagster.lifecycle.common.locations import resolve_location

    with ops_session() as session:
        ids = [resolve_location(session, location).id] if location else None
        rows = quarantined(session, ids)
        if as_json:
            emit(
                [
                    {
                        "id": f.id,
                        "location": f.data_location.qualified_name,
                        "key": f.key,
                        "size": f.size,
                        "first_seen": f.first_seen,
                        "quarantined_at": f.acted_at,
                        "quarantine_key": f.quarantine_key,
                    }
                    for f in rows
                ]
            )
            return
        if not rows:
            typer.echo("nothing in quarantine")
            return
        found = table(
            "ID", "LOCATION", "KEY", "SIZE", "QUARANTINED", "NOW AT", right=("ID", "SIZE")
        )
        for f in rows:
            found.add_row(
                str(f.id),
                f.data_location.qualified_name,
                f.key,
                str(f.size if f.size is not None else "-"),
                f.acted_at.strftime("%Y-%m-%d %H:%M") if f.acted_at else "-",
                f.quarantine_key or "-",
            )
        show(found)


def _findings(session, ids: list[int]):
    from ccat_dagster.lifecycle.audit.quarantine import quarantined

    held = {f.id: f for f in quarantined(session)}
    unknown = [str(i) for i in ids if i not in held]
    if unknown:
        raise OperatorError(
            f"not in quarantine: {', '.join(unknown)} (`ccat quarantine list` shows the ids)"
        )
    return [held[i] for i in ids]


@quarantine_app.command("release")
def release_command(
    ids: list[int] = typer.Argument(..., help="Finding id(s) from `ccat quarantine list`."),
    from_site: str = typer.Option(None, "--from-site", help=FROM_SITE_HELP),
) -> None:
    """Move quarantined objects back under their keys. File them into the catalogue (or the
    audit finds them dark again and quarantines them after the next confirmation)."""
    from ccat_dagster.lifecycle.audit.quarantine import release
    from ccat_dagster.storage.factory import StorageRegistry

    with ops_session() as session, StorageRegistry(local_site=from_site) as storages:
        for finding in _findings(session, ids):
            release(session, finding, storages.get(finding.data_location), by=_user())
            session.commit()
            typer.echo(
                f"released {finding.data_location.qualified_name}:{finding.key} "
                f"(from {finding.quarantine_key})"
            )


@quarantine_app.command("purge")
def purge_command(
    ids: list[int] = typer.Argument(..., help="Finding id(s) from `ccat quarantine list`."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    from_site: str = typer.Option(None, "--from-site", help=FROM_SITE_HELP),
) -> None:
    """Delete quarantined objects for good (asks first, unless --yes)."""
    from ccat_dagster.lifecycle.audit.quarantine import purge
    from ccat_dagster.storage.factory import StorageRegistry

    with ops_session() as session, StorageRegistry(local_site=from_site) as storages:
        findings = _findings(session, ids)
        names = ", ".join(f"{f.data_location.qualified_name}:{f.quarantine_key}" for f in findings)
        if not yes and not typer.confirm(f"delete for good {names}?", default=False):
            raise OperatorError("nothing purged (confirm, or give --yes)")
        for finding in findings:
            existed = purge(session, finding, storages.get(finding.data_location), by=_user())
            session.commit()
            gone = "" if existed else " (it was already gone)"
            typer.echo(f"purged {finding.data_location.qualified_name}:{finding.key}{gone}")


def register(app: typer.Typer) -> None:
    app.add_typer(quarantine_app, name="quarantine")
