"""``ccat demo``: the whole chain on SQLite and local disks under CCAT_HOME; ``ccat demo
--prepare`` only makes the demo home (ops DB, topology, Dagster instance) that ``make ui`` opens.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from ccat_dagster.cli._common import ops_session, register_operator_error
from ccat_dagster.cli._summary import show_summary
from ccat_dagster.cli.pipeline import dagster_instance
from ccat_dagster.demo import DemoHomeError

register_operator_error(DemoHomeError)


def _demo_home() -> Path:
    home = Path(os.environ.setdefault("CCAT_HOME", str(Path(".ccat-demo").resolve())))
    os.environ.pop("CCAT_OPS_DB_URL", None)  # the demo is the embedded default
    return home


def _prepare(home: Path) -> None:
    """The demo home with its topology and Dagster instance, no data: all three code locations
    load with every asset, and ``ccat demo`` fills it later without starting afresh."""
    from ccat_dagster.demo import PREPARED, initialise_demo, prepare_demo_home
    from ccat_dagster.runner import default_dagster_home

    new = prepare_demo_home(home)
    with ops_session(create_schema=True) as session:
        initialise_demo(session, home)
    default_dagster_home()
    state = "prepared" if new else "kept as it is"
    typer.echo(
        f"demo home {home}: {state} (ops DB with the demo topology, Dagster instance in "
        f"{home / 'dagster_home'})"
    )
    if (home / PREPARED).exists():
        typer.echo(
            "no data yet. Next: `make demo` in another shell simulates observations and runs "
            "the pipeline into this home; the UI shows its runs and assets as they happen"
        )
    else:
        typer.echo(
            "it holds the data of an earlier `make demo`. To start afresh, stop the UI first: "
            "`make demo` deletes and re-creates the home"
        )


def demo_command(
    keep: bool = typer.Option(
        False, "--keep/--no-keep", help="Keep an existing demo home instead of starting afresh."
    ),
    prepare: bool = typer.Option(
        False,
        "--prepare",
        help="Only make the demo home (ops DB, topology, Dagster instance; no data) if it is not "
        "one yet; what `make ui` runs first.",
    ),
) -> None:
    """Run the whole chain on SQLite and local disks under CCAT_HOME (default ./.ccat-demo).

    A simulated instrument writes a few hundred files at the telescope and marks each finished
    observation; the telescope's ingest sensor files them (nobody runs `ccat files register`),
    the sensors and jobs of every site archive them in both LTAs, and the cleanup removes the
    telescope's temporary copies by the deletion rules. Exits 0 only if every file was filed and
    every package is ARCHIVED in every long-term archive. Refuses (exit 1, nothing touched) a
    CCAT_HOME that exists and is not a demo home.
    """
    from ccat_dagster.demo import (
        initialise_demo,
        mark_filled,
        reset_demo_home,
        simulate_observations,
        verify_demo,
    )
    from ccat_dagster.lifecycle.summary import pipeline_summary
    from ccat_dagster.runner import load_site_definitions, run_until_idle

    home = _demo_home()
    if prepare:
        _prepare(home)
        return
    if not keep:
        reset_demo_home(home)
    typer.echo(f"demo home: {home}")
    with ops_session(create_schema=True) as session:
        initialise_demo(session, home)
    mark_filled(home)  # from here on the home holds data: the next demo starts afresh
    data = simulate_observations(home)
    typer.echo(
        f"simulated instrument wrote {data.files} files ({data.bytes / 1e6:.1f} MB, "
        f"{data.obs_units} obs units x {data.modules} modules) and their markers; the ingest "
        "sensor files them"
    )
    report = run_until_idle(
        load_site_definitions(), instance=dagster_instance(), log=lambda m: typer.echo(m, err=True)
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


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
