"""``ccat staging``: create, list and complete StagingJobs (archived data for processing)."""

from __future__ import annotations

import getpass

import typer

from ccat_dagster.cli._common import ops_session, register_operator_error
from ccat_dagster.cli._json import emit, json_option
from ccat_dagster.cli._tables import show, table
from ccat_dagster.lifecycle.staging.requests import StagingError

register_operator_error(StagingError)

staging_app = typer.Typer(
    help="Stage archived RawDataPackages to a PROCESSING location, and release them when done."
)


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


@staging_app.command("create")
def create_command(
    location: str = typer.Option(
        ..., "--location", "-l", help="The PROCESSING location (site/name or a unique name)."
    ),
    package: list[str] = typer.Option(
        None, "--package", "-p", help="A RawDataPackage name (repeat for more)."
    ),
    obs_unit: list[str] = typer.Option(
        None, "--obs-unit", "-o", help="An ExecutedObsUnit name or id: all its packages."
    ),
    retention_days: float = typer.Option(
        None,
        "--retention-days",
        help="How long you expect to need the files (default: the location's or the policy's "
        "retention period). The files stay until the job is completed, whatever the "
        "retention; `ccat staging list` flags active jobs past it.",
    ),
) -> None:
    """Create a StagingJob; the staging sensor of the location's site then stages the data."""
    from ccat_dagster.lifecycle.staging.requests import create_staging_job

    if bool(package) == bool(obs_unit):
        raise StagingError("give either --package NAME... or --obs-unit ID..., not both or neither")
    with ops_session() as session:
        job = create_staging_job(
            session,
            location=location,
            packages=package or (),
            obs_units=obs_unit or (),
            retention_days=retention_days,
            requested_by=_user(),
        )
        dest = job.destination_location
        typer.echo(
            f"staging job {job.id} created: {len(job.raw_data_packages)} package(s) to "
            f"{dest.qualified_name}, retention "
            f"{(job.retention_period_minutes or 0) / (24 * 60):g} days. The "
            f"{dest.site.short_name}_staging_sensor stages them (or run `ccat run-until-idle`); "
            f"when done: `ccat staging complete {job.id}`"
        )


def _past_retention(job, now) -> bool:
    """Active past its retention: the files stay; the requester should complete it."""
    from ccat_dagster.lifecycle.staging.requests import retention_ends_at

    ends = retention_ends_at(job)
    return bool(job.active and ends is not None and ends <= now)


@staging_app.command("list")
def list_command(
    active: bool = typer.Option(False, "--active", help="Only active jobs."),
    location: str = typer.Option(None, "--location", "-l", help="Only jobs to this location."),
    as_json: bool = json_option(),
) -> None:
    """Every StagingJob: id, active, status, destination, packages staged of all, retention end,
    failure.

    An active job past its retention keeps its files; it is flagged so its requester is asked
    to complete it."""
    from ccat_dagster.lifecycle.common.locations import resolve_location
    from ccat_dagster.lifecycle.staging.requests import (
        list_staging_jobs,
        retention_ends_at,
        staged_counts,
    )
    from ccat_ops_db.models import utcnow

    with ops_session() as session:
        loc = resolve_location(session, location) if location else None
        jobs = list_staging_jobs(session, active_only=active, location=loc)
        staged = staged_counts(session, jobs)
        now = utcnow()
        if as_json:
            emit(
                [
                    {
                        "id": job.id,
                        "active": job.active,
                        "status": job.status.value,
                        "location": job.destination_location.qualified_name,
                        "packages": sorted(p.name for p in job.raw_data_packages),
                        "staged": staged[job.id],
                        "retention_ends_at": retention_ends_at(job),
                        "past_retention": _past_retention(job, now),
                        "requested_by": job.requested_by,
                        "failure_reason": job.failure_reason,
                    }
                    for job in jobs
                ]
            )
            return
        if not jobs:
            typer.echo("no staging jobs")
            return
        jobs_table = table(
            "ID",
            "ACTIVE",
            "STATUS",
            "LOCATION",
            "STAGED",
            "RETENTION ENDS",
            "REQUESTED BY / FAILURE",
            right=("ID", "STAGED"),
        )
        for job in jobs:
            dest = job.destination_location
            ends = retention_ends_at(job)
            extra = job.failure_reason or job.requested_by or ""
            if _past_retention(job, now):
                extra = f"retention over, still active: complete it when done. {extra}".strip()
            jobs_table.add_row(
                str(job.id),
                "yes" if job.active else "no",
                job.status.value,
                f"{dest.site.short_name}/{dest.name}",
                f"{staged[job.id]}/{len(job.raw_data_packages)}",
                ends.strftime("%Y-%m-%d %H:%M") if ends else "-",
                extra,
            )
        show(jobs_table)


@staging_app.command("complete")
def complete_command(
    job_ids: list[int] = typer.Argument(..., help="StagingJob id(s)."),
) -> None:
    """Mark jobs done (active=False): their files go at the next cleanup unless another active
    job still uses them."""
    from ccat_dagster.lifecycle.staging.requests import complete_staging_job, get_staging_job

    with ops_session() as session:
        for job_id in job_ids:
            get_staging_job(session, job_id)  # all ids valid before any is changed
        for job_id in job_ids:
            job, changed = complete_staging_job(session, job_id)
            site = job.destination_location.site.short_name
            if changed:
                typer.echo(
                    f"staging job {job_id} completed (inactive); its files are deleted by the "
                    f"next `{site}_cleanup` unless another active job uses them"
                )
            else:
                typer.echo(f"staging job {job_id} was already completed; nothing changed")


def register(app: typer.Typer) -> None:
    app.add_typer(staging_app, name="staging")
