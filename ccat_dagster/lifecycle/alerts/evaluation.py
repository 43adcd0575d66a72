"""One alert pass of a site: evaluate its conditions, bring its incidents up to date, send what
is due; and the failed runs, which Dagster reports one by one."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.alerts import incidents
from ccat_dagster.lifecycle.alerts.channels import Channel
from ccat_dagster.lifecycle.alerts.conditions import site_conditions
from ccat_dagster.lifecycle.alerts.dispatch import Delivery, deliver_due
from ccat_dagster.lifecycle.alerts.model import EVALUATED_KINDS, AlertKind, Condition, incident_key
from ccat_dagster.lifecycle.common.policy import get_policy
from ccat_ops_db.models import utcnow


def evaluate_site(
    session: Session,
    site: str,
    channels: Sequence[Channel],
    *,
    claimer: str,
    now: datetime | None = None,
) -> tuple[incidents.Sync, Delivery]:
    """Open, update and resolve the incidents of ``site`` from the ops DB, then send every
    message of the site that is due (failed runs included: a delivery that failed when the
    run-failure sensor tried is retried here)."""
    now = now or utcnow()
    policy = get_policy(session)
    conditions = site_conditions(session, site, now=now, policy=policy)
    sync = incidents.sync_site(
        session,
        site,
        conditions,
        kinds=EVALUATED_KINDS,
        timing=incidents.Timing.of(policy),
        now=now,
    )
    session.commit()
    return sync, deliver_due(session, site, channels, claimer=claimer, now=now)


def run_job_where(site: str, job_name: str) -> str:
    # a job name of Dagster's own (``__ASSET_JOB``) is the same in every code location
    return f"{job_name}@{site}"


def job_of(where: str) -> str:
    """The job name of a failed-run incident's ``where`` (``run_job_where``'s inverse)."""
    return where.rsplit("@", 1)[0]


def run_failed(
    site: str, job_name: str, run_id: str, error: str, *, ended_at: datetime | None
) -> Condition:
    """The incident of a failed run: one per job, so a job failing run after run is one
    incident (reminded at the repeat interval) until a run of it succeeds."""
    return Condition(
        AlertKind.RUN_FAILED,
        site,
        run_job_where(site, job_name),
        f"run {run_id} of job {job_name} failed: {error}",
        ended_at,
    )


def report_run_failure(
    session: Session,
    condition: Condition,
    channels: Sequence[Channel],
    *,
    claimer: str,
    now: datetime | None = None,
) -> Delivery:
    """Open the incident of a failed run and send it now if it is due."""
    now = now or utcnow()
    timing = incidents.Timing.of(get_policy(session))
    incidents.upsert_conditions(session, [condition], now=now, timing=timing)
    session.commit()
    return deliver_due(
        session, condition.site, channels, claimer=claimer, now=now, keys=[condition.key]
    )


def resolve_run_failures(
    session: Session, site: str, succeeded_jobs: Iterable[str], *, now: datetime | None = None
) -> list[str]:
    """Resolve the failed-run incidents of ``site`` whose job has succeeded since. Caller
    commits; the "resolved" messages go out with the site's next delivery."""
    keys = {incident_key(AlertKind.RUN_FAILED, run_job_where(site, j)) for j in succeeded_jobs}
    return incidents.resolve(session, keys, now=now or utcnow())
