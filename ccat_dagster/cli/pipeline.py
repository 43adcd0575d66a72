"""``ccat run-until-idle``, ``ccat status`` and ``ccat demo``: drive and inspect the pipeline."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from ccat_dagster.cli._common import ops_session, register_operator_error
from ccat_dagster.cli._summary import show_summary
from ccat_dagster.lifecycle.recovery import RetryError

register_operator_error(RetryError)


def _instance():
    from ccat_dagster.runner import default_dagster_home, open_instance

    return open_instance(default_dagster_home())


def run_until_idle_command(
    site: list[str] = typer.Option(
        None, "--site", "-s", help="Only these sites (default: every site of the topology)."
    ),
    max_passes: int = typer.Option(200, help="Stop after this many passes."),
    no_schedules: bool = typer.Option(False, help="Do not run the schedules (cleanup)."),
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
        instance=_instance(),
        max_passes=max_passes,
        include_schedules=not no_schedules,
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


def status_command() -> None:
    """Per-stage summary: packages, bundles, transfers, and where every copy is."""
    from ccat_dagster.lifecycle.summary import pipeline_summary

    with ops_session() as session:
        show_summary(pipeline_summary(session))


def demo_command(
    keep: bool = typer.Option(False, help="Keep an existing demo home instead of starting afresh."),
) -> None:
    """Run the whole chain on SQLite and local disks under CCAT_HOME (default ./.ccat-demo).

    A simulated instrument writes a few hundred files at the telescope and marks each finished
    observation; the telescope's ingest sensor files them (nobody runs `ccat files register`),
    the sensors and jobs of every site archive them in both LTAs, and the cleanup removes the
    telescope's temporary copies by the deletion rules. Exits 0 only if every file was filed and
    every package is ARCHIVED in every long-term archive.
    """
    from ccat_dagster.demo import (
        initialise_demo,
        reset_demo_home,
        simulate_observations,
        verify_demo,
    )
    from ccat_dagster.lifecycle.summary import pipeline_summary
    from ccat_dagster.runner import load_site_definitions, run_until_idle

    home = Path(os.environ.setdefault("CCAT_HOME", str(Path(".ccat-demo").resolve())))
    os.environ.pop("CCAT_OPS_DB_URL", None)  # the demo is the embedded default
    if not keep:
        reset_demo_home(home)
    typer.echo(f"demo home: {home}")
    with ops_session(create_schema=True) as session:
        initialise_demo(session, home)
    data = simulate_observations(home)
    typer.echo(
        f"simulated instrument wrote {data.files} files ({data.bytes / 1e6:.1f} MB, "
        f"{data.obs_units} obs units x {data.modules} modules) and their markers; the ingest "
        "sensor files them"
    )
    report = run_until_idle(
        load_site_definitions(), instance=_instance(), log=lambda m: typer.echo(m, err=True)
    )
    typer.echo(f"pipeline idle after {report.passes} passes and {report.runs} runs:")
    for job, n in sorted(report.by_job.items()):
        typer.echo(f"  {job}: {n} run(s)")
    with ops_session() as session:
        show_summary(pipeline_summary(session))
        problems = verify_demo(session, data)
    problems += [f"blocked: {b.describe()}" for b in report.blocked]
    problems += [report.stopped] if report.stopped else []
    if problems or report.failed_runs or report.failed_ticks:
        for p in problems + report.failed_runs + report.failed_ticks:
            typer.echo(f"PROBLEM: {p}", err=True)
        raise typer.Exit(1)
    typer.echo("demo OK: every package ARCHIVED in every long-term archive. `make ui` shows it.")


def retry_command(
    package: list[str] = typer.Option(
        None, "--package", "-p", help="Only these raw data packages (default: every FAILED one)."
    ),
) -> None:
    """Reset FAILED packages and their failed operations to PENDING after the cause is fixed.

    Retry counts start again from zero; every change is audited; nothing is deleted. The
    sensors (or `ccat run-until-idle`) then pick the work up again.
    """
    from ccat_dagster.lifecycle.recovery import retry_failed

    with ops_session() as session:
        summary = retry_failed(session, package_names=package or ())
    for line in summary.lines():
        typer.echo(line)


def register(app: typer.Typer) -> None:
    app.command("retry")(retry_command)
    app.command("run-until-idle")(run_until_idle_command)
    app.command("status")(status_command)
    app.command("demo")(demo_command)
