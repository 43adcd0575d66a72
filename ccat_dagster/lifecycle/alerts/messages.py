"""One message per incident: what, where, since when and the first thing to do, as the text a
chat webhook shows (``text``), an e-mail subject and body, and the JSON fields a receiver can
filter on."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ccat_ops_db.models import AlertIncident, as_utc

#: what every subject and first line starts with, so mail filters and chat searches find them
TAG = "[ccat]"


def _duration(seconds: float) -> str:
    minutes = max(0, int(seconds // 60))
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} d {hours % 24} h"


def _when(ts: datetime) -> str:
    return f"{as_utc(ts):%Y-%m-%d %H:%M} UTC"


@dataclass(frozen=True)
class AlertMessage:
    key: str
    kind: str
    #: "open", "reminder" or "resolved"
    state: str
    site: str
    where: str
    what: str
    since: datetime
    first_action: str
    sent_at: datetime
    resolved_at: datetime | None = None

    @property
    def resolved(self) -> bool:
        return self.state == "resolved"

    @property
    def subject(self) -> str:
        label = {"open": "ALERT", "reminder": "STILL OPEN", "resolved": "RESOLVED"}[self.state]
        return f"{TAG} {label} {self.kind} at {self.where}"

    @property
    def text(self) -> str:
        lines = [
            self.subject,
            f"What: {self.what}",
            f"Where: {self.where} (site {self.site})",
            f"Since: {_when(self.since)} "
            f"({_duration((self.sent_at - as_utc(self.since)).total_seconds())})",
        ]
        if self.resolved_at is not None:
            lines.append(
                f"Resolved: {_when(self.resolved_at)} (open for "
                f"{_duration((as_utc(self.resolved_at) - as_utc(self.since)).total_seconds())})"
            )
        else:
            lines.append(f"First action: {self.first_action}")
        return "\n".join(lines)

    def payload(self) -> dict[str, Any]:
        """The webhook body: ``text`` for Slack/Mattermost incoming webhooks, and the fields."""
        return {
            "text": self.text,
            "key": self.key,
            "kind": self.kind,
            "state": self.state,
            "site": self.site,
            "where": self.where,
            "what": self.what,
            "since": as_utc(self.since).isoformat(),
            "first_action": self.first_action,
            "resolved_at": as_utc(self.resolved_at).isoformat() if self.resolved_at else None,
        }


def message_for(incident: AlertIncident, *, now: datetime) -> AlertMessage:
    """The message an incident is due for: resolved, a reminder (announced before) or open."""
    if incident.resolved_at is not None:
        state = "resolved"
    elif incident.notified_at is not None:
        state = "reminder"
    else:
        state = "open"
    return AlertMessage(
        key=incident.key,
        kind=incident.kind,
        state=state,
        site=incident.site,
        where=incident.location,
        what=incident.summary,
        since=as_utc(incident.since),
        first_action=incident.first_action,
        sent_at=now,
        resolved_at=as_utc(incident.resolved_at) if incident.resolved_at else None,
    )
