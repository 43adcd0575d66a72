"""What an alert is about: the kinds, one condition as evaluated now, and the first thing an
operator does for each kind."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


class AlertKind(enum.StrEnum):
    RUN_FAILED = "run_failed"
    PACKAGES_FAILED = "packages_failed"
    LTA_PRESENCE_FAILED = "lta_presence_failed"
    BUFFER_CRITICAL = "buffer_critical"
    BUFFER_EMERGENCY = "buffer_emergency"
    LOCATION_UNAVAILABLE = "location_unavailable"
    PIPELINE_STALLED = "pipeline_stalled"
    DISK_FORECAST = "disk_forecast"
    LOCATION_LOOKS_WRONG = "location_looks_wrong"
    FIXITY_MISMATCH = "fixity_mismatch"
    FIXITY_BEHIND = "fixity_behind"
    RESTORE_DRILL_FAILED = "restore_drill_failed"


#: the kinds a site's alert evaluation decides from the ops DB (a failed run is reported by the
#: run-failure sensor and resolved by the next successful run of its job)
EVALUATED_KINDS: tuple[AlertKind, ...] = tuple(k for k in AlertKind if k != AlertKind.RUN_FAILED)

#: the first thing to do, per kind: what the message tells the person on call
FIRST_ACTION: dict[AlertKind, str] = {
    AlertKind.RUN_FAILED: (
        "open the run in the Dagster UI (Runs, filter by the job) and read the error of the "
        "failed step; docs/operations.md, troubleshooting"
    ),
    AlertKind.PACKAGES_FAILED: (
        "run `ccat status` and read each package's failure reason; fix the cause, then "
        "`ccat retry` the packages (docs/operations.md)"
    ),
    AlertKind.LTA_PRESENCE_FAILED: (
        "check the archive's storage (`ccat verify --location <archive>`); the copies outside "
        "the archive are kept and the archive stage re-copies the package from a good copy"
    ),
    AlertKind.BUFFER_CRITICAL: (
        "check that the cleanup job runs and what it refuses (`ccat deletion-plan`); transfers "
        "are limited until the level falls"
    ),
    AlertKind.BUFFER_EMERGENCY: (
        "free space or add capacity now: new packaging is paused; check the cleanup runs and "
        "`ccat deletion-plan`"
    ),
    AlertKind.LOCATION_UNAVAILABLE: (
        "check the host, mount or endpoint named in the reason (network, disk, credentials); "
        "work that needs it waits and resumes when a probe succeeds"
    ),
    AlertKind.PIPELINE_STALLED: (
        "check that the Dagster daemon runs and the site's sensors are on (Automation in the "
        "UI), then look for queued runs that do not start and for unavailable locations"
    ),
    AlertKind.DISK_FORECAST: (
        "check that the location's cleanup runs (`ccat deletion-plan`) or plan more capacity "
        "before it reaches its critical level"
    ),
    AlertKind.LOCATION_LOOKS_WRONG: (
        "check that the location is the right mount, host or bucket (its `consistency` check "
        "in the UI shows the slice); the audit acts on nothing there until a slice looks right"
    ),
    AlertKind.FIXITY_MISMATCH: (
        "find out why the archive's bytes changed at rest (disk, controller, bucket policy); "
        "the copy was marked BAD or LOST and re-archived from a good copy (`ccat status`)"
    ),
    AlertKind.FIXITY_BEHIND: (
        "raise lta_reverify_bytes_per_second (or the archive's override) or "
        "lta_reverify_interval_minutes in the topology's policy, then `ccat topology apply`"
    ),
    AlertKind.RESTORE_DRILL_FAILED: (
        "open the latest materialization of the site's restore_drill asset and read which "
        "package failed from which archive and why; docs/operations.md, fixity and restore drills"
    ),
}


@dataclass(frozen=True)
class Condition:
    """One incident as the evaluation sees it now: ``where`` (a ``site/location``, a job)
    and ``kind`` make its key; ``since`` is when it began (None: now, first seen)."""

    kind: AlertKind
    site: str
    where: str
    what: str
    since: datetime | None = None

    @property
    def key(self) -> str:
        return incident_key(self.kind, self.where)

    @property
    def first_action(self) -> str:
        return FIRST_ACTION[self.kind]


def incident_key(kind: AlertKind, where: str) -> str:
    return f"{kind.value}:{where}"
