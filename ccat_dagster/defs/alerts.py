"""The alerts of one site on Dagster (docs/operations.md: alerts and dashboards).

``{site}_alert_sensor`` evaluates the site's conditions from the ops DB every
``CCAT_ALERT_INTERVAL_SECONDS`` (FAILED packages, failed ``lta_presence``, buffer CRITICAL and
EMERGENCY, locations unavailable too long, the disk-pressure forecast, a stalled pipeline,
fixity mismatches and a scrub rate that falls behind, a failed restore drill),
opens and resolves the incidents, resolves the failed-run incidents whose job has succeeded
since, and sends what is due. ``{site}_run_failure_alert_sensor`` reports each failed run of
this code location's jobs at once. The decisions are ``ccat_dagster.lifecycle.alerts``; the
channels come from the settings (the environment) when the definitions are built.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from dagster import (
    DagsterEvent,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    run_failure_sensor,
    sensor,
)

from ccat_dagster.defs.resources import OpsDbResource
from ccat_dagster.defs.settings import Settings
from ccat_dagster.lifecycle.alerts.channels import Channel, SmtpChannel, WebhookChannel
from ccat_dagster.lifecycle.alerts.dispatch import Delivery
from ccat_dagster.lifecycle.alerts.evaluation import (
    evaluate_site,
    job_of,
    report_run_failure,
    resolve_run_failures,
    run_failed,
)
from ccat_dagster.lifecycle.alerts.incidents import open_incidents
from ccat_dagster.lifecycle.alerts.model import AlertKind
from ccat_dagster.lifecycle.common import names

#: characters of a run's error kept in the message (the whole error is in the run's log)
ERROR_SHOWN = 600


def alert_channels(settings: Settings) -> list[Channel]:
    """The channels the settings configure (none: the messages are only logged)."""
    channels: list[Channel] = []
    url = settings.alert_webhook_url.get_secret_value()
    if url:
        channels.append(WebhookChannel(url))
    if settings.alert_smtp_host and settings.alert_recipients:
        channels.append(
            SmtpChannel(
                host=settings.alert_smtp_host,
                port=settings.alert_smtp_port,
                sender=settings.alert_smtp_from,
                recipients=settings.alert_recipients,
                starttls=settings.alert_smtp_starttls,
                user=settings.alert_smtp_user or None,
                password=settings.alert_smtp_password.get_secret_value() or None,
            )
        )
    return channels


def _claimer(sensor_name: str) -> str:
    # one claim identity per tick: a twin tick (another daemon) never takes this one's claims
    return f"{sensor_name}:{uuid.uuid4().hex[:12]}"


def _log(context, delivery: Delivery) -> None:
    for message in delivery.sent:
        log = context.log.info if message.resolved else context.log.warning
        log(message.text.replace("\n", " | "))
    for message, error in delivery.failed:
        context.log.error(f"{message.subject}: not delivered, tried again next tick: {error}")


def _succeeded_jobs(context: SensorEvaluationContext, jobs: set[str]) -> set[str]:
    """The jobs among ``jobs`` whose latest run succeeded."""
    out = set()
    for job in jobs:
        runs = context.instance.get_runs(filters=RunsFilter(job_name=job), limit=1)
        if runs and runs[0].status == DagsterRunStatus.SUCCESS:
            out.add(job)
    return out


def _step_error(event: DagsterEvent) -> str:
    """The exception of a failed step (``RuntimeError: ...``), not Dagster's "step failed"."""
    error = event.step_failure_data.error
    if error is None:
        return event.message or "failed"
    while error.cause is not None:  # Dagster wraps the op's own exception
        error = error.cause
    return error.message.strip()


def build_alert_sensor(site_short_name: str, settings: Settings) -> SensorDefinition:
    s = site_short_name
    name = names.alert_sensor(s)
    channels = alert_channels(settings)

    @sensor(
        name=name,
        minimum_interval_seconds=settings.alert_interval_seconds,
        default_status=DefaultSensorStatus.STOPPED,
        description=(
            f"Alerts of {s}: evaluates its incidents from the ops DB and sends the due messages "
            f"({', '.join(c.name for c in channels) or 'no channel configured: log only'})."
        ),
    )
    def alert_sensor(context: SensorEvaluationContext, ops_db: OpsDbResource):
        claimer = _claimer(name)
        with ops_db.session() as session:
            failed_jobs = {
                job_of(incident.location)
                for incident in open_incidents(session, s, AlertKind.RUN_FAILED)
            }
            if failed_jobs:
                resolve_run_failures(session, s, _succeeded_jobs(context, failed_jobs))
                session.commit()
            sync, delivery = evaluate_site(session, s, channels, claimer=claimer)
        _log(context, delivery)
        return SkipReason(
            f"{len(sync.open)} incident(s) open, {len(sync.resolved)} resolved now; "
            f"{len(delivery.sent)} message(s) sent, {len(delivery.failed)} to retry"
        )

    return alert_sensor


def build_run_failure_alert_sensor(site_short_name: str, settings: Settings) -> SensorDefinition:
    s = site_short_name
    name = names.run_failure_alert_sensor(s)
    channels = alert_channels(settings)

    @run_failure_sensor(
        name=name,
        default_status=DefaultSensorStatus.STOPPED,
        description=(
            f"Sends an alert for every failed run of a job of {s} (one incident per job, "
            "resolved by its next successful run)."
        ),
    )
    def run_failure_alert(context: RunFailureSensorContext, ops_db: OpsDbResource) -> None:
        run = context.dagster_run
        steps = [
            f"{event.step_key}: {_step_error(event)}" for event in context.get_step_failure_events()
        ]
        error = "; ".join(steps) or context.failure_event.message or "no error recorded"
        if len(error) > ERROR_SHOWN:
            error = error[: ERROR_SHOWN - 3] + "..."
        record = context.instance.get_run_record_by_id(run.run_id)
        end_time = record.end_time if record is not None else None
        ended = datetime.fromtimestamp(end_time, UTC) if end_time else None
        condition = run_failed(s, run.job_name, run.run_id, error, ended_at=ended)
        with ops_db.session() as session:
            delivery = report_run_failure(session, condition, channels, claimer=_claimer(name))
        _log(context, delivery)

    return run_failure_alert
