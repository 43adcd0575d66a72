"""The cleanups the buffer monitor requests under pressure: how often, and one at a time.

At CRITICAL a site's cleanup runs every ``critical_cleanup_interval_minutes``, at EMERGENCY
every ``emergency_cleanup_interval_minutes`` (docs/lifecycle.md: buffer levels), not only when
the cleanup schedule fires. The run key is the interval's time slot, so the first monitor tick
of a slot requests a run and the later ticks of that slot do not (Dagster drops a repeated run
key). Nothing is requested while a cleanup of the site is queued or running: it frees what a
second one would, and runs would otherwise pile up behind a slow one.
"""

from __future__ import annotations

from datetime import datetime

from dagster import DagsterInstance, RunsFilter

from ccat_dagster.defs.sensors import IN_FLIGHT
from ccat_dagster.lifecycle.capacity.buffer_policy import BufferAction


def pressure_cleanup_run_key(site: str, action: BufferAction | None, now: datetime) -> str | None:
    """The run key of the pressure cleanup due at ``now`` (None: no pressure cleanup at this
    level). The level and interval are part of it, so a rise to EMERGENCY is not held back by
    the CRITICAL slot already used."""
    if action is None or action.cleanup_interval_minutes is None:
        return None
    interval = action.cleanup_interval_minutes
    slot = int(now.timestamp() // (interval * 60))
    return f"{site}_pressure_cleanup:{action.level.name}:{interval}:{slot}"


def cleanup_in_flight(instance: DagsterInstance, job_name: str) -> bool:
    """Whether a run of the site's cleanup job is queued or running."""
    return bool(instance.get_runs(RunsFilter(job_name=job_name, statuses=IN_FLIGHT), limit=1))
