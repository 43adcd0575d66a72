"""A fault proxy in front of the S3 endpoint, as a process of its own.

``python -m ccat_dagster_tests.faults.proxy --upstream HOST:PORT --control FILE --port-file F``
listens on a free port of 127.0.0.1 (written to F) and forwards every connection to the upstream.
The control file holds one word, read at every new request and polled every 50 ms:

- ``pass``: forward as is;
- ``down``: the listening socket is closed and open connections are cut (connection refused, as
  when the endpoint is stopped); it listens again on the same port at ``pass``;
- ``5xx``: every request is answered ``503 Service Unavailable`` and the connection closed;
- ``flip``: one byte in the middle of the body of the next PUT request is flipped on its way to
  the server (bytes corrupted in transit), then the word becomes ``pass`` again.

Requests are parsed only as far as needed (head, Content-Length); responses are piped as they
come. Each flip is appended to ``FILE.events``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from pathlib import Path

POLL = 0.05
SERVICE_UNAVAILABLE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n"
    b"Content-Length: 0\r\nConnection: close\r\n\r\n"
)


class Control:
    def __init__(self, path: Path) -> None:
        self.path = path

    def mode(self) -> str:
        try:
            return self.path.read_text().strip() or "pass"
        except FileNotFoundError:
            return "pass"

    def consume_flip(self) -> bool:
        """True (once) when a flip is armed; the word goes back to ``pass``."""
        if self.mode() != "flip":
            return False
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("pass\n")
        os.replace(tmp, self.path)
        with open(f"{self.path}.events", "a") as events:
            events.write("flip\n")
        return True


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


async def _client_to_server(
    control: Control,
    reader: asyncio.StreamReader,
    client: asyncio.StreamWriter,
    upstream: asyncio.StreamWriter,
) -> None:
    buffer = b""
    while True:
        while b"\r\n\r\n" not in buffer:
            chunk = await reader.read(65536)
            if not chunk:
                return
            buffer += chunk
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        head += b"\r\n\r\n"
        if control.mode() == "5xx":
            client.write(SERVICE_UNAVAILABLE)
            await client.drain()
            return
        remaining = _content_length(head)
        flip_at = None
        if head.startswith(b"PUT ") and remaining > 16 and control.consume_flip():
            flip_at = remaining // 2
        upstream.write(head)
        offset = 0
        while remaining:
            if not buffer:
                buffer = await reader.read(65536)
                if not buffer:
                    return
            piece, buffer = buffer[:remaining], buffer[remaining:]
            if flip_at is not None and offset <= flip_at < offset + len(piece):
                data = bytearray(piece)
                data[flip_at - offset] ^= 0xFF
                piece = bytes(data)
            upstream.write(piece)
            await upstream.drain()
            offset += len(piece)
            remaining -= len(piece)
        await upstream.drain()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while chunk := await reader.read(65536):
        writer.write(chunk)
        await writer.drain()


class Proxy:
    def __init__(self, upstream: tuple[str, int], control: Control) -> None:
        self.upstream = upstream
        self.control = control
        self.server: asyncio.base_events.Server | None = None
        self.port = 0
        self.connections: set[asyncio.Task] = set()

    async def listen(self) -> None:
        self.server = await asyncio.start_server(
            self.handle, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self.server.sockets[0].getsockname()[1]

    async def handle(self, reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self.connections.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client.close()
            self.connections.discard(task)
            return
        try:
            back = asyncio.ensure_future(_pipe(up_reader, client))
            forth = asyncio.ensure_future(
                _client_to_server(self.control, reader, client, up_writer)
            )
            await asyncio.wait({back, forth}, return_when=asyncio.FIRST_COMPLETED)
            for t in (back, forth):
                t.cancel()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            for w in (client, up_writer):
                with contextlib.suppress(Exception):
                    w.close()
            self.connections.discard(task)

    async def watch(self) -> None:
        while True:
            down = self.control.mode() == "down"
            if down and self.server is not None:
                self.server.close()
                self.server = None
                for task in list(self.connections):
                    task.cancel()
            elif not down and self.server is None:
                await self.listen()
            await asyncio.sleep(POLL)


async def main(args: argparse.Namespace) -> None:
    host, port = args.upstream.rsplit(":", 1)
    proxy = Proxy((host, int(port)), Control(Path(args.control)))
    await proxy.listen()
    tmp = Path(f"{args.port_file}.tmp")
    tmp.write_text(str(proxy.port))
    os.replace(tmp, args.port_file)
    await proxy.watch()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--control", required=True)
    parser.add_argument("--port-file", required=True)
    asyncio.run(main(parser.parse_args()))
