"""Each alert condition of the ops DB becomes one message on a real webhook receiver and a real
SMTP server; a repeat within the throttle window sends nothing, a reminder after it; clearing
sends "resolved"; a receiver that is down loses nothing; two senders never send twice. On
SQLite and PostgreSQL (the ``session`` fixture)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.alerts.dispatch import deliver_due
from ccat_dagster.lifecycle.alerts.evaluation import evaluate_site
from ccat_dagster.lifecycle.alerts.incidents import Timing, upsert_conditions
from ccat_dagster.lifecycle.alerts.model import FIRST_ACTION, AlertKind, Condition
from ccat_dagster_tests import factories as f
from ccat_dagster_tests.test_alerts.scenarios import SCENARIOS
from ccat_ops_db.models import AlertIncident, AuditLog, utcnow
from ccat_ops_db.policy import POLICY_DEFAULTS

REPEAT = timedelta(minutes=POLICY_DEFAULTS["alert_repeat_minutes"])
SETTLE = timedelta(minutes=POLICY_DEFAULTS["alert_resolved_after_minutes"])


def _kinds(webhook, state: str) -> list[str]:
    return sorted(b["kind"] for b in webhook.bodies if b["state"] == state)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_each_condition_is_one_message_then_resolved(
    name, session, tmp_path, webhook, smtp, channels
):
    topo = f.make_topology(session, tmp_path)
    scenario = SCENARIOS[name](topo)
    session.commit()
    expected = sorted(k.value for k in scenario.kinds)

    sync, delivery = evaluate_site(session, scenario.site, channels, claimer="a", now=scenario.now)
    assert not delivery.failed
    assert _kinds(webhook, "open") == expected
    assert sorted(m["Subject"].split()[2] for m in smtp.mails) == expected
    for body in webhook.bodies:
        assert body["site"] == scenario.site
        text = body["text"]
        assert text.startswith(f"[ccat] ALERT {body['kind']} at {body['where']}")
        for part in ("What: ", "Where: ", "Since: ", "First action: "):
            assert part in text
        assert FIRST_ACTION[AlertKind(body["kind"])] in text
    mail = smtp.mails[0]
    assert mail["To"] == "oncall@example.org"
    assert "First action: " in mail.get_payload()

    # the next ticks, within the throttle window: nothing more
    for minutes in (1, 30):
        evaluate_site(
            session,
            scenario.site,
            channels,
            claimer="b",
            now=scenario.now + timedelta(minutes=minutes),
        )
    assert len(webhook.bodies) == len(expected)
    assert len(smtp.mails) == len(expected)

    # the other sites do not report it
    for other in ("ccat", "cologne"):
        if other != scenario.site:
            evaluate_site(session, other, channels, claimer="c", now=scenario.now)
    assert len(webhook.bodies) == len(expected)

    scenario.clear()
    session.commit()
    later = scenario.now + timedelta(minutes=31)
    sync, delivery = evaluate_site(session, scenario.site, channels, claimer="d", now=later)
    assert sorted(sync.resolved) == sorted(f"{k}:{b['where']}" for k, b in _pairs(webhook))
    assert _kinds(webhook, "resolved") == []  # not before it has held for the settle time
    later += SETTLE
    evaluate_site(session, scenario.site, channels, claimer="d", now=later)
    assert _kinds(webhook, "resolved") == expected
    resolved = [b for b in webhook.bodies if b["state"] == "resolved"]
    assert all(b["text"].startswith("[ccat] RESOLVED ") for b in resolved)
    assert all("Resolved: " in b["text"] for b in resolved)
    assert len(smtp.mails) == 2 * len(expected)

    # and a resolved incident is quiet
    evaluate_site(session, scenario.site, channels, claimer="e", now=later + REPEAT * 2)
    assert len(webhook.bodies) == 2 * len(expected)


def _pairs(webhook):
    return [(b["kind"], b) for b in webhook.bodies if b["state"] == "open"]


def test_an_open_incident_is_repeated_after_the_throttle_window(
    session, tmp_path, webhook, smtp, channels
):
    topo = f.make_topology(session, tmp_path)
    scenario = SCENARIOS["packages_failed"](topo)
    session.commit()
    now = scenario.now
    evaluate_site(session, "ccat", channels, claimer="a", now=now)
    evaluate_site(session, "ccat", channels, claimer="a", now=now + REPEAT - timedelta(minutes=1))
    assert [b["state"] for b in webhook.bodies] == ["open"]
    evaluate_site(session, "ccat", channels, claimer="a", now=now + REPEAT + timedelta(minutes=1))
    assert [b["state"] for b in webhook.bodies] == ["open", "reminder"]
    assert webhook.bodies[1]["text"].startswith("[ccat] STILL OPEN packages_failed")
    assert len(smtp.mails) == 2


def test_the_throttle_survives_a_restart(ops_db_url, session, tmp_path, webhook, smtp, channels):
    """A new process (a new engine and session) knows what was sent: the state is in the DB."""
    from ccat_ops_db.session import make_engine

    topo = f.make_topology(session, tmp_path)
    scenario = SCENARIOS["buffer_critical"](topo)
    session.commit()
    evaluate_site(session, "cologne", channels, claimer="a", now=scenario.now)
    engine = make_engine(ops_db_url)
    with Session(engine) as restarted:
        evaluate_site(restarted, "cologne", channels, claimer="b", now=scenario.now)
    engine.dispose()
    assert len(webhook.bodies) == 1
    assert len(smtp.mails) == 1


def test_a_dead_receiver_does_not_raise_and_the_message_follows_later(
    session, tmp_path, webhook, smtp, channels
):
    topo = f.make_topology(session, tmp_path)
    scenario = SCENARIOS["lta_presence_failed"](topo)
    session.commit()
    webhook.status = 503
    smtp.stop()

    sync, delivery = evaluate_site(session, "cologne", channels, claimer="a", now=scenario.now)
    assert sync.open
    assert not delivery.sent
    [(message, error)] = delivery.failed
    assert message.kind == "lta_presence_failed"
    assert "webhook http://127.0.0.1" in error
    assert "smtp 127.0.0.1" in error
    assert "secret-token" not in error  # the webhook URL's path is its secret
    incident = session.query(AlertIncident).one()
    assert incident.notified_at is None
    assert incident.claimed_by is None
    assert incident.last_error == error
    assert webhook.bodies == []
    assert smtp.mails == []

    webhook.status = 200
    smtp.start()
    later = scenario.now + timedelta(minutes=1)
    sync, delivery = evaluate_site(session, "cologne", channels, claimer="b", now=later)
    assert [m.kind for m in delivery.sent] == ["lta_presence_failed"]
    assert [b["state"] for b in webhook.bodies] == ["open"]
    assert len(smtp.mails) == 1
    session.refresh(incident)
    assert incident.notified_at is not None
    assert incident.last_error is None


def test_two_senders_at_once_send_one_message(engine, session, tmp_path, webhook, smtp, channels):
    """Two processes evaluate the same site at the same moment (two daemons after a
    failover): the claim lets only one of them send."""
    f.make_topology(session, tmp_path)
    session.commit()
    now = utcnow()
    condition = Condition(AlertKind.PIPELINE_STALLED, "ccat", "ccat", "nothing moves", now)
    upsert_conditions(session, [condition], now=now, timing=Timing(REPEAT, SETTLE))
    session.commit()
    barrier = threading.Barrier(2)
    sent: list[int] = []
    errors: list[BaseException] = []

    def sender(name: str) -> None:
        try:
            with Session(engine) as own:
                barrier.wait()
                sent.append(len(deliver_due(own, "ccat", channels, claimer=name, now=now).sent))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=sender, args=(n,)) for n in ("twin-1", "twin-2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert sorted(sent) == [0, 1]
    assert len(webhook.bodies) == 1
    assert len(smtp.mails) == 1


def test_a_condition_back_within_the_settle_time_continues_the_incident(
    session, tmp_path, webhook, channels
):
    """A level hovering at its threshold is one incident, not a message per tick; gone for
    the settle time it is resolved, and back after that it is announced again."""
    from ccat_dagster.lifecycle.capacity.buffer_policy import record_disk_usage

    topo = f.make_topology(session, tmp_path)
    buffer = topo.buffer("cologne")
    t0 = utcnow()

    def level(percent: int, at) -> None:
        record_disk_usage(session, buffer, used_bytes=percent, total_bytes=100, measured_at=at)
        session.commit()
        evaluate_site(session, "cologne", channels, claimer="a", now=at)

    level(88, t0)
    for minute in range(1, 9):  # flapping every minute around the critical threshold
        level(84 if minute % 2 else 86, t0 + timedelta(minutes=minute))
    assert [b["state"] for b in webhook.bodies] == ["open"]
    incident = session.query(AlertIncident).one()
    session.refresh(incident)
    assert incident.resolved_at is None  # minute 8 was critical again
    assert incident.since.replace(tzinfo=None) == t0.replace(tzinfo=None)

    level(50, t0 + timedelta(minutes=9))
    evaluate_site(session, "cologne", channels, claimer="a", now=t0 + timedelta(minutes=9) + SETTLE)
    assert [b["state"] for b in webhook.bodies] == ["open", "resolved"]
    level(90, t0 + timedelta(minutes=10) + SETTLE)
    assert [b["state"] for b in webhook.bodies] == ["open", "resolved", "open"]
    assert session.query(AlertIncident).count() == 1


def test_work_that_moves_is_not_a_stall(session, tmp_path, webhook, channels):
    """Pending work with a status change at the site within alert_stall_minutes (here an
    audited unpacking step, which has no timestamp of its own) is not stalled."""
    from ccat_ops_db.audit import audit

    topo = f.make_topology(session, tmp_path)
    scenario = SCENARIOS["pipeline_stalled"](topo)
    session.commit()
    audit(
        session,
        entity_type="data_transfer",
        entity_id=1,
        old_status="PENDING",
        new_status="IN_PROGRESS",
        reason="unpacking",
        data_location_id=topo.source_buffer.id,
    )
    session.flush()
    session.query(AuditLog).filter(AuditLog.reason == "unpacking").update(
        {"created_at": scenario.now - timedelta(minutes=5)}
    )
    session.commit()
    sync, _ = evaluate_site(session, "ccat", channels, claimer="a", now=scenario.now)
    assert sync.open == []
    assert webhook.bodies == []
    later = scenario.now + timedelta(minutes=POLICY_DEFAULTS["alert_stall_minutes"])
    sync, _ = evaluate_site(session, "ccat", channels, claimer="a", now=later)
    assert sync.open == ["pipeline_stalled:ccat"]
    [body] = webhook.bodies
    assert "1 item(s) pending" in body["what"]


def test_more_failed_packages_at_the_same_source_update_the_open_incident(
    session, tmp_path, webhook, channels
):
    topo = f.make_topology(session, tmp_path)
    scenario = SCENARIOS["packages_failed"](topo)
    session.commit()
    evaluate_site(session, "ccat", channels, claimer="a", now=scenario.now)
    SCENARIOS["packages_failed"](topo)
    session.commit()
    evaluate_site(session, "ccat", channels, claimer="a", now=utcnow())
    assert len(webhook.bodies) == 1
    incident = session.query(AlertIncident).one()
    session.refresh(incident)
    assert incident.summary.startswith("2 RawDataPackage(s) from ccat/primecam_raw_data FAILED")
