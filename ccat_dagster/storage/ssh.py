"""Storage on a remote disk reached over SSH. Metadata goes through paramiko's SFTP (stat,
listdir, remove, posix_rename, mkdir) and short exec commands (checksum, df, sync); bulk bytes go
through OpenSSH ``ssh`` subprocesses running ``cat`` on a shared master connection
(``ssh_subprocess``), about twice paramiko's throughput, or, without an ``ssh`` client, through
paramiko (exec-channel ``cat`` for reads, pipelined SFTP for writes); ``bulk_transport`` says
which. Writes land in a temporary file in ``<root>/.ccat-partial/`` (the root must be one
filesystem), are size-checked and fsynced, then renamed into place, so a dropped connection never
leaves a partial file under the destination name. Every remote command is built with
``shlex.quote`` and needs a POSIX shell on the server.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import posixpath
import re
import shlex
import socket
import stat as stat_mode
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import BinaryIO

import paramiko

from ccat_dagster.storage.base import (
    PARTIAL_DIR,
    DeleteResult,
    DiskUsage,
    ObjectStat,
    Storage,
    TemporaryObject,
    check_key,
    check_prefix,
    may_hold_keys_after,
    sort_key,
)
from ccat_dagster.storage.errors import (
    LocationFullError,
    LocationUnavailableError,
    PermanentStorageError,
    StorageError,
    TransientStorageError,
)
from ccat_dagster.storage.ssh_connection import (
    POOL,
    SSHConnection,
    resolve_connection_key,
)
from ccat_dagster.storage.ssh_subprocess import (
    OPENSSH,
    OpenSSHProcess,
    choose_bulk_transport,
    classify_exit,
    is_broken_pipe,
    wait_fd,
)
from ccat_ops_db.checksum import DEFAULT_ALGORITHM, checksum_stream

log = logging.getLogger(__name__)

# A stalled transfer (no byte for this long) is reported as transient and the connection is
# dropped so the next call reconnects.
DATA_TIMEOUT = 120.0
SFTP_WRITE_REQUEST_SIZE = 240 * 1024
RECV_ALL = 1 << 30  # larger than any channel window
# Small: reads larger than this go straight from the pipe into the caller's bytes, and only
# the tail of each passes through (is copied out of) the buffer.
READ_BUFFER_SIZE = 64 * 1024
READ_MAX = 1 << 20
PIPE_CHUNK = 1 << 20
FSYNC_TIMEOUT = 3600.0  # a remote fsync of many GiB on a slow disk may take minutes
# Remote tools whose hex output equals hashlib's hexdigest for the same algorithm name.
REMOTE_HASH_TOOLS = {
    "md5": "md5sum",
    "sha1": "sha1sum",
    "sha224": "sha224sum",
    "sha256": "sha256sum",
    "sha384": "sha384sum",
    "sha512": "sha512sum",
    "blake2b": "b2sum",
}
# OpenSSL digests use SHA-NI where coreutils does not (sha256: 0.32 s vs 1.35 s per 256 MiB).
OPENSSL_DIGESTS = {"md5", "sha1", "sha224", "sha256", "sha384", "sha512"}
_TEMP_NAME = re.compile(r"^\..+\.part-[0-9a-f]{32}$")
_PERMANENT_ERRNOS = {
    errno.ENOENT: "not found",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EISDIR: "is a directory",
    errno.ENOTDIR: "not a directory",
}
_PERMANENT_STDERR = (
    ("No such file or directory", "not found"),
    ("Permission denied", "permission denied"),
    ("No space left on device", "no space left on device"),
    ("Disk quota exceeded", "disk quota exceeded"),
    ("Read-only file system", "read-only file system"),
    ("Is a directory", "is a directory"),
    ("Not a directory", "not a directory"),
)
# Errors that belong to the location, not to one object: (errno or stderr text, reason, class).
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_LOCATION_STDERR = (
    ("No space left on device", "no space left on device", LocationFullError),
    ("Disk quota exceeded", "disk quota exceeded", LocationFullError),
    ("Read-only file system", "read-only file system", LocationUnavailableError),
)


def _hash_command(algorithm: str, tool: str) -> str:
    """Shell command hashing stdin: ``openssl dgst`` when installed, else the coreutils tool."""
    if algorithm not in OPENSSL_DIGESTS:
        return tool
    return (
        f"if command -v openssl >/dev/null 2>&1; then openssl dgst -{algorithm} -r; else {tool}; fi"
    )


def is_temp_name(basename: str) -> bool:
    """True for the temporary name a write beside its destination had before writes moved to
    ``.ccat-partial/`` (still never listed as an object, nor accepted as a key)."""
    return bool(_TEMP_NAME.match(basename))


def temp_path_for(root: str, path: str) -> str:
    """The temporary file of a write to ``path``: in ``<root>/.ccat-partial/``."""
    return posixpath.join(root, PARTIAL_DIR, f"{uuid.uuid4().hex}-{posixpath.basename(path)[:100]}")


class SSHStorage(Storage):
    """A directory tree ``root`` on ``user@host:port``; keys are paths relative to it."""

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        user: str | None,
        root: str,
        *,
        key_filename: str | None = None,
        known_hosts: str | None = None,
    ) -> None:
        self.name = name
        if not root or not root.startswith("/"):
            raise PermanentStorageError(
                f"SSH storage root {root!r} on {host} must be an absolute path", location=name
            )
        self.root = posixpath.normpath(root)
        self._connection_key = resolve_connection_key(host, port, user, key_filename, known_hosts)
        self._connection: SSHConnection | None = None
        #: how bulk bytes move: "openssh" (ssh subprocesses) or "paramiko" (no ssh client
        #: installed, or $CCAT_SSH_BULK_TRANSPORT=paramiko); may be set before use (tests)
        self.bulk_transport = choose_bulk_transport()
        log.info("%s: bulk SSH transfers through %s", name, self.bulk_transport)

    def __repr__(self) -> str:
        k = self._connection_key
        return f"SSHStorage({self.name!r}, {k.user}@{k.host}:{k.port}:{self.root})"

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def connection(self) -> SSHConnection:
        """The pooled connection (shared with other storages on the same server and key)."""
        if self._connection is None:
            self._connection = POOL.acquire(self._connection_key, self.name)
        return self._connection

    def _path(self, key: str) -> str:
        check_key(key, location=self.name)
        if is_temp_name(posixpath.basename(key)):
            raise PermanentStorageError(
                "object key has the form reserved for in-progress writes",
                location=self.name,
                key=key,
            )
        return posixpath.join(self.root, key)

    def _classify(self, exc: BaseException, key: str | None, action: str) -> StorageError:
        """Map a paramiko/socket error to transient (retry) or permanent (needs a person)."""
        where = f"{action} on {self._connection_key.host}:{self._connection_key.port}"
        if isinstance(exc, socket.timeout | TimeoutError):
            self.connection.invalidate()
            return TransientStorageError(f"{where}: timed out ({exc})", location=self.name, key=key)
        if isinstance(exc, paramiko.SSHException | EOFError | ConnectionError):
            return TransientStorageError(
                f"{where}: SSH connection lost ({type(exc).__name__}: {exc})",
                location=self.name,
                key=key,
            )
        if isinstance(exc, OSError):
            reason = _PERMANENT_ERRNOS.get(exc.errno) if exc.errno is not None else None
            if exc.errno in _FULL_ERRNOS or exc.errno == errno.EROFS:
                cls = LocationFullError if exc.errno in _FULL_ERRNOS else LocationUnavailableError
                return cls(
                    f"{where}: {reason} ({exc.strerror or exc})", location=self.name, key=key
                )
            if reason is not None:
                return PermanentStorageError(
                    f"{where}: {reason} ({exc.strerror or exc})", location=self.name, key=key
                )
            # paramiko closes the channels before it marks a dropped transport inactive.
            if "Socket is closed" in str(exc) or not self.connection.is_active():
                return TransientStorageError(
                    f"{where}: SSH connection lost ({exc})", location=self.name, key=key
                )
            # The SFTP server answered with a failure status on a live connection.
            return PermanentStorageError(f"{where}: {exc}", location=self.name, key=key)
        return TransientStorageError(
            f"{where}: {type(exc).__name__}: {exc}", location=self.name, key=key
        )

    @contextmanager
    def _errors(self, key: str | None, action: str) -> Iterator[None]:
        try:
            yield
        except LocationUnavailableError as exc:
            if exc.location == self.name:
                raise
            # The pooled connection names the first location that used it; the error belongs
            # to this one (same host) as far as the caller is concerned.
            raise type(exc)(str(exc), location=self.name, key=key) from exc
        except StorageError:
            raise
        except Exception as exc:
            raise self._classify(exc, key, action) from exc

    def _command_error(
        self, status: int, stderr: str, key: str | None, action: str
    ) -> StorageError:
        where = f"{action} on {self._connection_key.host}:{self._connection_key.port}"
        if status == -1 or not self.connection.is_active():
            return TransientStorageError(
                f"{where}: SSH connection lost before the remote command finished",
                location=self.name,
                key=key,
            )
        return self._remote_command_error(status, stderr, key, action)

    def _remote_command_error(
        self, status: int, stderr: str, key: str | None, action: str
    ) -> StorageError:
        """A remote command that ran and failed: its stderr says whether a retry can help."""
        where = f"{action} on {self._connection_key.host}:{self._connection_key.port}"
        detail = stderr.strip()[-500:]
        for text, reason, cls in _LOCATION_STDERR:
            if text in stderr:
                return cls(f"{where}: {reason} ({detail})", location=self.name, key=key)
        for text, reason in _PERMANENT_STDERR:
            if text in stderr:
                return PermanentStorageError(
                    f"{where}: {reason} ({detail})", location=self.name, key=key
                )
        if status == 127:
            return PermanentStorageError(
                f"{where}: remote command not found ({detail}); the server needs coreutils",
                location=self.name,
                key=key,
            )
        return PermanentStorageError(
            f"{where}: remote command exited with status {status} ({detail})",
            location=self.name,
            key=key,
        )

    def _ssh_process_error(
        self, process: OpenSSHProcess, key: str | None, action: str
    ) -> StorageError:
        """The error of an ``ssh`` run that exited non-zero (the process has exited)."""
        status, stderr = process.popen.returncode, process.stderr_text()
        where = f"{action} on {self._connection_key.host}:{self._connection_key.port}"
        error = classify_exit(status, stderr, where=where, location=self.name, key=key)
        # A master that lost its connection exits by itself and the next transfer starts a new
        # one; stopping it here would also end other transfers sharing it.
        return (
            error if error is not None else self._remote_command_error(status, stderr, key, action)
        )

    def _exec(self, command: str) -> paramiko.Channel:
        channel = self.connection.open_channel(DATA_TIMEOUT)
        try:
            channel.exec_command(command)
        except BaseException:
            channel.close()
            raise
        return channel

    def _run(self, command: str, key: str | None, action: str) -> tuple[int, str, str]:
        """Run a short remote command; (exit status, stdout, stderr)."""
        with self._errors(key, action):
            channel = self._exec(command)
            try:
                stdout = channel.makefile("rb").read()
                stderr = channel.makefile_stderr("rb").read()
                status = channel.recv_exit_status()
            finally:
                channel.close()
        return status, stdout.decode(errors="replace"), stderr.decode(errors="replace")

    def run_command(
        self, command: str, *, stdin: bytes = b"", action: str
    ) -> tuple[int, bytes, bytes]:
        """Run ``command`` in the server's shell with ``stdin`` as its input; (exit status,
        stdout, stderr) as bytes. For listings and batched checksums of a remote tree, whose
        output holds file names as they are (NUL-separated, any byte but NUL and '/').
        ``command`` must be built with ``shlex.quote`` for every variable part; a lost
        connection raises TransientStorageError, the exit status is the caller's to judge."""
        with self._errors(None, action):
            channel = self._exec(command)
            try:
                if stdin:
                    channel.sendall(stdin)
                channel.shutdown_write()
                # stderr drained beside stdout, so neither can fill the window and stall the other
                errors: list[bytes] = []
                drain = threading.Thread(
                    target=lambda: errors.append(channel.makefile_stderr("rb").read()),
                    daemon=True,
                )
                drain.start()
                out = channel.makefile("rb").read()  # stalls raise socket.timeout (DATA_TIMEOUT)
                drain.join(DATA_TIMEOUT)
                status = channel.recv_exit_status()
            finally:
                channel.close()
        return status, out, b"".join(errors)

    @property
    def host(self) -> str:
        return self._connection_key.host

    def _root_problem(self, *, empty_counts: bool = False) -> str | None:
        """Why the root cannot hold objects (missing, not a directory, or with
        ``empty_counts`` empty: an unmounted mount point); None when it looks fine."""
        host = self._connection_key.host
        with self.connection.sftp_lock:
            sftp = self.connection.sftp()
            try:
                mode = sftp.stat(self.root).st_mode or 0
            except FileNotFoundError:
                return f"the location root {self.root} on {host} is missing (not mounted?)"
            if not stat_mode.S_ISDIR(mode):
                return f"the location root {self.root} on {host} is not a directory"
            if empty_counts and not sftp.listdir(self.root):
                return f"the location root {self.root} on {host} is empty (mount gone?)"
        return None

    def _require_root(self, key: str | None, *, empty_counts: bool = False) -> None:
        with self._errors(key, "check the location root"):
            problem = self._root_problem(empty_counts=empty_counts)
        if problem is not None:
            raise LocationUnavailableError(
                f"location unavailable: {problem}; mount it or restore the directory, work "
                "waits and resumes by itself",
                location=self.name,
                key=key,
            )

    def _makedirs(self, directory: str, key: str) -> None:
        with self._errors(key, "create directory"), self.connection.sftp_lock:
            sftp = self.connection.sftp()
            missing: list[str] = []
            current = directory
            while current not in ("/", ""):
                if len(current) <= len(self.root):
                    # The root itself is missing or not a directory: never create it (it is a
                    # mount point; a write beneath would land on the wrong disk).
                    self._require_root(key)
                    break
                try:
                    if stat_mode.S_ISDIR(sftp.stat(current).st_mode or 0):
                        break
                    raise PermanentStorageError(
                        f"{current} exists on {self._connection_key.host} but is not a directory",
                        location=self.name,
                        key=key,
                    )
                except FileNotFoundError:
                    missing.append(current)
                    current = posixpath.dirname(current)
            for path in reversed(missing):
                try:
                    sftp.mkdir(path)
                except OSError:
                    # Another writer may have created it meanwhile; only a non-directory fails.
                    if not stat_mode.S_ISDIR(sftp.stat(path).st_mode or 0):
                        raise

    def _remove_quietly(self, path: str) -> None:
        """Best-effort removal of a temporary file after a failed write. After a drop paramiko
        may not have noticed yet that the transport is dead, so retry, the last time on a new
        connection. A leftover temporary file is harmless: it is never listed."""
        error: Exception | None = None
        for attempt in range(3):
            try:
                with self.connection.sftp_lock:
                    self.connection.sftp().remove(path)
                return
            except FileNotFoundError:
                return
            except TransientStorageError as exc:  # cannot reconnect: the server is unreachable
                error = exc
                break
            except Exception as exc:  # noqa: BLE001 - the original error matters more
                error = exc
                time.sleep(0.2 * (attempt + 1))
                if attempt == 1:
                    self.connection.invalidate()
        log.warning("%s: could not remove temporary file %s: %r", self.name, path, error)

    # -- Storage interface ------------------------------------------------------------------

    def stat(self, key: str) -> ObjectStat:
        path = self._path(key)
        with self._errors(key, "stat"), self.connection.sftp_lock:
            try:
                attrs = self.connection.sftp().stat(path)
            except FileNotFoundError:
                attrs = None
        if attrs is None:
            self._require_root(key)
            return ObjectStat(exists=False)
        if stat_mode.S_ISDIR(attrs.st_mode or 0):
            raise PermanentStorageError(
                f"{path} is a directory, not an object", location=self.name, key=key
            )
        modified = datetime.fromtimestamp(attrs.st_mtime, UTC) if attrs.st_mtime else None
        return ObjectStat(exists=True, size=attrs.st_size, modified_at=modified)

    @contextmanager
    def open_read(self, key: str) -> Iterator[BinaryIO]:
        """Stream the object through a remote ``cat`` (pull); the stream raises when the
        remote side fails or the byte count differs from the object's size."""
        path = self._path(key)
        info = self.stat(key)
        if not info.exists:
            self._require_root(key, empty_counts=True)
            raise PermanentStorageError(
                f"{path} not found on {self._connection_key.host}", location=self.name, key=key
            )
        command = f"cat -- {shlex.quote(path)}"
        if self.bulk_transport == OPENSSH:
            with self._errors(key, "read"):
                process = self.connection.openssh().start(command, write=False)
            raw = _ProcessReader(self, process, key, info.size or 0)
            reader: io.IOBase = _CappedReader(raw, buffer_size=READ_BUFFER_SIZE)
        else:
            with self._errors(key, "read"):
                channel = self._exec(command)
            reader = _CatReader(self, channel, key, info.size or 0)
        try:
            yield reader  # type: ignore[misc]
        finally:
            reader.close()

    @contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        """Push into a temporary file in ``<root>/.ccat-partial/``; on a clean exit check its
        size, fsync it and rename it into place."""
        path = self._path(key)
        temp = temp_path_for(self.root, path)
        self._makedirs(posixpath.dirname(path), key)
        self._makedirs(posixpath.dirname(temp), key)
        if self.bulk_transport == OPENSSH:
            with self._write_openssh(key, path, temp) as writer:
                yield writer
            return
        with self._write_sftp(key, path, temp) as writer:
            yield writer

    def _commit(
        self,
        sftp: paramiko.SFTPClient | None,
        key: str,
        path: str,
        temp: str,
        sent: int,
        *,
        synced: bool = False,
    ) -> None:
        """Size check, fsync (unless ``synced``), rename: the temporary file becomes the object.
        ``sftp`` is a session of the caller's own, or None for the shared one."""

        def call(operation):
            with self._errors(key, "write"):
                if sftp is not None:
                    return operation(sftp)
                with self.connection.sftp_lock:
                    return operation(self.connection.sftp())

        size = call(lambda session: session.stat(temp).st_size)
        if size != sent:
            raise TransientStorageError(
                f"remote temporary file {temp} holds {size} bytes, {sent} sent",
                location=self.name,
                key=key,
            )
        # fsync before the rename: after a crash the destination never holds a short file.
        if not synced:
            status, _, err = self._run(f"sync -- {shlex.quote(temp)}", key, "write")
            if status != 0:
                raise self._command_error(status, err, key, "write")
        call(lambda session: session.posix_rename(temp, path))

    @contextmanager
    def _write_openssh(self, key: str, path: str, temp: str) -> Iterator[BinaryIO]:
        """``ssh host dd of=temp`` fed through a pipe (the OpenSSH client encrypts). The
        temporary file is created over SFTP first and ``dd`` may not create it: after a dropped
        connection the remote shell can still start late, and must then fail instead of
        re-creating the file that the cleanup below has already removed."""
        with self._errors(key, "write"), self.connection.sftp_lock:
            self.connection.sftp().open(temp, "w").close()
        quoted = shlex.quote(temp)
        # conv=fsync: synced in the same remote command, one shell start fewer per object
        command = f"dd of={quoted} bs=1M conv=nocreat,notrunc,fsync status=none"
        try:
            with self._errors(key, "write"):
                process = self.connection.openssh().start(command, write=True)
        except BaseException:
            self._remove_quietly(temp)
            raise
        writer = _ProcessWriter(self, process, key)
        committed = False
        try:
            yield writer  # type: ignore[misc]
            writer.finish()  # EOF to the remote dd; raises unless it wrote and synced all
            self._commit(None, key, path, temp, writer.size, synced=True)
            committed = True
        finally:
            if not committed:
                writer.abort()  # EOF first: the remote dd ends before its file is removed
                self._remove_quietly(temp)

    @contextmanager
    def _write_sftp(self, key: str, path: str, temp: str) -> Iterator[BinaryIO]:
        """Pipelined SFTP writes through paramiko (faster than paramiko's ``cat >``)."""
        # A session of its own: a long upload must not hold the shared SFTP session, and
        # paramiko's SFTPClient is not safe to share between threads.
        with self._errors(key, "write"):
            sftp = self.connection.open_sftp(DATA_TIMEOUT)
        committed = False
        try:
            with self._errors(key, "write"):
                handle = sftp.open(temp, "w")
            # OpenSSH's sftp-server accepts 255 KiB writes; paramiko's default 32 KiB requests
            # halve the throughput.
            handle.MAX_REQUEST_SIZE = SFTP_WRITE_REQUEST_SIZE
            handle.set_pipelined(True)
            writer = _SFTPWriter(self, handle, key)
            try:
                yield writer  # type: ignore[misc]
                with self._errors(key, "write"):
                    handle.close()  # waits for the acknowledgement of every write
                self._commit(sftp, key, path, temp, writer.size)
                committed = True
            finally:
                if not committed:
                    writer.abort(sftp)
        finally:
            sftp.close()
            if not committed:
                self._remove_quietly(temp)

    def delete(self, key: str) -> DeleteResult:
        path = self._path(key)
        with self._errors(key, "delete"), self.connection.sftp_lock:
            try:
                self.connection.sftp().remove(path)
                existed = True
            except FileNotFoundError:
                existed = False
        if not existed:
            self._require_root(key)  # not "already deleted" under a missing mount
        return DeleteResult(key=key, existed=existed)

    def list(self, prefix: str = "", *, start_after: str = "") -> Iterator[tuple[str, int]]:
        check_prefix(prefix, location=self.name)
        yield from self._walk(prefix.rpartition("/")[0], prefix, start_after)

    def _walk(self, rel_dir: str, prefix: str, start_after: str) -> Iterator[tuple[str, int]]:
        directory = posixpath.join(self.root, rel_dir) if rel_dir else self.root
        with self._errors(rel_dir or None, "list"), self.connection.sftp_lock:
            try:
                entries = self.connection.sftp().listdir_attr(directory)
            except FileNotFoundError:
                entries = None
        if entries is None:
            if not rel_dir:
                self._require_root(prefix or None)
            return
        order = [(e, stat_mode.S_ISDIR(e.st_mode or 0)) for e in entries]
        order.sort(key=lambda e: sort_key(e[0].filename, is_directory=e[1]))
        for entry, is_dir in order:
            rel = f"{rel_dir}/{entry.filename}" if rel_dir else entry.filename
            mode = entry.st_mode or 0
            if rel == PARTIAL_DIR:
                continue  # writes in progress, never objects
            if is_dir:
                if (rel.startswith(prefix) or prefix.startswith(rel + "/")) and (
                    may_hold_keys_after(rel, start_after)
                ):
                    yield from self._walk(rel, prefix, start_after)
            elif (
                stat_mode.S_ISREG(mode)
                and not is_temp_name(entry.filename)
                and rel.startswith(prefix)
                and rel > start_after
            ):
                yield rel, entry.st_size or 0

    def move(self, key: str, new_key: str) -> None:
        path, target = self._path(key), self._path(new_key)
        if not self.stat(key).exists:
            raise PermanentStorageError("no object to move", location=self.name, key=key)
        if self.stat(new_key).exists:
            raise PermanentStorageError(
                f"refusing to move onto an existing object {new_key}", location=self.name, key=key
            )
        self._makedirs(posixpath.dirname(target), new_key)
        with self._errors(key, "move"), self.connection.sftp_lock:
            self.connection.sftp().posix_rename(path, target)

    def list_temporaries(self) -> Iterator[TemporaryObject]:
        """The files (and any directories) in ``<root>/.ccat-partial/`` on the server."""
        directory = posixpath.join(self.root, PARTIAL_DIR)
        with self._errors(PARTIAL_DIR, "list temporaries"), self.connection.sftp_lock:
            try:
                entries = self.connection.sftp().listdir_attr(directory)
            except FileNotFoundError:
                return
        for entry in sorted(entries, key=lambda e: e.filename):
            yield TemporaryObject(
                name=f"{PARTIAL_DIR}/{entry.filename}",
                size=entry.st_size or 0,
                modified_at=datetime.fromtimestamp(entry.st_mtime or 0, UTC),
            )

    def remove_temporary(self, temporary: TemporaryObject) -> bool:
        directory, _, name = temporary.name.partition("/")
        if directory != PARTIAL_DIR or not name or "/" in name or name in (".", ".."):
            raise PermanentStorageError(
                "not a temporary of this location; refusing to remove it",
                location=self.name,
                key=temporary.name,
            )
        path = posixpath.join(self.root, PARTIAL_DIR, name)
        with self._errors(temporary.name, "remove temporary"), self.connection.sftp_lock:
            sftp = self.connection.sftp()
            try:
                is_dir = stat_mode.S_ISDIR(sftp.lstat(path).st_mode or 0)
                if not is_dir:
                    sftp.remove(path)
                    return True
            except FileNotFoundError:
                return False
        status, _, err = self._run(f"rm -rf -- {shlex.quote(path)}", temporary.name, "remove")
        if status != 0:
            raise self._command_error(status, err, temporary.name, "remove temporary")
        return True

    def checksum(self, key: str, algorithm: str = DEFAULT_ALGORITHM) -> tuple[str, int]:
        """Computed on the server (``<alg>sum``, no bytes cross the network); streamed through
        ``open_read`` when the server lacks the tool."""
        path = self._path(key)
        info = self.stat(key)
        if not info.exists:
            self._require_root(key, empty_counts=True)
            raise PermanentStorageError(
                f"{path} not found on {self._connection_key.host}", location=self.name, key=key
            )
        tool = REMOTE_HASH_TOOLS.get(algorithm)
        if tool is not None:
            # Reading stdin keeps the path out of the output (sha256sum escapes odd names).
            status, out, err = self._run(
                f"{_hash_command(algorithm, tool)} < {shlex.quote(path)}", key, "checksum"
            )
            if status == 0:
                digest = out.split()[0] if out.split() else ""
                if re.fullmatch(r"[0-9a-f]+", digest):
                    return digest, info.size or 0
                raise PermanentStorageError(
                    f"unexpected output of remote {tool}: {out[:200]!r}",
                    location=self.name,
                    key=key,
                )
            if status != 127:
                raise self._command_error(status, err, key, "checksum")
            log.info("%s: %s missing on the server; streaming the object", self.name, tool)
        with self.open_read(key) as stream:
            return checksum_stream(stream, algorithm)

    def disk_usage(self) -> DiskUsage:
        """Filesystem of ``root`` from the server's ``df`` (used = blocks in use, like
        shutil.disk_usage)."""
        status, out, err = self._run(f"df -P -B1 -- {shlex.quote(self.root)}", None, "disk usage")
        if status != 0:
            self._require_root(None)
            raise self._command_error(status, err, None, "disk usage")
        lines = out.strip().splitlines()
        # Filesystem 1-blocks Used Available Capacity Mounted-on; names may contain spaces.
        match = re.search(r"\s(\d+)\s+(\d+)\s+(\d+)\s+\d+%\s", lines[-1] + " ") if lines else None
        if match is None:
            raise PermanentStorageError(
                f"cannot parse remote df output for {self.root}: {out[:300]!r}",
                location=self.name,
            )
        return DiskUsage(total_bytes=int(match.group(1)), used_bytes=int(match.group(2)))

    def close(self) -> None:
        if self._connection is not None:
            POOL.release(self._connection)
            self._connection = None


class _CatReader(io.RawIOBase):
    """The stdout of a remote ``cat``; raises at EOF unless the command succeeded and every
    byte arrived."""

    def __init__(self, storage: SSHStorage, channel: paramiko.Channel, key: str, size: int):
        super().__init__()
        self._storage = storage
        self._channel = channel
        self._key = key
        self._expected = size
        self.size = 0
        self._eof = False
        self._pending = b""
        self._offset = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            return self.readall()
        chunks: list[bytes] = []
        want = n
        while want > 0:
            if self._offset >= len(self._pending):
                if self._eof:
                    break
                self._pending, self._offset = self._recv(), 0
                continue
            if self._offset == 0 and len(self._pending) <= want:
                chunk = self._pending
            else:
                chunk = self._pending[self._offset : self._offset + want]
            self._offset += len(chunk)
            chunks.append(chunk)
            want -= len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        chunks = []
        while chunk := self.read(4 * 1024 * 1024):
            chunks.append(chunk)
        return b"".join(chunks)

    def _recv(self) -> bytes:
        # Take everything buffered: paramiko's BufferedPipe is an array whose partial reads
        # move the rest of the buffer, which made 1 GiB pulls quadratic with a large window.
        with self._storage._errors(self._key, "read"):
            data = self._channel.recv(RECV_ALL)
        if data:
            self.size += len(data)
            return data
        self._eof = True
        self._finish()
        return b""

    def _finish(self) -> None:
        with self._storage._errors(self._key, "read"):
            status = self._channel.recv_exit_status()
            stderr = self._channel.recv_stderr(65536).decode(errors="replace") if status else ""
        if status != 0:
            raise self._storage._command_error(status, stderr, self._key, "read")
        if self.size != self._expected:
            raise TransientStorageError(
                f"read {self.size} bytes, the object has {self._expected} (changed while read?)",
                location=self._storage.name,
                key=self._key,
            )

    def close(self) -> None:
        if not self.closed:
            # On a dropped transport paramiko raises EOFError here, which would hide the
            # transient error that ended the read.
            with contextlib.suppress(Exception):
                self._channel.close()
        super().close()


class _CappedReader(io.BufferedReader):
    """Fills ``read(n)`` up to READ_MAX bytes straight from the pipe into the result; larger
    requests get READ_MAX (a short read, as from a socket; every caller loops). The consumer
    then handles 1 MiB chunks, which stay in cache: 4 MiB chunks made a 1 GiB pull into a
    local file spend 2.1-2.5 s of CPU instead of 0.4 here (docs/performance.md)."""

    def read(self, size: int | None = -1) -> bytes:
        if size is not None and size > READ_MAX:
            size = READ_MAX
        return super().read(size)


class _ProcessReader(io.RawIOBase):
    """The stdout of ``ssh host cat``; raises at EOF unless the run succeeded and every byte
    arrived, and after DATA_TIMEOUT seconds without a byte."""

    def __init__(self, storage: SSHStorage, process: OpenSSHProcess, key: str, size: int):
        super().__init__()
        self._storage = storage
        self._process = process
        self._key = key
        self._expected = size
        self.size = 0
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._done:
            return 0
        fd = self._process.fd
        if not wait_fd(fd, write=False, timeout=DATA_TIMEOUT):
            self._process.stop()
            raise TransientStorageError(
                f"read stalled: no byte for {DATA_TIMEOUT:.0f} s",
                location=self._storage.name,
                key=self._key,
            )
        n = os.readv(fd, [buffer])
        if n:
            self.size += n
            return n
        self._done = True
        self._finish()
        return 0

    def _finish(self) -> None:
        process = self._process
        process.close_fd()
        status = process.wait(DATA_TIMEOUT)
        try:
            if status != 0:
                raise self._storage._ssh_process_error(process, self._key, "read")
        finally:
            process.finish()
        if self.size != self._expected:
            raise TransientStorageError(
                f"read {self.size} bytes, the object has {self._expected} (changed while read?)",
                location=self._storage.name,
                key=self._key,
            )

    def close(self) -> None:
        if not self.closed and not self._done:
            self._done = True
            self._process.stop()  # abandoned before EOF
        super().close()


class _ProcessWriter(io.RawIOBase):
    """The stdin of ``ssh host dd of=temp``; ``finish`` raises unless the run succeeded."""

    def __init__(self, storage: SSHStorage, process: OpenSSHProcess, key: str):
        super().__init__()
        self._storage = storage
        self._process = process
        self._key = key
        self.size = 0
        self._ended = False
        os.set_blocking(process.fd, False)  # so that a stalled server times out

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        fd, sent = self._process.fd, 0
        while sent < len(view):
            if not wait_fd(fd, write=True, timeout=DATA_TIMEOUT):
                self._fail_stalled()
            try:
                sent += os.write(fd, view[sent : sent + PIPE_CHUNK])
            except BlockingIOError:
                continue
            except OSError as exc:
                if not is_broken_pipe(exc):
                    raise
                raise self._ended_early() from exc
        self.size += sent
        return sent

    def _fail_stalled(self) -> None:
        self.abort()
        raise TransientStorageError(
            f"write stalled: the server took no byte for {DATA_TIMEOUT:.0f} s",
            location=self._storage.name,
            key=self._key,
        )

    def _ended_early(self) -> StorageError:
        """The ssh client went away mid-stream: its exit status and stderr say why."""
        process = self._process
        process.close_fd()
        self._ended = True
        status = process.wait(DATA_TIMEOUT)
        if status == 0:
            return TransientStorageError(
                "the remote dd exited before the end of the stream",
                location=self._storage.name,
                key=self._key,
            )
        return self._storage._ssh_process_error(process, self._key, "write")

    def finish(self) -> None:
        """End of data: wait for the remote dd to write everything, fsync and exit (a lost
        connection ends the client sooner through its keepalives)."""
        process = self._process
        process.close_fd()
        self._ended = True
        status = process.wait(FSYNC_TIMEOUT)
        if status != 0:
            raise self._storage._ssh_process_error(process, self._key, "write")
        process.finish()

    def abort(self) -> None:
        """Give up: EOF (so the remote dd ends before its file is removed),
        wait a little, then kill the client."""
        process = self._process
        if not self._ended:
            self._ended = True
            process.close_fd()
            process.wait(30.0)
        process.stop()


class _SFTPWriter(io.RawIOBase):
    """A pipelined SFTP file handle on the temporary name."""

    def __init__(self, storage: SSHStorage, handle: paramiko.SFTPFile, key: str):
        super().__init__()
        self._storage = storage
        self._handle = handle
        self._key = key
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        with self._storage._errors(self._key, "write"):
            self._handle.write(data)
        n = len(data)
        self.size += n
        return n

    def abort(self, sftp: paramiko.SFTPClient) -> None:
        """Give up: close the session first so closing the handle neither waits for pending
        acknowledgements nor raises later from the garbage collector."""
        try:
            sftp.close()
            self._handle.set_pipelined(False)
            self._handle.close()
        except Exception:  # noqa: BLE001 - the write already failed; that error is reported
            pass


def close_all_connections() -> None:
    """Close every pooled SSH connection of this process (tests, shutdown)."""
    POOL.close_all()
