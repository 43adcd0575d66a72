"""The channels an alert goes out on: a webhook (a JSON POST with a ``text`` field, which Slack
and Mattermost incoming webhooks show as is) and e-mail over SMTP. A failed delivery raises
AlertDeliveryError; the dispatcher keeps the incident due and tries again at the next tick."""

from __future__ import annotations

import http.client
import json
import smtplib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Protocol

from ccat_dagster.lifecycle.alerts.messages import AlertMessage

#: seconds a channel may take: a sensor tick must not hang on a receiver that does not answer
TIMEOUT_SECONDS = 10.0


class AlertDeliveryError(Exception):
    """A channel could not deliver a message."""


class Channel(Protocol):
    @property
    def name(self) -> str: ...

    def send(self, message: AlertMessage) -> None: ...


@dataclass(frozen=True)
class WebhookChannel:
    url: str
    timeout: float = TIMEOUT_SECONDS
    name: str = "webhook"

    def send(self, message: AlertMessage) -> None:
        request = urllib.request.Request(
            self.url,
            data=json.dumps(message.payload()).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            # HTTPError (a 4xx/5xx answer) is a URLError; HTTPException: a garbled or cut
            # answer; ValueError: a malformed URL
            raise AlertDeliveryError(f"webhook {self._shown()}: {exc}") from exc

    def _shown(self) -> str:
        # the path of an incoming-webhook URL is its secret: never in a log or an error
        parts = urllib.parse.urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}/..."


@dataclass(frozen=True)
class SmtpChannel:
    host: str
    port: int
    sender: str
    recipients: Sequence[str]
    starttls: bool = False
    user: str | None = None
    password: str | None = None
    timeout: float = TIMEOUT_SECONDS
    name: str = "email"

    def send(self, message: AlertMessage) -> None:
        mail = EmailMessage()
        mail["Subject"] = message.subject
        mail["From"] = self.sender
        mail["To"] = ", ".join(self.recipients)
        mail["X-Ccat-Alert-Key"] = message.key
        mail.set_content(message.text + "\n")
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                if self.starttls:
                    smtp.starttls()
                if self.user:
                    smtp.login(self.user, self.password or "")
                smtp.send_message(mail)
        except (smtplib.SMTPException, OSError, ValueError) as exc:
            # ValueError: an address or header the server's encoding cannot carry
            raise AlertDeliveryError(f"smtp {self.host}:{self.port}: {exc}") from exc
