"""The bulk-byte path of the SSH storage through the OpenSSH client: ``ssh`` subprocesses running
``cat`` on the server, multiplexed over one background master connection per pooled SSH
connection (``ControlMaster``), so each object costs a session, not a handshake. OpenSSH does the
crypto in C, which paramiko cannot match (docs/performance.md). Host keys are checked strictly
against exactly the known_hosts files paramiko uses (never updated, no system file), only the
configured key is offered, nothing prompts; user and system ssh_config files are ignored so that
both transports behave alike. Exit statuses and stderr map to transient or permanent errors.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import IO

from ccat_dagster.storage.errors import (
    LocationUnavailableError,
    PermanentStorageError,
    StorageError,
    TransientStorageError,
)

log = logging.getLogger(__name__)

#: ``auto`` (OpenSSH client when ``ssh`` is on PATH, else paramiko), ``openssh`` or ``paramiko``
BULK_TRANSPORT_ENV = "CCAT_SSH_BULK_TRANSPORT"
OPENSSH = "openssh"
PARAMIKO = "paramiko"
# AES-GCM first (AES-NI, no separate MAC); chacha20 for servers without AES-GCM.
OPENSSH_CIPHERS = (
    "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,"
    "aes128-ctr,aes256-ctr"
)
CONNECT_TIMEOUT = 30
SERVER_ALIVE_INTERVAL = 30
SERVER_ALIVE_COUNT = 4
# An idle master exits by itself after this long, even if this process died without closing it.
CONTROL_PERSIST_SECONDS = 60
# A master that would not start is not retried before this many seconds (transfers then make
# direct connections).
MASTER_RETRY_SECONDS = 30.0
# Pipes of 1 MiB (the unprivileged maximum) instead of 64 KiB: fewer wake-ups per GiB.
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
# The error messages of ssh itself (exit status 255) that no retry will cure.
_PERMANENT_SSH_ERRORS = (
    ("Host key verification failed", "host key verification failed"),
    ("REMOTE HOST IDENTIFICATION HAS CHANGED", "host key has changed"),
    ("No matching host key", "no acceptable host key"),
    ("Permission denied (", "login refused"),
    ("Unable to negotiate", "no common algorithm with the server"),
    ("Bad configuration option", "bad ssh option"),
    ("Could not resolve hostname", "unknown host name"),
    ("Load key", "cannot load the private key"),
    ("Identity file", "cannot load the private key"),
)
# ssh could not connect at all: the host does not answer (a connection lost mid-transfer is
# reported differently and stays a plain transient error).
_UNREACHABLE_SSH_ERRORS = (
    "Connection refused",
    "No route to host",
    "Network is unreachable",
    "Host is down",
    "Connection timed out",
)


def choose_bulk_transport() -> str:
    """``openssh`` or ``paramiko`` according to $CCAT_SSH_BULK_TRANSPORT and whether an ``ssh``
    client is installed."""
    wanted = (os.environ.get(BULK_TRANSPORT_ENV) or "auto").strip().lower()
    if wanted not in ("auto", OPENSSH, PARAMIKO):
        raise PermanentStorageError(
            f"${BULK_TRANSPORT_ENV}={wanted!r}: expected auto, {OPENSSH} or {PARAMIKO}"
        )
    if wanted == PARAMIKO:
        return PARAMIKO
    if shutil.which("ssh") is None:
        if wanted == OPENSSH:
            raise PermanentStorageError(
                f"${BULK_TRANSPORT_ENV}={OPENSSH} but no ssh client is on PATH; install "
                "openssh-client or unset the variable"
            )
        return PARAMIKO
    return OPENSSH


def _config_value(path: str) -> str:
    """A file name as an ssh option value: '%' is a token character there, and names with
    spaces need quotes (ssh_config quoting, which OpenSSH applies to ``-o`` and ``-i`` alike)."""
    value = path.replace("%", "%%")
    if any(c.isspace() for c in value) or '"' in value:
        if '"' in value:
            raise PermanentStorageError(f"cannot pass file name {path!r} to ssh (double quote)")
        value = f'"{value}"'
    return value


def _set_pipe_size(fd: int) -> None:
    with contextlib.suppress(OSError):  # a smaller pipe only costs speed
        fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)


def classify_exit(
    returncode: int, stderr: str, *, where: str, location: str, key: str | None
) -> StorageError | None:
    """The error of an ``ssh`` run that failed in ssh itself (status 255 or a signal), or None
    when the status came from the remote command (the caller maps that)."""
    detail = stderr.strip()[-500:]
    if returncode < 0:
        return TransientStorageError(
            f"{where}: ssh client killed by signal {-returncode} ({detail})",
            location=location,
            key=key,
        )
    if returncode != 255:
        return None
    for text, reason in _PERMANENT_SSH_ERRORS:
        if text in stderr:
            return PermanentStorageError(
                f"{where}: {reason} ({detail})", location=location, key=key
            )
    if any(text in stderr for text in _UNREACHABLE_SSH_ERRORS):
        return LocationUnavailableError(
            f"{where}: SSH host unreachable ({detail})", location=location, key=key
        )
    # Refused, reset, timed out, closed by the remote host, broken pipe: try again later.
    return TransientStorageError(
        f"{where}: SSH connection failed or was lost ({detail or 'ssh exited with status 255'})",
        location=location,
        key=key,
    )


class OpenSSHProcess:
    """One ``ssh`` run: its Popen, the parent's end of its data pipe and its stderr file."""

    def __init__(self, popen: subprocess.Popen, fd: int, stderr: IO[bytes]) -> None:
        self.popen = popen
        self.fd = fd  # our end: stdout for a reader, stdin for a writer; -1 once closed
        self._stderr = stderr

    def close_fd(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def wait(self, timeout: float) -> int:
        """Exit status, killing the client when it does not exit within ``timeout``."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait()

    def stop(self) -> None:
        """End the run now (an abandoned read): the server's ``cat`` then gets SIGPIPE."""
        self.close_fd()
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
        self.wait(10)
        self._stderr.close()

    def stderr_text(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read(65536).decode(errors="replace")

    def finish(self) -> None:
        self._stderr.close()


class OpenSSHClient:
    """``ssh`` command lines for one pooled connection (same host, port, user, key and
    known_hosts as paramiko) and the master connection they share."""

    def __init__(
        self,
        host: str,
        port: int,
        user: str,
        key_filename: str,
        known_hosts_files: Sequence[str],
        location: str,
    ) -> None:
        if host.startswith("-"):
            raise PermanentStorageError(f"invalid SSH host name {host!r}", location=location)
        self.host, self.port, self.user = host, port, user
        self.key_filename = key_filename
        self.known_hosts_files = list(known_hosts_files)
        self.location = location
        self.binary = shutil.which("ssh") or "ssh"
        self._lock = threading.Lock()
        self._owner_pid = os.getpid()
        self._control_dir: str | None = None
        self.master_pid: int | None = None
        self._master_failed_at = 0.0
        self.masters_started = 0  # observability, tests

    # -- command lines ------------------------------------------------------------------------

    def base_args(self) -> list[str]:
        known_hosts = " ".join(_config_value(p) for p in self.known_hosts_files) or "/dev/null"
        options = {
            "UserKnownHostsFile": known_hosts,
            # The system file must not widen trust beyond what paramiko accepts.
            "GlobalKnownHostsFile": "/dev/null",
            "StrictHostKeyChecking": "yes",
            "UpdateHostKeys": "no",
            "CheckHostIP": "no",
            "VerifyHostKeyDNS": "no",
            "BatchMode": "yes",
            "IdentitiesOnly": "yes",
            "IdentityAgent": "none",
            "PreferredAuthentications": "publickey",
            "PasswordAuthentication": "no",
            "KbdInteractiveAuthentication": "no",
            "Ciphers": OPENSSH_CIPHERS,
            "Compression": "no",
            "ConnectTimeout": str(CONNECT_TIMEOUT),
            "ServerAliveInterval": str(SERVER_ALIVE_INTERVAL),
            "ServerAliveCountMax": str(SERVER_ALIVE_COUNT),
            "ClearAllForwardings": "yes",
            "LogLevel": "ERROR",
        }
        args = [self.binary, "-F", "/dev/null", "-T", "-x", "-a"]
        # IdentityFile through -o: the config parser handles quoting, ``-i`` does not.
        options["IdentityFile"] = _config_value(self.key_filename)
        args += ["-p", str(self.port), "-l", self.user]
        for name, value in options.items():
            args += ["-o", f"{name}={value}"]
        return args

    def _control_path(self) -> str:
        if self._control_dir is None or self._owner_pid != os.getpid():
            # A forked child makes masters of its own and never touches its parent's.
            self._owner_pid = os.getpid()
            # A unix socket path must stay under ~104 bytes; %C adds 40.
            base = tempfile.gettempdir()
            self._control_dir = tempfile.mkdtemp(
                prefix="ccat-ssh-", dir=base if len(base) <= 40 else "/tmp"
            )
            self.master_pid = None
        # %C: a hash of host, port, user; short enough for a unix socket path.
        return os.path.join(self._control_dir, "%C")

    def _control_socket(self) -> str | None:
        if self._control_dir is None:
            return None
        entries = [e for e in os.listdir(self._control_dir) if not e.startswith(".")]
        return os.path.join(self._control_dir, entries[0]) if entries else None

    def _master_alive(self) -> bool:
        if self.master_pid is None or self._control_socket() is None:
            return False
        try:
            os.kill(self.master_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    # -- the master ---------------------------------------------------------------------------

    def ensure_master(self) -> str:
        """The ControlPath for a transfer, starting the master if none is running. A master
        that does not start is not an error here: ssh then connects directly and reports."""
        with self._lock:
            control = self._control_path()
            if self._master_alive():
                return control
            if time.monotonic() - self._master_failed_at < MASTER_RETRY_SECONDS:
                return control
            self._stop_master_locked()
            control = self._control_path()
            command = [
                *self.base_args(),
                "-o",
                "ControlMaster=yes",
                "-o",
                f"ControlPath={control}",
                "-o",
                f"ControlPersist={CONTROL_PERSIST_SECONDS}",
                "-N",
                self.host,
            ]
            with tempfile.TemporaryFile() as stderr:
                try:
                    # The foreground ssh exits once the master is authenticated and detached.
                    status = subprocess.run(
                        command,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=stderr,
                        timeout=CONNECT_TIMEOUT * 2,
                    ).returncode
                except subprocess.TimeoutExpired:
                    status = -1
                stderr.seek(0)
                message = stderr.read(4096).decode(errors="replace").strip()
            pid = self._check_master(control) if status == 0 else None
            if pid is None:
                self._master_failed_at = time.monotonic()
                log.warning(
                    "%s: OpenSSH master to %s@%s:%s did not start (status %s: %s); transfers "
                    "connect directly",
                    self.location,
                    self.user,
                    self.host,
                    self.port,
                    status,
                    message,
                )
                return control
            self.master_pid = pid
            self.masters_started += 1
            log.info(
                "%s: OpenSSH master connection to %s@%s:%s (pid %s)",
                self.location,
                self.user,
                self.host,
                self.port,
                pid,
            )
            return control

    def _check_master(self, control: str) -> int | None:
        result = subprocess.run(
            [*self.base_args(), "-o", f"ControlPath={control}", "-O", "check", self.host],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=CONNECT_TIMEOUT,
        )
        text = result.stderr.decode(errors="replace")
        if result.returncode != 0 or "pid=" not in text:
            return None
        try:
            return int(text.split("pid=", 1)[1].split(")", 1)[0])
        except ValueError:
            return None

    def _stop_master_locked(self) -> None:
        if self._control_dir is None or self._owner_pid != os.getpid():
            return
        control = os.path.join(self._control_dir, "%C")
        pid, self.master_pid = self.master_pid, None
        if self._control_socket() is not None:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                subprocess.run(
                    [*self.base_args(), "-o", f"ControlPath={control}", "-O", "exit", self.host],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=10,
                )
        if pid is not None:
            # The master exits once its sessions end; do not leave it behind if it lingers.
            for _ in range(50):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.02)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(OSError):  # a stale socket of a killed master
            for entry in os.listdir(self._control_dir):
                os.unlink(os.path.join(self._control_dir, entry))

    def close(self) -> None:
        """Stop the master and remove the control directory: no ssh process is left."""
        with self._lock:
            self._stop_master_locked()
            if self._control_dir is not None and self._owner_pid == os.getpid():
                shutil.rmtree(self._control_dir, ignore_errors=True)
            self._control_dir = None

    # -- runs ---------------------------------------------------------------------------------

    def start(self, remote_command: str, *, write: bool) -> OpenSSHProcess:
        """Run ``remote_command`` (already shell-quoted) with a pipe to its stdout (``write``
        False) or its stdin (``write`` True); the other standard stream is /dev/null."""
        control = self.ensure_master()
        command = [
            *self.base_args(),
            "-o",
            "ControlMaster=no",
            "-o",
            f"ControlPath={control}",
            self.host,
            remote_command,
        ]
        read_fd, write_fd = os.pipe()
        _set_pipe_size(read_fd)
        ours, theirs = (write_fd, read_fd) if write else (read_fd, write_fd)
        # A file, not a pipe: a chatty ssh can never block on it. Closed by OpenSSHProcess.
        stderr = tempfile.TemporaryFile()  # noqa: SIM115
        try:
            popen = subprocess.Popen(
                command,
                stdin=theirs if write else subprocess.DEVNULL,
                stdout=subprocess.DEVNULL if write else theirs,
                stderr=stderr,
                close_fds=True,
            )
        except BaseException:
            os.close(read_fd)
            os.close(write_fd)
            stderr.close()
            raise
        os.close(theirs)
        return OpenSSHProcess(popen, ours, stderr)


def wait_fd(fd: int, *, write: bool, timeout: float) -> bool:
    """True once ``fd`` is ready, False after ``timeout`` seconds without progress."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT if write else select.POLLIN)
    while True:
        try:
            return bool(poller.poll(timeout * 1000))
        except InterruptedError:  # pragma: no cover - PEP 475 retries already
            continue


def is_broken_pipe(exc: OSError) -> bool:
    return exc.errno in (errno.EPIPE, errno.ECONNRESET)
