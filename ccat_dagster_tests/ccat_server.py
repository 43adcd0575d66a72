"""A command server for tests that run ``ccat`` from a shell (the documentation examples).

``ccat`` on the shell's PATH is then a small script (``write_client``) that hands its arguments,
environment, working directory and standard streams (the file descriptors themselves, over a
Unix socket) to this server. The server forks a child from a process that has imported the CLI
and the sites' code already (``forked_ccat``); the child runs the command on those streams and
answers its exit status, which the script exits with. Pipes, redirections, ``$(ccat ...)`` and
exit statuses behave as with the console script, which ``test_install.py`` runs itself; only
the second or two of imports before each command is gone.

The server must stay single-threaded: it forks.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ccat_dagster_tests.forked_ccat import preload, run_ccat

READY = "ccat server ready"

CLIENT = """#!{python} -IS
# `ccat` run by the test's command server ({server}'s module docstring)
import json, os, socket, sys

with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
    server.connect({socket!r})
    socket.send_fds(server, [b"\\0"], [0, 1, 2])
    request = {{"args": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd()}}
    server.sendall(json.dumps(request).encode() + b"\\n")
    answer = b""
    while not answer.endswith(b"\\n"):
        chunk = server.recv(16)
        if not chunk:
            sys.exit("ccat: the command ended without an exit status (killed?)")
        answer += chunk
sys.exit(int(answer))
"""


def _receive(connection: socket.socket) -> dict:
    _, fds, _, _ = socket.recv_fds(connection, 1, 3)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    data = b""
    while not data.endswith(b"\n"):
        chunk = connection.recv(1 << 16)
        if not chunk:
            os._exit(1)
        data += chunk
    return json.loads(data)


def _child(connection: socket.socket) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the command waits for its own children
    request = _receive(connection)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    code = run_ccat(request["args"])
    connection.sendall(f"{code}\n".encode())
    os._exit(code)


def serve(path: str) -> None:
    preload()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the children
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(16)
        print(READY, flush=True)
        while True:
            connection, _ = listener.accept()
            if os.fork() == 0:
                listener.close()
                _child(connection)
            connection.close()


@contextmanager
def ccat_server(bin_dir: Path) -> Iterator[Path]:
    """A running command server and ``bin_dir/ccat``, its client; yields ``bin_dir``."""
    with tempfile.TemporaryDirectory(prefix="ccat-server-") as run_dir:
        path = str(Path(run_dir) / "socket")  # short: a socket's path has 107 bytes at most
        server = subprocess.Popen(
            [sys.executable, "-m", __name__, path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            line = server.stdout.readline().strip()
            if line != READY:
                raise RuntimeError(f"the ccat command server did not start: {line!r}")
            bin_dir.mkdir(parents=True, exist_ok=True)
            client = bin_dir / "ccat"
            client.write_text(CLIENT.format(python=sys.executable, server=__name__, socket=path))
            client.chmod(0o755)
            yield bin_dir
        finally:
            server.kill()
            server.wait()


if __name__ == "__main__":
    serve(sys.argv[1])
