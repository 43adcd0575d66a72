"""SSH connections for the SSH storage backend: one tuned paramiko Transport per
(host, port, user, key file, known_hosts) shared by every SSHStorage of the process, host keys
checked strictly against a known_hosts file (never auto-added), public-key auth only, and a
dropped transport replaced on the next call; beside it, the OpenSSH client for bulk bytes
(same key and known_hosts files), whose master connection closes with the pooled connection.
"""

from __future__ import annotations

import atexit
import contextlib
import getpass
import os
import socket
import threading
from dataclasses import dataclass

import paramiko

from ccat_dagster.storage.errors import (
    LocationUnavailableError,
    PermanentStorageError,
    TransientStorageError,
)
from ccat_dagster.storage.ssh_subprocess import OpenSSHClient

KNOWN_HOSTS_ENV = "CCAT_SSH_KNOWN_HOSTS"
KEY_FILE_ENV = "CCAT_SSH_KEY_FILE"

# AES-GCM: AEAD, hardware-accelerated, no separate MAC pass; measured fastest with paramiko.
PREFERRED_CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
)
# Receive window: large enough that the server streams without waiting for window
# adjustments, small enough that paramiko's channel buffer stays in cache (1 GiB pulls over
# loopback: 2 MiB ~300 MB/s, 8 MiB ~500 MB/s, 64 MiB ~230-490 MB/s).
WINDOW_SIZE = 8 * 1024 * 1024
MAX_PACKET_SIZE = 256 * 1024
CONNECT_TIMEOUT = 30.0
KEEPALIVE_SECONDS = 30
REKEY_BYTES = 2**36
REKEY_PACKETS = 2**31
SYSTEM_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "~/.ssh/known_hosts")


@dataclass(frozen=True)
class ConnectionKey:
    host: str
    port: int
    user: str
    key_filename: str | None
    known_hosts: str | None


def resolve_connection_key(
    host: str, port: int, user: str | None, key_filename: str | None, known_hosts: str | None
) -> ConnectionKey:
    """Fill in the user, key file and known_hosts file from the environment."""
    return ConnectionKey(
        host=host,
        port=int(port),
        user=user or getpass.getuser(),
        key_filename=key_filename or os.environ.get(KEY_FILE_ENV) or None,
        known_hosts=known_hosts or os.environ.get(KNOWN_HOSTS_ENV) or None,
    )


def _host_key_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


class SSHConnection:
    """One pooled SSH connection; thread-safe. SFTP requests are serialised by ``sftp_lock``
    because paramiko's SFTPClient is not meant for concurrent use."""

    def __init__(self, key: ConnectionKey, location: str) -> None:
        self.key = key
        self.location = location  # the first location that asked for it; used in messages
        self._lock = threading.Lock()
        self.sftp_lock = threading.RLock()
        self._transport: paramiko.Transport | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self.refcount = 0
        self.connects = 0  # how many times a transport was built (observability, tests)
        self._openssh: OpenSSHClient | None = None
        self._known_hosts_files: list[str] = []

    # -- connecting -------------------------------------------------------------------------

    def _load_host_keys(self) -> tuple[paramiko.HostKeys, str]:
        host_keys = paramiko.HostKeys()
        if self.key.known_hosts:
            path = os.path.expanduser(self.key.known_hosts)
            if not os.path.isfile(path):
                raise PermanentStorageError(
                    f"known_hosts file {path} (for {self.key.host}:{self.key.port}) does not "
                    f"exist; create it with the verified host key of the server",
                    location=self.location,
                )
            host_keys.load(path)
            self._known_hosts_files = [path]
            return host_keys, path
        # No file configured: the system and user files, still rejecting unknown hosts.
        used = []
        for candidate in SYSTEM_KNOWN_HOSTS:
            path = os.path.expanduser(candidate)
            if os.path.isfile(path):
                host_keys.load(path)
                used.append(path)
        self._known_hosts_files = used
        return host_keys, " or ".join(used) or f"the file named by ${KNOWN_HOSTS_ENV}"

    def _load_private_key(self) -> paramiko.PKey:
        if not self.key.key_filename:
            raise PermanentStorageError(
                f"no SSH key file for {self.key.user}@{self.key.host}:{self.key.port}; pass "
                f"key_filename or set ${KEY_FILE_ENV} (password login is not supported)",
                location=self.location,
            )
        path = os.path.expanduser(self.key.key_filename)
        try:
            return paramiko.PKey.from_path(path)
        except (OSError, paramiko.SSHException, ValueError) as exc:
            raise PermanentStorageError(
                f"cannot load SSH private key {path}: {exc} (an unencrypted key file readable "
                f"by this user is required)",
                location=self.location,
            ) from exc

    def _verify_host_key(
        self, transport: paramiko.Transport, host_keys: paramiko.HostKeys, known_hosts_name: str
    ) -> None:
        name = _host_key_name(self.key.host, self.key.port)
        offered = transport.get_remote_server_key()
        known = host_keys.lookup(name) or {}
        where = f"{self.key.host}:{self.key.port}"
        if offered.get_name() in known and known[offered.get_name()] == offered:
            return
        if known:
            raise PermanentStorageError(
                f"SSH host key of {where} has CHANGED: it offered {offered.get_name()} "
                f"{offered.fingerprint}, which is not the key recorded for {name} in "
                f"{known_hosts_name}. Refusing to connect. Verify the server's key out of band "
                f"(ask its administrator) and, if the change is legitimate, replace the line "
                f"for {name} in {known_hosts_name}",
                location=self.location,
            )
        raise PermanentStorageError(
            f"SSH host {where} is unknown: no key for {name} in {known_hosts_name}. Refusing "
            f"to connect. Verify its key out of band (ask its administrator; "
            f"`ssh-keyscan -p {self.key.port} {self.key.host}` shows {offered.get_name()} "
            f"{offered.fingerprint}) and add it to {known_hosts_name}",
            location=self.location,
        )

    def _connect(self) -> paramiko.Transport:
        host_keys, known_hosts_name = self._load_host_keys()
        pkey = self._load_private_key()
        where = f"{self.key.user}@{self.key.host}:{self.key.port}"
        try:
            sock = socket.create_connection((self.key.host, self.key.port), CONNECT_TIMEOUT)
        except OSError as exc:
            # Refused, unreachable, timed out: the host does not answer (not one object's fault).
            raise LocationUnavailableError(
                f"cannot reach SSH server {where}: {exc}", location=self.location
            ) from exc
        transport = paramiko.Transport(
            sock, default_window_size=WINDOW_SIZE, default_max_packet_size=MAX_PACKET_SIZE
        )
        # paramiko starts a rekey after 512 MiB, and its transport thread stalls 30 s and then
        # kills the connection when the server closes a channel during a rekey paramiko started
        # (seen in every 1 GiB transfer). Leave rekeying to OpenSSH: its default for AES-GCM/CTR
        # is 2^32 blocks (64 GiB), and a server-initiated rekey is handled cleanly.
        transport.packetizer.REKEY_BYTES = REKEY_BYTES
        transport.packetizer.REKEY_PACKETS = REKEY_PACKETS
        try:
            options = transport.get_security_options()
            available = set(options.ciphers)
            options.ciphers = tuple(c for c in PREFERRED_CIPHERS if c in available) + tuple(
                c for c in options.ciphers if c not in PREFERRED_CIPHERS
            )
            # Ask for a host key type we know for this host first, so a server with several
            # keys is not reported as unknown merely because it offered another type.
            known_types = list(
                (host_keys.lookup(_host_key_name(self.key.host, self.key.port)) or {}).keys()
            )
            if known_types:
                options.key_types = tuple(t for t in known_types if t in options.key_types) + (
                    tuple(t for t in options.key_types if t not in known_types)
                )
            transport.banner_timeout = CONNECT_TIMEOUT
            transport.auth_timeout = CONNECT_TIMEOUT
            transport.start_client(timeout=CONNECT_TIMEOUT)
            self._verify_host_key(transport, host_keys, known_hosts_name)
            transport.auth_publickey(self.key.user, pkey)
        except PermanentStorageError:
            transport.close()
            raise
        except paramiko.AuthenticationException as exc:
            transport.close()
            raise PermanentStorageError(
                f"SSH login {where} with key {self.key.key_filename} refused: {exc}; add the "
                f"public key to the server's authorized_keys",
                location=self.location,
            ) from exc
        except (paramiko.SSHException, OSError, EOFError) as exc:
            transport.close()
            raise TransientStorageError(
                f"SSH handshake with {where} failed: {exc}", location=self.location
            ) from exc
        transport.set_keepalive(KEEPALIVE_SECONDS)
        self.connects += 1
        return transport

    # -- using --------------------------------------------------------------------------------

    def transport(self) -> paramiko.Transport:
        """The live transport, reconnecting when the previous one dropped."""
        with self._lock:
            if self._transport is None or not self._transport.is_active():
                self._close_locked()
                self._transport = self._connect()
            return self._transport

    def sftp(self) -> paramiko.SFTPClient:
        """The SFTP session on the live transport (callers hold ``sftp_lock``)."""
        transport = self.transport()
        with self._lock:
            sftp = self._sftp
            channel = sftp.get_channel() if sftp is not None else None
            if (
                sftp is None
                or channel is None
                or channel.get_transport() is not transport
                or channel.closed
            ):
                sftp = _new_sftp(transport, CONNECT_TIMEOUT * 4)
                self._sftp = sftp
            return sftp

    def open_sftp(self, timeout: float) -> paramiko.SFTPClient:
        """A new SFTP session of its own (for one upload); the caller closes it."""
        return _new_sftp(self.transport(), timeout)

    def open_channel(self, timeout: float) -> paramiko.Channel:
        """A fresh session channel (for one exec command)."""
        channel = self.transport().open_session(timeout=CONNECT_TIMEOUT)
        channel.settimeout(timeout)
        return channel

    def openssh(self) -> OpenSSHClient:
        """The OpenSSH client for bulk bytes, checking host keys against the same known_hosts
        files as the paramiko transport (connecting it first if needed)."""
        self.transport()  # loads the key and known_hosts files and verifies the server
        with self._lock:
            if self._openssh is None:
                self._openssh = OpenSSHClient(
                    self.key.host,
                    self.key.port,
                    self.key.user,
                    os.path.expanduser(self.key.key_filename or ""),
                    self._known_hosts_files,
                    self.location,
                )
            return self._openssh

    def is_active(self) -> bool:
        transport = self._transport
        return transport is not None and transport.is_active()

    def invalidate(self) -> None:
        """Drop the transport (e.g. after a timeout) so the next call reconnects."""
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._sftp is not None:
            with contextlib.suppress(Exception):  # closing a possibly dead session
                self._sftp.close()
            self._sftp = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def close(self) -> None:
        with self._lock:
            self._close_locked()
            openssh, self._openssh = self._openssh, None
        if openssh is not None:
            openssh.close()


class ConnectionPool:
    """Connections shared by key; a connection closes when its last storage releases it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connections: dict[ConnectionKey, SSHConnection] = {}

    def acquire(self, key: ConnectionKey, location: str) -> SSHConnection:
        with self._lock:
            connection = self._connections.get(key)
            if connection is None:
                connection = self._connections[key] = SSHConnection(key, location)
            connection.refcount += 1
            return connection

    def release(self, connection: SSHConnection) -> None:
        with self._lock:
            connection.refcount -= 1
            if connection.refcount > 0:
                return
            if self._connections.get(connection.key) is connection:
                del self._connections[connection.key]
        connection.close()

    def close_all(self) -> None:
        with self._lock:
            connections = list(self._connections.values())
            self._connections.clear()
        for connection in connections:
            connection.refcount = 0
            connection.close()


POOL = ConnectionPool()
# OpenSSH masters outlive this process by ControlPersist seconds unless told to exit.
atexit.register(POOL.close_all)


def _new_sftp(transport: paramiko.Transport, timeout: float) -> paramiko.SFTPClient:
    sftp = paramiko.SFTPClient.from_transport(
        transport, window_size=WINDOW_SIZE, max_packet_size=MAX_PACKET_SIZE
    )
    channel = sftp.get_channel() if sftp is not None else None
    if sftp is None or channel is None:
        raise paramiko.SSHException("the SSH transport refused to open an SFTP session")
    channel.settimeout(timeout)
    return sftp
