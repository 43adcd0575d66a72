"""SSHStorage against a real OpenSSH sshd on 127.0.0.1: bytes, atomicity, listing, disk usage,
shell-safe paths and error classes. The server is local, so remote files are inspected directly
on disk."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from ccat_dagster.storage.errors import (
    ChecksumMismatchError,
    PermanentStorageError,
    TransientStorageError,
)
from ccat_dagster.storage.ssh import SSHStorage, is_temp_name

MiB = 1024 * 1024


@pytest.fixture
def remote_root(tmp_path: Path) -> Path:
    return tmp_path / "remote root"  # a space in the root too


@pytest.fixture
def storage(sshd_server, remote_root: Path):
    storage = sshd_server.storage(remote_root, name="test/ssh_buffer")
    yield storage
    storage.close()


def files_under(root: Path) -> list[str]:
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_round_trip_keeps_every_byte_and_checksum(storage, remote_root):
    data = os.urandom(6 * MiB + 123)
    expected = hashlib.sha256(data).hexdigest()

    result = storage.write_stream("pkg/raw_data_package_1.tar", io.BytesIO(data))

    assert result.checksum == expected and result.size == len(data)
    assert (remote_root / "pkg" / "raw_data_package_1.tar").read_bytes() == data
    assert storage.stat("pkg/raw_data_package_1.tar").size == len(data)
    with storage.open_read("pkg/raw_data_package_1.tar") as stream:
        assert stream.read() == data
    assert storage.checksum("pkg/raw_data_package_1.tar") == (expected, len(data))
    for algorithm in ("md5", "sha512", "blake2b"):  # openssl or coreutils on the server
        digest = hashlib.new(algorithm, data).hexdigest()
        assert storage.checksum("pkg/raw_data_package_1.tar", algorithm) == (digest, len(data))
    # an algorithm without a server-side tool is streamed instead
    sha3 = hashlib.sha3_256(data).hexdigest()
    assert storage.checksum("pkg/raw_data_package_1.tar", "sha3_256") == (sha3, len(data))


def test_open_write_that_raises_leaves_nothing(storage, remote_root):
    with pytest.raises(RuntimeError), storage.open_write("pkg/a.tar") as out:
        out.write(os.urandom(2 * MiB))
        raise RuntimeError("producer failed")

    assert not storage.stat("pkg/a.tar").exists
    assert files_under(remote_root) == []


def test_checksum_mismatch_leaves_nothing_under_the_key(storage, remote_root):
    with pytest.raises(ChecksumMismatchError):
        storage.write_stream("pkg/b.tar", io.BytesIO(os.urandom(MiB)), expected_checksum="0" * 64)

    assert not storage.stat("pkg/b.tar").exists
    assert files_under(remote_root) == []


def test_write_replaces_an_existing_object_whole(storage, remote_root):
    storage.write_stream("c.bin", io.BytesIO(b"old contents, longer than the new"))
    storage.write_stream("c.bin", io.BytesIO(b"new"))
    assert (remote_root / "c.bin").read_bytes() == b"new"


def test_delete_is_idempotent(storage, remote_root):
    storage.write_stream("d.bin", io.BytesIO(b"x"))

    first, second = storage.delete("d.bin"), storage.delete("d.bin")

    assert (first.existed, second.existed) == (True, False)
    assert not (remote_root / "d.bin").exists()


def test_list_yields_objects_under_prefix_and_skips_in_progress_writes(storage, remote_root):
    for key, size in [("raw/pkg_1.tar", 1), ("raw/pkg_2.tar", 2), ("raw/sub/x", 3), ("dtp/y", 4)]:
        storage.write_stream(key, io.BytesIO(b"z" * size))
    temp = remote_root / "raw" / ".pkg_3.tar.part-0123456789abcdef0123456789abcdef"
    temp.write_bytes(b"partial")
    assert is_temp_name(temp.name)

    assert list(storage.list()) == [
        ("dtp/y", 4),
        ("raw/pkg_1.tar", 1),
        ("raw/pkg_2.tar", 2),
        ("raw/sub/x", 3),
    ]
    assert list(storage.list("raw/pkg_")) == [("raw/pkg_1.tar", 1), ("raw/pkg_2.tar", 2)]
    assert list(storage.list("raw/sub/")) == [("raw/sub/x", 3)]
    assert list(storage.list("nothing/here")) == []


def test_disk_usage_reports_the_filesystem_of_the_root(storage, remote_root):
    storage.write_stream("e.bin", io.BytesIO(b"x"))  # creates the root

    usage = storage.disk_usage()

    local = shutil.disk_usage(remote_root)
    assert usage.total_bytes == local.total
    assert 0 < usage.used_bytes <= usage.total_bytes
    assert 0.0 < usage.percent <= 100.0


def test_disk_usage_of_missing_root_is_permanent_error(sshd_server, tmp_path):
    storage = sshd_server.storage(tmp_path / "does-not-exist")
    with pytest.raises(PermanentStorageError, match="not found"):
        storage.disk_usage()


def test_changed_host_key_is_refused(sshd_server, tmp_path):
    known_hosts = sshd_server.write_wrong_known_hosts(tmp_path / "known_hosts")
    storage = SSHStorage(
        "test/changed_key",
        sshd_server.host,
        sshd_server.port,
        sshd_server.user,
        str(tmp_path),
        key_filename=sshd_server.key_file,
        known_hosts=known_hosts,
    )
    with pytest.raises(PermanentStorageError) as caught:
        storage.stat("anything")
    message = str(caught.value)
    assert "CHANGED" in message
    assert f"{sshd_server.host}:{sshd_server.port}" in message
    assert known_hosts in message and "test/changed_key" in message
    storage.close()


def test_unknown_host_is_refused_and_never_added(sshd_server, tmp_path):
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[{sshd_server.host}]:1 {sshd_server.host_public_key}\n")
    storage = SSHStorage(
        "test/unknown_host",
        sshd_server.host,
        sshd_server.port,
        sshd_server.user,
        str(tmp_path),
        key_filename=sshd_server.key_file,
        known_hosts=str(known_hosts),
    )
    with pytest.raises(PermanentStorageError, match="unknown") as caught:
        storage.stat("anything")
    assert str(known_hosts) in str(caught.value)
    assert f"{sshd_server.host}:{sshd_server.port}" in str(caught.value)
    assert known_hosts.read_text().count("\n") == 1  # nothing was auto-added
    storage.close()


def test_known_hosts_from_environment_is_used(sshd_server, tmp_path, monkeypatch):
    monkeypatch.setenv("CCAT_SSH_KNOWN_HOSTS", sshd_server.known_hosts)
    monkeypatch.setenv("CCAT_SSH_KEY_FILE", sshd_server.key_file)
    storage = SSHStorage("test/env", sshd_server.host, sshd_server.port, None, str(tmp_path))
    assert not storage.stat("missing").exists
    storage.close()


@pytest.mark.parametrize(
    "key",
    [
        "a b;$(touch pwned)",
        'it\'s "quoted" `touch pwned`',
        "dir with space/$HOME & x|y > z",
    ],
)
def test_shell_metacharacters_in_keys_are_data_not_commands(storage, remote_root, key, tmp_path):
    data = os.urandom(100_000)

    storage.write_stream(key, io.BytesIO(data))

    assert (remote_root / key).read_bytes() == data
    with storage.open_read(key) as stream:
        assert stream.read() == data
    assert storage.checksum(key) == (hashlib.sha256(data).hexdigest(), len(data))
    assert list(storage.list()) == [(key, len(data))]
    assert storage.delete(key).existed
    for place in (remote_root, tmp_path, Path.home(), Path.cwd()):
        assert not (place / "pwned").exists()


@pytest.mark.parametrize("key", ["/etc/passwd", "../outside", "a/../../b", "", "a//b", "./a"])
def test_invalid_keys_are_refused_with_location_named(storage, key):
    with pytest.raises(PermanentStorageError) as caught:
        storage.stat(key)
    assert "test/ssh_buffer" in str(caught.value)


def test_missing_object_is_a_permanent_error(storage):
    with pytest.raises(PermanentStorageError, match="not found"), storage.open_read("nope.tar"):
        pass
    with pytest.raises(PermanentStorageError, match="not found"):
        storage.checksum("nope.tar")


class _KillingStream:
    """A source that drops the SSH connection (kills the server side) after ``after`` bytes."""

    def __init__(self, sshd_server, total: int, after: int):
        self._server = sshd_server
        self._left = total
        self._after = after
        self._sent = 0
        self.killed = 0

    def read(self, n: int = -1) -> bytes:
        if self._sent >= self._after and not self.killed:
            self.killed = self._server.kill_connections()
        n = min(self._left, 1 * MiB if n < 0 else min(n, MiB))
        self._left -= n
        self._sent += n
        return os.urandom(n)


def test_connection_dropped_mid_write_leaves_no_file_and_is_transient(
    sshd_server, storage, remote_root
):
    source = _KillingStream(sshd_server, total=64 * MiB, after=4 * MiB)

    with pytest.raises(TransientStorageError) as caught:
        storage.write_stream("pkg/big.tar", source)

    assert source.killed >= 1
    assert "test/ssh_buffer" in str(caught.value) and "pkg/big.tar" in str(caught.value)
    assert not (remote_root / "pkg" / "big.tar").exists()
    assert not storage.stat("pkg/big.tar").exists  # and the next call reconnects
    assert files_under(remote_root) == []  # the temporary file was removed after reconnecting


def test_transport_closed_from_another_thread_mid_write_leaves_no_file(storage, remote_root):
    started = threading.Event()

    def close_transport():
        started.wait(30)
        storage.connection.transport().close()

    closer = threading.Thread(target=close_transport)
    closer.start()
    with pytest.raises(TransientStorageError), storage.open_write("pkg/c.tar") as out:
        for i in range(64):
            out.write(os.urandom(MiB))
            if i == 2:
                started.set()
                closer.join()
    assert not (remote_root / "pkg" / "c.tar").exists()
    assert not storage.stat("pkg/c.tar").exists


def test_connection_dropped_mid_read_is_transient(sshd_server, storage, remote_root):
    remote_root.mkdir()
    (remote_root / "big.bin").write_bytes(os.urandom(32 * MiB))

    with pytest.raises(TransientStorageError), storage.open_read("big.bin") as stream:
        stream.read(MiB)
        sshd_server.kill_connections()
        while stream.read(MiB):
            pass


def test_operations_reuse_one_connection(sshd_server, storage, remote_root):
    storage.write_stream("f.bin", io.BytesIO(b"abc"))
    transport = storage.connection.transport()
    connects = storage.connection.connects
    with storage.open_read("f.bin") as stream:
        stream.read()
    storage.checksum("f.bin")
    list(storage.list())
    storage.delete("f.bin")
    other = sshd_server.storage(remote_root, name="test/other_location")
    other.stat("f.bin")

    assert storage.connection.transport() is transport
    assert other.connection is storage.connection
    assert storage.connection.connects == connects  # no new SSH connection was made


def test_dropped_connection_is_replaced_on_next_call(sshd_server, storage):
    storage.stat("x")
    before = storage.connection.connects
    sshd_server.kill_connections()
    transport = storage.connection._transport
    # wait until paramiko notices the drop (the server side is gone)
    for _ in range(100):
        if not transport.is_active():
            break
        time.sleep(0.05)

    assert not storage.stat("x").exists
    assert storage.connection.connects == before + 1
