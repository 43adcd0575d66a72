"""The Dagster side of the alerts: the run-failure sensor reports a failed run on the real
receivers, the site's alert sensor resolves it after the job succeeds and reports the ops-DB
conditions, with channels configured from the settings (the environment).

No ``from __future__ import annotations``: Dagster reads the op's config annotation."""

from dagster import (
    Config,
    DagsterInstance,
    build_run_status_sensor_context,
    build_sensor_context,
    job,
    op,
)

from ccat_dagster.defs.alerts import (
    alert_channels,
    build_alert_sensor,
    build_run_failure_alert_sensor,
)
from ccat_dagster.defs.resources import OpsDbResource
from ccat_dagster.defs.settings import Settings
from ccat_dagster_tests import factories as f
from ccat_dagster_tests.dagster_instance import instance_for_test
from ccat_dagster_tests.test_alerts.scenarios import SCENARIOS
from ccat_ops_db.models import AlertIncident, PolicySetting


class FlakyConfig(Config):
    fail: bool = True


@op
def write_to_the_buffer(config: FlakyConfig) -> None:
    if config.fail:
        raise RuntimeError("the buffer's mount is gone")


@job
def ccat_flaky() -> None:
    write_to_the_buffer()


def _run(instance: DagsterInstance, *, fail: bool):
    return ccat_flaky.execute_in_process(
        run_config={"ops": {"write_to_the_buffer": {"config": {"fail": fail}}}},
        instance=instance,
        raise_on_error=False,
    )


def _settings(webhook, smtp) -> Settings:
    """The settings a code server reads from CCAT_ALERT_* variables."""
    return Settings.from_env(
        {
            "CCAT_ALERT_WEBHOOK_URL": webhook.url,
            "CCAT_ALERT_SMTP_HOST": "127.0.0.1",
            "CCAT_ALERT_SMTP_PORT": str(smtp.port),
            "CCAT_ALERT_SMTP_FROM": "ccat@example.org",
            "CCAT_ALERT_SMTP_TO": "oncall@example.org, second@example.org",
        }
    )


def test_channels_come_from_the_settings(webhook, smtp):
    assert alert_channels(Settings()) == []
    [hook, mail] = alert_channels(_settings(webhook, smtp))
    assert (hook.name, mail.name) == ("webhook", "email")
    assert mail.recipients == ["oncall@example.org", "second@example.org"]


def test_a_failed_run_is_reported_and_resolved_by_the_next_success(
    ops_db_url, session, tmp_path, webhook, smtp
):
    f.make_topology(session, tmp_path)
    # "resolved" at once, not after the default 10 minutes the condition must stay gone
    session.add(PolicySetting(key="alert_resolved_after_minutes", value=0))
    session.commit()
    settings = _settings(webhook, smtp)
    resources = {"ops_db": OpsDbResource(url=ops_db_url)}
    failure_sensor = build_run_failure_alert_sensor("ccat", settings)
    alert_sensor = build_alert_sensor("ccat", settings)
    with instance_for_test() as instance:
        failed = _run(instance, fail=True)
        assert not failed.success
        context = build_run_status_sensor_context(
            sensor_name=failure_sensor.name,
            dagster_event=failed.get_run_failure_event(),
            dagster_instance=instance,
            dagster_run=failed.dagster_run,
            resources=resources,
        ).for_run_failure()
        failure_sensor(context)

        [body] = webhook.bodies
        assert body["kind"] == "run_failed"
        assert body["state"] == "open"
        assert body["where"] == "ccat_flaky@ccat"
        assert failed.dagster_run.run_id in body["what"]
        assert "the buffer's mount is gone" in body["what"]
        assert "First action: open the run in the Dagster UI" in body["text"]
        [mail] = smtp.mails
        assert mail["Subject"] == "[ccat] ALERT run_failed at ccat_flaky@ccat"
        assert mail["To"] == "oncall@example.org, second@example.org"

        # still failing at the next tick: nothing new
        alert_sensor(build_sensor_context(instance=instance, resources=resources))
        assert len(webhook.bodies) == 1

        assert _run(instance, fail=False).success
        alert_sensor(build_sensor_context(instance=instance, resources=resources))
    assert [b["state"] for b in webhook.bodies] == ["open", "resolved"]
    assert webhook.bodies[1]["text"].startswith("[ccat] RESOLVED run_failed at ccat_flaky@ccat")
    assert len(smtp.mails) == 2


def test_the_alert_sensor_reports_the_ops_db_conditions(
    ops_db_url, session, tmp_path, webhook, smtp
):
    topo = f.make_topology(session, tmp_path)
    SCENARIOS["buffer_emergency"](topo)
    session.commit()
    sensor = build_alert_sensor("cologne", _settings(webhook, smtp))
    resources = {"ops_db": OpsDbResource(url=ops_db_url)}
    with instance_for_test() as instance:
        result = sensor(build_sensor_context(instance=instance, resources=resources))
        sensor(build_sensor_context(instance=instance, resources=resources))
    assert "2 message(s) sent" in str(result)
    assert sorted(b["kind"] for b in webhook.bodies) == ["buffer_critical", "buffer_emergency"]
    assert len(smtp.mails) == 2
    assert {i.notify_count for i in session.query(AlertIncident)} == {1}


def test_a_dead_receiver_does_not_fail_the_sensor(ops_db_url, session, tmp_path, webhook, smtp):
    topo = f.make_topology(session, tmp_path)
    SCENARIOS["packages_failed"](topo)
    session.commit()
    webhook.status = 500
    smtp.stop()
    sensor = build_alert_sensor("ccat", _settings(webhook, smtp))
    resources = {"ops_db": OpsDbResource(url=ops_db_url)}
    with instance_for_test() as instance:
        result = sensor(build_sensor_context(instance=instance, resources=resources))
        assert "1 to retry" in str(result)
        webhook.status = 200
        smtp.start()
        sensor(build_sensor_context(instance=instance, resources=resources))
    assert [b["kind"] for b in webhook.bodies] == ["packages_failed"]
    assert len(smtp.mails) == 1
