"""``ccat run-until-idle`` and ``ccat status``: drive and inspect the pipeline."""

from __future__ import annotations

import typer

from ccat_dagster.cli._common import ops_session
from ccat_dagster.cli._json import emit, json_option
from ccat_dagster.cli._summary import show_summary, summary_document


def dagster_instance():
    """The Dagster instance of ``DAGSTER_HOME`` (default ``$CCAT_HOME/dagster_home``)."""
    from ccat_dagster.runner import default_dagster_home, open_instance

    return open_instance(default_dagster_home())


def run_until_idle_command(
    site: list[str] = typer.Option(
        None, "--site", "-s", help="Only these sites (default: every site of the topology)."
    ),
    max_passes: int = typer.Option(200, help="Stop after this many passes."),
    schedules: bool = typer.Option(
        True, "--schedules/--no-schedules", help="Run the schedules (the cleanup) too."
    ),
) -> None:
    """Tick every sensor (and schedule) and run what they request in-process, until idle.

    Uses the same Definitions, sensors and jobs as the daemon, against the Dagster instance in
    DAGSTER_HOME (default $CCAT_HOME/dagster_home), so `make ui` shows the runs. Runs left
    behind by a killed run-until-idle are marked failed first (their work is picked up again),
    and work that keeps failing is not retried again in the same invocation.

    Exit status: 0 idle, nothing failed; 1 idle, but runs or sensor ticks failed; 2 not idle:
    work is blocked (failing again and again, listed with the reason) or max passes reached.
    """
    from ccat_dagster.runner import load_site_definitions, run_until_idle

    with ops_session():
        pass  # schema check with a clear message
    report = run_until_idle(
        load_site_definitions(site or None),
        instance=dagster_instance(),
        max_passes=max_passes,
        include_schedules=schedules,
        log=lambda m: typer.echo(m, err=True),
    )
    state = "idle" if report.idle else "NOT idle"
    typer.echo(f"{state} after {report.passes} passes, {report.runs} runs")
    for job, n in sorted(report.by_job.items()):
        typer.echo(f"  {job}: {n}")
    if report.dead_runs:
        typer.echo(
            f"{len(report.dead_runs)} dead run(s) marked failed, their work picked up again:"
        )
        for line in report.dead_runs:
            typer.echo(f"  {line}")
    for tick in report.failed_ticks:
        typer.echo(f"failed tick: {tick}", err=True)
    if report.failed_runs:
        typer.echo(f"{len(report.failed_runs)} run(s) failed: " + ", ".join(report.failed_runs))
    if report.blocked:
        typer.echo(
            f"BLOCKED: {len(report.blocked)} request(s) kept failing and were not retried again "
            "(fix the cause, then run again):",
            err=True,
        )
        for blocked in report.blocked:
            typer.echo(f"  {blocked.describe()}", err=True)
    if report.stopped:
        typer.echo(report.stopped, err=True)
    if not report.idle:
        raise typer.Exit(2)
    if report.failed_runs or report.failed_ticks:
        raise typer.Exit(1)


def status_command(as_json: bool = json_option()) -> None:
    """Per-stage summary: packages, bundles, transfers, and where every copy is."""
    from ccat_dagster.lifecycle.summary import pipeline_summary

    with ops_session() as session:
        summary = pipeline_summary(session)
    if as_json:
        emit(summary_document(summary))
    else:
        show_summary(summary)


def register(app: typer.Typer) -> None:
    app.command("run-until-idle")(run_until_idle_command)
    app.command("status")(status_command)
