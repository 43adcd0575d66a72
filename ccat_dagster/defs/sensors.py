"""One sensor per pipeline stage and site: plan new work, add partitions in batches, request runs.

A tick that finds nothing returns a SkipReason and writes nothing. Items already in a queued or
running run of the same job are left alone, and so are items that wait for a location
(unavailable from this site, or a buffer without room for them: ``defs.availability.StageGate``),
so a stage whose remaining work all waits skips instead of launching runs that would only defer.
The number of runs in flight is capped per stage (transfers: the site's transfer limit, lowered
under buffer pressure). The cursor holds the
last RawDataPackage / DataTransferPackage id whose partition was added, so a crash between
creating packages and adding their partitions is repaired on the next tick. The minimum interval
between ticks is ``Settings.sensor_interval_seconds`` (``CCAT_SENSOR_INTERVAL_SECONDS``, default
30), read when the definitions are built.
"""

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    JobDefinition,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)
from sqlalchemy import select
from sqlalchemy.orm import Session

from ccat_dagster.defs.activity import skip_if_inactive
from ccat_dagster.defs.availability import StageGate
from ccat_dagster.defs.keys import DATA_TRANSFER_PACKAGE, RAW_DATA_PACKAGE, asset_key
from ccat_dagster.defs.partitions import partitions_of
from ccat_dagster.defs.resources import OpsDbResource, SiteStorageResource
from ccat_dagster.defs.run_limit_check import site_run_limit_problem
from ccat_dagster.defs.stages import (
    BUNDLE,
    PACKAGE,
    Stage,
    follow_max_runs,
    site_buffer_action,
    site_row,
)
from ccat_dagster.defs.topology import SiteView
from ccat_dagster.lifecycle.common import names
from ccat_dagster.lifecycle.common.policy import get_policy
from ccat_ops_db.models import DataLocation, DataTransferPackage, LocationType, RawDataPackage

IN_FLIGHT = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]


@dataclass
class StageCursor:
    seq: int = 0
    last_raw_data_package_id: int = 0
    last_data_transfer_package_id: int = 0

    @classmethod
    def parse(cls, raw: str | None) -> "StageCursor":
        return cls(**json.loads(raw)) if raw else cls()

    def dump(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def items_in_flight(
    context: SensorEvaluationContext, stage: Stage, job_name: str, op_name: str
) -> tuple[int, set]:
    """How many runs of the stage's job are in flight, and their items (read through the
    stage's typed run config)."""
    runs = context.instance.get_runs(filters=RunsFilter(job_name=job_name, statuses=IN_FLIGHT))
    items: set = set()
    for run in runs:
        run_config: Mapping[str, Any] = run.run_config or {}  # nested dicts, as launched
        op_config = run_config.get("ops", {}).get(op_name, {}).get("config", {})
        items.update(stage.items_of(op_config))
    return len(runs), items


def _new_partitions(
    session: Session, site: SiteView, site_id: int, cursor: StageCursor, stage: Stage
) -> list:
    """Add-partition requests for packages (bundles) created at this site since the cursor, to
    the sets of the site's buffers, where they are about to be written: the UI shows them as
    not yet materialized and can launch one. Keys of copies the rules deleted come back only
    with their next materialization (``defs/partitions.py``)."""
    if stage is PACKAGE:
        model, kind, attr = RawDataPackage, RAW_DATA_PACKAGE, "last_raw_data_package_id"
        location_col = RawDataPackage.source_location_id
    elif stage is BUNDLE:
        model, kind, attr = (
            DataTransferPackage,
            DATA_TRANSFER_PACKAGE,
            "last_data_transfer_package_id",
        )
        location_col = DataTransferPackage.origin_location_id
    else:
        return []
    rows = session.execute(
        select(model.id, model.name)
        .join(DataLocation, DataLocation.id == location_col)
        .where(DataLocation.site_id == site_id, model.id > getattr(cursor, attr))
        .order_by(model.id)
    ).all()
    if not rows:
        return []
    setattr(cursor, attr, rows[-1][0])
    names = [name for _, name in rows]
    return [
        partitions_of(asset_key(site.short_name, buffer.name, kind)).build_add_request(names)
        for buffer in site.of_type(LocationType.BUFFER)
    ]


def build_stage_sensor(
    site: SiteView, stage: Stage, stage_job: JobDefinition, *, interval_seconds: int
) -> SensorDefinition:
    op_name = names.stage_op(site.short_name, stage.name)
    # where the stage ran when the definitions loaded: re-checked in the ops DB every tick
    at = stage.location(site)

    @sensor(
        name=names.stage_sensor(site.short_name, stage.name),
        job=stage_job,
        minimum_interval_seconds=interval_seconds,
        default_status=DefaultSensorStatus.STOPPED,
        description=f"{stage.description} (site {site.short_name})",
    )
    def stage_sensor(
        context: SensorEvaluationContext, ops_db: OpsDbResource, storage: SiteStorageResource
    ):
        cursor = StageCursor.parse(context.cursor)
        running, busy = items_in_flight(context, stage, stage_job.name, op_name)
        with ops_db.session() as session, storage.registry() as storages:
            stopped = skip_if_inactive(context, session, site.short_name, at and at.name)
            if stopped is not None:
                return stopped
            site_db = site_row(session, site.short_name)
            if not _paused(session, site_db, stage):
                stage.plan(session, site_db)
            partition_requests = _new_partitions(session, site, site_db.id, cursor, stage)
            all_ready = stage.ready(session, site_db)
            candidates = [i for i in all_ready if i not in busy]
            gate = StageGate.open(session, stage, site_db, storage.site, storages.get, candidates)
            waiting = {i: why for i in candidates if (why := gate.waits(i)) is not None}
            ready = [i for i in candidates if i not in waiting]
            if stage.pool_follows_max_runs:
                limit = follow_max_runs(context.instance, session, stage, site, site_db)
                problem = site_run_limit_problem(context.instance, get_policy(session))
                if problem:
                    context.log.warning(problem)
            else:
                limit = stage.max_runs(session, site_db)
            free_runs = max(limit - running, 0)
            asset_events = gate.take_events()
        batches = [ready[i : i + stage.batch_size] for i in range(0, len(ready), stage.batch_size)][
            :free_runs
        ]
        run_requests = []
        for batch in batches:
            cursor.seq += 1
            run_requests.append(
                RunRequest(
                    run_key=f"{stage_job.name}:{cursor.seq}",
                    run_config=stage.run_config(op_name, batch),
                    tags={"ccat/site": site.short_name, "ccat/stage": stage.name},
                )
            )
        if not run_requests and not partition_requests and not asset_events:
            if ready:
                reason = f"{len(ready)} ready, waiting for a free run slot ({running} in flight)"
            elif waiting:
                first = next(iter(waiting.values()))
                reason = f"{len(waiting)} ready, all waiting for a location: {first}"
            elif all_ready:
                reason = f"{len(all_ready)} ready, all in runs already in flight"
            else:
                reason = "nothing to do"
            return SkipReason(reason)
        for item, why in list(waiting.items())[:20]:
            context.log.info(f"{item} waits: {why}")
        return SensorResult(
            run_requests=run_requests,
            dynamic_partitions_requests=partition_requests,
            cursor=cursor.dump(),
            asset_events=asset_events,
        )

    return stage_sensor


def _paused(session: Session, site, stage: Stage) -> bool:
    """Emergency buffer pressure pauses new packaging at the site (docs/lifecycle.md)."""
    if stage is not PACKAGE:
        return False
    action = site_buffer_action(session, site)
    return bool(action and action.pause_packaging)
