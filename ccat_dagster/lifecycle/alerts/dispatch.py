"""Sending the incidents that are due: claim them, render each message, send it on every
channel, and record the delivery. A channel that fails gives the claim back with the error, so
the incident stays due and a later tick sends it again; nothing here raises because a receiver
is down (the pipeline must not stop for an alert). A message goes out on every channel or is
tried again on all of them: a channel that had it may get it twice, none loses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.alerts import incidents
from ccat_dagster.lifecycle.alerts.channels import AlertDeliveryError, Channel
from ccat_dagster.lifecycle.alerts.messages import AlertMessage, message_for
from ccat_dagster.lifecycle.common.policy import get_policy
from ccat_ops_db.models import AlertIncident, utcnow


@dataclass
class Delivery:
    """What one pass sent, and what failed (the message and the errors)."""

    sent: list[AlertMessage] = field(default_factory=list)
    failed: list[tuple[AlertMessage, str]] = field(default_factory=list)


def deliver_due(
    session: Session,
    site: str,
    channels: Sequence[Channel],
    *,
    claimer: str,
    now: datetime | None = None,
    keys: Sequence[str] | None = None,
) -> Delivery:
    """Send every message of ``site`` (or of ``keys``) that is due, on every channel. With no
    channel configured the messages count as sent: the caller's log is the channel then."""
    now = now or utcnow()
    timing = incidents.Timing.of(get_policy(session))
    ids = incidents.claim_due(session, site, claimer=claimer, timing=timing, now=now, keys=keys)
    out = Delivery()
    for incident_id in ids:
        incident = session.get_one(AlertIncident, incident_id, populate_existing=True)
        message = message_for(incident, now=now)
        errors = []
        for channel in channels:
            try:
                channel.send(message)
            except AlertDeliveryError as exc:
                errors.append(str(exc))
        if errors:
            error = "; ".join(errors)
            incidents.release(session, incident_id, claimer=claimer, error=error)
            out.failed.append((message, error))
        else:
            incidents.mark_delivered(
                session, incident_id, claimer=claimer, resolved=message.resolved, now=now
            )
            out.sent.append(message)
        session.commit()
    return out
