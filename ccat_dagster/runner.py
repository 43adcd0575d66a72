"""``ccat run-until-idle``: drive the pipeline in-process without a daemon.

Evaluates the sensors (and the schedules) of every site's Definitions against a real, persistent
Dagster instance, applies their partition requests and cursors, and executes the runs they
request in-process, pass after pass, until a whole pass requests nothing. The definitions,
sensors and jobs are exactly the ones the daemon uses; only the loop is ours. Meant for the
demo, tests and small sites without a daemon.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dagster import (
    DagsterInstance,
    Definitions,
    build_schedule_context,
    build_sensor_context,
)
from dagster._core.definitions.dynamic_partitions_request import (
    AddDynamicPartitionsRequest,
    DeleteDynamicPartitionsRequest,
)

from ccat_ops_db.config import ccat_home

CURSOR_PREFIX = "ccat_run_until_idle"


@dataclass
class RunnerReport:
    passes: int = 0
    runs: int = 0
    failed_runs: list[str] = field(default_factory=list)
    failed_ticks: list[str] = field(default_factory=list)
    by_job: dict[str, int] = field(default_factory=dict)


def default_dagster_home() -> Path:
    """``DAGSTER_HOME``, else ``$CCAT_HOME/dagster_home`` (created, with the default config)."""
    home = Path(os.environ.get("DAGSTER_HOME") or ccat_home() / "dagster_home")
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        from ccat_dagster.instance import write_instance_config

        write_instance_config(home)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def _console_level() -> str:
    """Console log level of in-process runs (``CCAT_RUN_LOG_LEVEL``; the full event log is in
    the Dagster instance either way)."""
    return os.environ.get("CCAT_RUN_LOG_LEVEL", "WARNING").upper()


def _cursor_key(name: str) -> str:
    return f"{CURSOR_PREFIX}:{name}"


def _apply_partition_requests(instance: DagsterInstance, requests: Sequence) -> None:
    for request in requests or []:
        if isinstance(request, AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(
                request.partitions_def_name, list(request.partition_keys)
            )
        elif isinstance(request, DeleteDynamicPartitionsRequest):
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)


def _execute(
    instance: DagsterInstance,
    defs: Definitions,
    job_name: str,
    request,
    report: RunnerReport,
    log: Callable[[str], None],
) -> None:
    job = defs.resolve_job_def(job_name)
    run_config = dict(request.run_config or {})
    run_config.setdefault("loggers", {"console": {"config": {"log_level": _console_level()}}})
    result = job.execute_in_process(
        run_config=run_config,
        instance=instance,
        tags=dict(request.tags),
        raise_on_error=False,
    )
    report.runs += 1
    report.by_job[job_name] = report.by_job.get(job_name, 0) + 1
    if not result.success:
        report.failed_runs.append(f"{job_name} ({result.run_id})")
        log(f"run {job_name} {result.run_id} FAILED (see the run in the UI / `dagster` logs)")


def _tick_failed(report: RunnerReport, name: str, exc: Exception, log) -> None:
    cause = exc.__cause__ or exc
    message = f"{name}: {type(cause).__name__}: {cause}"
    if message not in report.failed_ticks:
        report.failed_ticks.append(message)
        log(f"tick of {message}")


def _tick_sensors(instance: DagsterInstance, defs: Definitions, report: RunnerReport, log) -> int:
    repo = defs.get_repository_def()
    launched = 0
    for sensor_def in repo.sensor_defs:
        key = _cursor_key(sensor_def.name)
        cursor = instance.run_storage.get_cursor_values({key}).get(key)
        try:
            with build_sensor_context(
                instance=instance,
                cursor=cursor,
                definitions=defs,
                sensor_name=sensor_def.name,
                resources=defs.resources,
            ) as context:
                data = sensor_def.evaluate_tick(context)
        except Exception as exc:  # noqa: BLE001 - like the daemon: record the tick, go on
            _tick_failed(report, sensor_def.name, exc, log)
            continue
        _apply_partition_requests(instance, data.dynamic_partitions_requests)
        if data.cursor is not None and data.cursor != cursor:
            instance.run_storage.set_cursor_values({key: data.cursor})
        for request in data.run_requests or []:
            job_name = request.job_name or sensor_def.job_name
            _execute(instance, defs, job_name, request, report, log)
            launched += 1
    return launched


def _tick_schedules(instance: DagsterInstance, defs: Definitions, report: RunnerReport, log) -> int:
    repo = defs.get_repository_def()
    launched = 0
    for schedule_def in repo.schedule_defs:
        try:
            with build_schedule_context(
                instance=instance, repository_def=repo, resources=defs.resources
            ) as context:
                data = schedule_def.evaluate_tick(context)
        except Exception as exc:  # noqa: BLE001 - like the daemon: record the tick, go on
            _tick_failed(report, schedule_def.name, exc, log)
            continue
        for request in data.run_requests or []:
            _execute(
                instance, defs, request.job_name or schedule_def.job_name, request, report, log
            )
            launched += 1
    return launched


def run_until_idle(
    definitions: Sequence[Definitions],
    *,
    instance: DagsterInstance,
    max_passes: int = 200,
    include_schedules: bool = True,
    log: Callable[[str], None] = print,
) -> RunnerReport:
    """Tick every sensor (then, when they are quiet, every schedule) until nothing is requested."""
    from ccat_dagster.defs.availability import probe_unavailable_now

    probe_unavailable_now(definitions, instance)  # what answers again is worked on at once
    report = RunnerReport()
    while report.passes < max_passes:
        report.passes += 1
        launched = sum(_tick_sensors(instance, d, report, log) for d in definitions)
        if launched == 0 and include_schedules:
            launched = sum(_tick_schedules(instance, d, report, log) for d in definitions)
        if launched == 0:
            return report
    log(f"stopped after {max_passes} passes with work still being requested")
    return report


def load_site_definitions(sites: Sequence[str] | None = None, ops_db_url: str | None = None):
    """The Definitions of the given sites (default: every site of the topology)."""
    from ccat_dagster.defs.definitions import build_site_definitions
    from ccat_dagster.defs.topology import load_topology_snapshot

    snapshot = load_topology_snapshot(ops_db_url)
    names = list(sites) if sites else [s.short_name for s in snapshot.sites]
    return [
        build_site_definitions(name, ops_db_url=ops_db_url, snapshot=snapshot) for name in names
    ]
