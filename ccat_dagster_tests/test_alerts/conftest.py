"""Real receivers for the alert tests, on 127.0.0.1 and ports the OS picks: an HTTP server that
records the JSON bodies POSTed to it (an incoming webhook), and an aiosmtpd SMTP server that
records the mails. The code under test sends to them over the network as it would in a
deployment; nothing of the sending code is replaced."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller

from ccat_dagster.lifecycle.alerts.channels import SmtpChannel, WebhookChannel


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class WebhookReceiver:
    """An incoming webhook: records each body; answers ``status`` (set 503 to play dead)."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                if receiver.status == 200:
                    receiver.bodies.append(json.loads(body))
                self.send_response(receiver.status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:  # quiet test output
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/secret-token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def channel(self) -> WebhookChannel:
        return WebhookChannel(self.url, timeout=5)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class MailSink:
    """aiosmtpd handler: keeps every mail it accepts."""

    def __init__(self) -> None:
        self.mails: list[Message] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.mails.append(message_from_bytes(envelope.content))
        return "250 OK"


class SmtpReceiver:
    """A real SMTP server on 127.0.0.1; ``stop``/``start`` play a dead and a recovered one."""

    def __init__(self) -> None:
        self.sink = MailSink()
        self.port = free_port()
        self.controller: Controller | None = None
        self.start()

    @property
    def mails(self) -> list[Message]:
        return self.sink.mails

    def start(self) -> None:
        self.controller = Controller(self.sink, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def channel(self) -> SmtpChannel:
        return SmtpChannel(
            host="127.0.0.1",
            port=self.port,
            sender="ccat@example.org",
            recipients=["oncall@example.org"],
            timeout=5,
        )


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def smtp() -> Iterator[SmtpReceiver]:
    receiver = SmtpReceiver()
    yield receiver
    receiver.stop()


@pytest.fixture
def channels(webhook: WebhookReceiver, smtp: SmtpReceiver) -> list:
    return [webhook.channel(), smtp.channel()]
