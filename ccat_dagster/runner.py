"""``ccat run-until-idle``: drive the pipeline in-process without a daemon.

Evaluates the sensors (and the schedules) of every site's Definitions against a real, persistent
Dagster instance, applies their partition requests and cursors, and executes the runs they
request in-process, pass after pass, until a whole pass requests nothing. The definitions,
sensors and jobs are exactly the ones the daemon uses; only the loop is ours. Every run is
tagged with this process's identity (``run_health``): runs of a killed invocation are found,
failed and their deletion claims released (at the start and every pass), temporaries no live
run can own are removed at the start, and a request that keeps failing is blocked for the rest
of the invocation (``run_failures``). Meant for the demo, tests and small sites without a daemon.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from dagster import (
    AddDynamicPartitionsRequest,
    DagsterInstance,
    Definitions,
    DeleteDynamicPartitionsRequest,
    RepositoryDefinition,
    ResourceDefinition,
    ScheduleEvaluationContext,
    build_resources,
    build_schedule_context,
    build_sensor_context,
)

from ccat_dagster.run_failures import (
    DEFAULT_MAX_REQUEST_FAILURES,
    FAILURES_BEYOND_RETRY_BUDGET,
    BlockedRequest,
    FailureStreaks,
    failure_reason,
)
from ccat_dagster.run_health import fail_dead_runs, owner_tags
from ccat_ops_db.config import ccat_home

CURSOR_PREFIX = "ccat_run_until_idle"


@dataclass
class RunnerReport:
    passes: int = 0
    runs: int = 0
    failed_runs: list[str] = field(default_factory=list)
    failed_ticks: list[str] = field(default_factory=list)
    by_job: dict[str, int] = field(default_factory=dict)
    #: requests that kept failing and were not retried any more in this invocation
    blocked: list[BlockedRequest] = field(default_factory=list)
    #: runs found without a live process and marked failed (their claims released)
    dead_runs: list[str] = field(default_factory=list)
    #: what the sweep of temporaries at the start did, per site
    temporaries: list[str] = field(default_factory=list)
    #: set when max_passes was reached with work still being requested
    stopped: str | None = None

    @property
    def idle(self) -> bool:
        """True when the pipeline ran out of work, not out of passes or into blocked work."""
        return not self.blocked and self.stopped is None


def open_instance(home: str | os.PathLike) -> DagsterInstance:
    """The Dagster instance of ``home``, opened under ``ccat_dagster.instance.instance_lock``.

    Every process that may be the first to open a DAGSTER_HOME opens it this way (the CLI, a
    run-until-idle, the tests' child processes); one that calls ``DagsterInstance.from_config``
    directly can race another's schema creation ("table alembic_version already exists").
    """
    from ccat_dagster.instance import instance_lock

    with instance_lock(home):
        return DagsterInstance.from_config(str(home))


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
    """Console log level of in-process runs (``Settings.run_log_level``, ``CCAT_RUN_LOG_LEVEL``;
    the full event log is in the Dagster instance either way)."""
    from ccat_dagster.defs.settings import Settings

    return Settings.from_env().run_log_level


def _cursor_key(name: str) -> str:
    return f"{CURSOR_PREFIX}:{name}"


def _apply_partition_requests(
    instance: DagsterInstance,
    requests: Sequence[AddDynamicPartitionsRequest | DeleteDynamicPartitionsRequest] | None,
) -> None:
    for request in requests or []:
        if isinstance(request, AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(
                request.partitions_def_name, list(request.partition_keys)
            )
        elif isinstance(request, DeleteDynamicPartitionsRequest):
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)


@dataclass
class _Loop:
    """What one invocation carries from run to run."""

    instance: DagsterInstance
    report: RunnerReport
    streaks: FailureStreaks
    log: Callable[[str], None]
    owner: dict[str, str]
    #: per Definitions (by identity): its resources, initialized once for the invocation
    resources: dict[int, Mapping[str, ResourceDefinition]] = field(default_factory=dict)

    def resources_of(self, defs: Definitions) -> Mapping[str, ResourceDefinition]:
        return self.resources.get(id(defs), defs.resources or {})


@contextmanager
def _initialized_resources(
    definitions: Sequence[Definitions], instance: DagsterInstance
) -> Iterator[dict[int, Mapping[str, ResourceDefinition]]]:
    """Every Definitions' resources, initialized once for the whole invocation (torn down at
    its end) and handed to each tick as they are.

    The daemon initializes a sensor's resources anew for every tick; Dagster's initialization of
    a ConfigurableResource (pydantic copies, config processing) costs ~10 ms each, a third of
    an idle sensor tick, on every sensor of every pass. The resources are the same objects with
    the same config either way; runs still initialize their own."""
    with ExitStack() as stack:
        built: dict[int, Mapping[str, ResourceDefinition]] = {}
        for defs in definitions:
            resources = defs.resources or {}
            if not resources:
                continue
            ready = stack.enter_context(build_resources(resources, instance=instance))
            built[id(defs)] = {
                key: ResourceDefinition.hardcoded_resource(getattr(ready, key)) for key in resources
            }
        yield built


def _execute(loop: _Loop, defs: Definitions, job_name: str, request) -> bool:
    """Execute the requested run in-process; False (nothing run) when the request is blocked."""
    report, log = loop.report, loop.log
    requested = dict(request.run_config or {})
    key = loop.streaks.key(job_name, requested)
    if loop.streaks.is_blocked(key):
        return False
    job = defs.resolve_job_def(job_name)
    run_config = dict(requested)
    run_config.setdefault("loggers", {"console": {"config": {"log_level": _console_level()}}})
    result = job.execute_in_process(
        run_config=run_config,
        instance=loop.instance,
        tags={**dict(request.tags), **loop.owner},
        raise_on_error=False,
    )
    report.runs += 1
    report.by_job[job_name] = report.by_job.get(job_name, 0) + 1
    if result.success:
        loop.streaks.succeeded(job_name)
        return True
    report.failed_runs.append(f"{job_name} ({result.run_id})")
    log(f"run {job_name} {result.run_id} FAILED (see the run in the UI / `dagster` logs)")
    failures = loop.streaks.failed(key, result.run_id)
    if loop.streaks.is_blocked(key):
        blocked = BlockedRequest(
            job_name, requested, failures, result.run_id, failure_reason(result)
        )
        report.blocked.append(blocked)
        log(f"not retried again in this invocation: {blocked.describe()}")
    return True


def _tick_failed(report: RunnerReport, name: str, exc: Exception, log) -> None:
    cause = exc.__cause__ or exc
    message = f"{name}: {type(cause).__name__}: {cause}"
    if message not in report.failed_ticks:
        report.failed_ticks.append(message)
        log(f"tick of {message}")


def _tick_sensors(loop: _Loop, defs: Definitions) -> int:
    instance, report, log = loop.instance, loop.report, loop.log
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
                resources=loop.resources_of(defs),
            ) as context:
                data = sensor_def.evaluate_tick(context)
        except Exception as exc:  # noqa: BLE001 - like the daemon: record the tick, go on
            _tick_failed(report, sensor_def.name, exc, log)
            continue
        _apply_partition_requests(instance, data.dynamic_partitions_requests)
        # as the daemon does: a sensor's observations and check results go to the instance
        for event in data.asset_events or []:
            instance.report_runless_asset_event(event)
        if data.cursor is not None and data.cursor != cursor:
            instance.run_storage.set_cursor_values({key: data.cursor})
        for request in data.run_requests or []:
            job_name = request.job_name or sensor_def.job_name
            if job_name is None:  # a sensor of ours targets one job
                raise ValueError(f"sensor {sensor_def.name} requested a run of no job")
            launched += _execute(loop, defs, job_name, request)
    return launched


def _schedule_context(
    instance: DagsterInstance, repo: RepositoryDefinition, resources
) -> ScheduleEvaluationContext:
    """A schedule context on the loop's own open instance.

    ``build_schedule_context`` keeps only a reference to a persistent instance, and the context
    opens a new DagsterInstance from it the first time the tick builds its resources or reads
    ``context.instance``: every storage, connection and schema revision check again, 0.5-0.7 s
    per tick on SQLite, for each schedule on every pass. Dagster has no public way to hand an
    open instance to a schedule context, so it is set where the context caches the one it opens
    (``runner`` tests check that no tick opens another)."""
    context = build_schedule_context(instance=instance, repository_def=repo, resources=resources)
    if getattr(context, "_instance", False) is None:
        context._instance = instance  # see above
    return context


def _tick_schedules(loop: _Loop, defs: Definitions) -> int:
    from ccat_dagster.defs.audit import NOT_RUN_UNTIL_IDLE

    instance, report, log = loop.instance, loop.report, loop.log
    repo = defs.get_repository_def()
    launched = 0
    for schedule_def in repo.schedule_defs:
        if schedule_def.tags.get(NOT_RUN_UNTIL_IDLE):
            continue  # a periodic check of the storage, not a step of the pipeline
        try:
            with _schedule_context(instance, repo, loop.resources_of(defs)) as context:
                data = schedule_def.evaluate_tick(context)
        except Exception as exc:  # noqa: BLE001 - like the daemon: record the tick, go on
            _tick_failed(report, schedule_def.name, exc, log)
            continue
        for request in data.run_requests or []:
            launched += _execute(loop, defs, request.job_name or schedule_def.job_name, request)
    return launched


def _ops_dbs(definitions: Sequence[Definitions]) -> list:
    """The distinct ops-DB resources of ``definitions`` (normally one)."""
    from ccat_dagster.defs.resources import OpsDbResource

    found: dict[str, OpsDbResource] = {}
    for defs in definitions:
        resource = (defs.resources or {}).get("ops_db")
        if isinstance(resource, OpsDbResource):
            found.setdefault(resource.resolved_url(), resource)
    return list(found.values())


def _max_request_failures(definitions: Sequence[Definitions]) -> int:
    """Beyond the retry budget of the ops DB's policy, so an item's own retries (a package
    retried after a checksum mismatch) are never cut short."""
    from ccat_dagster.lifecycle.common.policy import get_policy

    limits = []
    for ops_db in _ops_dbs(definitions):
        with ops_db.session() as session:
            limits.append(get_policy(session).max_retries + 1 + FAILURES_BEYOND_RETRY_BUDGET)
    return max(limits, default=DEFAULT_MAX_REQUEST_FAILURES)


def recover_dead_runs(
    instance: DagsterInstance,
    definitions: Sequence[Definitions],
    *,
    log: Callable[[str], None] = print,
) -> list[str]:
    """Mark failed the runs whose owner process is gone and release their deletion claims at
    once. Returns one line per dead run."""
    from ccat_dagster.lifecycle.deletion.claims import release_claims_of_dead_runs

    dead = fail_dead_runs(instance, by="ccat run-until-idle")
    lines = [f"{d.run.job_name} {d.run_id}: {d.reason}" for d in dead]
    for line in lines:
        log(f"dead run marked failed: {line}")
    if dead:
        for ops_db in _ops_dbs(definitions):
            with ops_db.session() as session:
                released = release_claims_of_dead_runs(
                    session, [d.run_id for d in dead], reason="its run died (process gone)"
                )
                session.commit()
            if released:
                log(
                    f"claims of dead runs released: {released.returned} copies given back, "
                    f"{released.abandoned} in-progress deletions claimable again"
                )
    return lines


def sweep_temporaries_of_sites(
    instance: DagsterInstance,
    definitions: Sequence[Definitions],
    *,
    log: Callable[[str], None] = print,
) -> list[str]:
    """Remove, at every site of ``definitions``, the temporaries no run in flight can own."""
    from ccat_dagster.defs.resources import OpsDbResource, SiteStorageResource
    from ccat_dagster.defs.temporaries import sweep_site_temporaries

    lines = []
    for defs in definitions:
        resources = defs.resources or {}
        ops_db, storage = resources.get("ops_db"), resources.get("storage")
        if not isinstance(ops_db, OpsDbResource) or not isinstance(storage, SiteStorageResource):
            continue
        report = sweep_site_temporaries(instance, ops_db, storage)
        if report.removed or report.errors:
            lines.append(f"{storage.site}: {report.summary()}")
            log(lines[-1])
    return lines


def run_until_idle(
    definitions: Sequence[Definitions],
    *,
    instance: DagsterInstance,
    max_passes: int = 200,
    include_schedules: bool = True,
    log: Callable[[str], None] = print,
    max_request_failures: int | None = None,
) -> RunnerReport:
    """Tick every sensor (then, when they are quiet, every schedule) until nothing is requested.

    Dead runs are failed (and their claims released) first and at every pass, temporaries swept
    at the start; a request failing ``max_request_failures`` times in a row (default: policy
    ``max_retries`` + 2) is not launched again (``report.blocked``)."""
    from ccat_dagster.defs.availability import probe_unavailable_now

    probe_unavailable_now(definitions, instance)  # what answers again is worked on at once
    report = RunnerReport()
    limit = max_request_failures or _max_request_failures(definitions)
    report.dead_runs += recover_dead_runs(instance, definitions, log=log)
    report.temporaries += sweep_temporaries_of_sites(instance, definitions, log=log)
    with _initialized_resources(definitions, instance) as resources:
        loop = _Loop(instance, report, FailureStreaks(limit), log, owner_tags(), resources)
        _run_passes(loop, definitions, max_passes, include_schedules)
    return report


def _run_passes(
    loop: _Loop, definitions: Sequence[Definitions], max_passes: int, include_schedules: bool
) -> None:
    instance, report, log = loop.instance, loop.report, loop.log
    while report.passes < max_passes:
        report.passes += 1
        if report.passes > 1:
            report.dead_runs += recover_dead_runs(instance, definitions, log=log)
        launched = sum(_tick_sensors(loop, d) for d in definitions)
        if launched == 0 and include_schedules:
            launched = sum(_tick_schedules(loop, d) for d in definitions)
        if launched == 0:
            return
    requested = ", ".join(f"{job}: {n}" for job, n in sorted(report.by_job.items()))
    report.stopped = (
        f"stopped after {max_passes} passes with work still being requested (runs so far: "
        f"{requested}); run it again, or look at the failed runs"
    )
    log(report.stopped)


def load_site_definitions(sites: Sequence[str] | None = None, ops_db_url: str | None = None):
    """The Definitions of the given sites (default: every site of the topology)."""
    from ccat_dagster.defs.definitions import build_site_definitions
    from ccat_dagster.defs.topology import load_topology_snapshot

    snapshot = load_topology_snapshot(ops_db_url)
    names = list(sites) if sites else [s.short_name for s in snapshot.sites]
    return [
        build_site_definitions(name, ops_db_url=ops_db_url, snapshot=snapshot) for name in names
    ]
