"""SSHStorage against a real OpenSSH sshd on 127.0.0.1: bytes, atomicity, listing, disk usage,
shell-safe paths and error classes, with bulk bytes through the OpenSSH client and through the
paramiko fallback. The server is local, so remote files are inspected directly on disk."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from ccat_dagster.run_health import process_running
from ccat_dagster.storage.errors import (
    ChecksumMismatchError,
    LocationUnavailableError,
    PermanentStorageError,
    TransientStorageError,
)
from ccat_dagster.storage.ssh import SSHStorage, close_all_connections, is_temp_name
from ccat_dagster.storage.ssh_subprocess import OpenSSHClient, classify_exit

MiB = 1024 * 1024


@pytest.fixture
def remote_root(tmp_path: Path) -> Path:
    root = tmp_path / "remote root"  # a space in the root too
    root.mkdir()
    return root


@pytest.fixture(params=["openssh", "paramiko"])
def storage(request, sshd_server, remote_root: Path):
    """Bulk bytes through the OpenSSH client (the default here) and through paramiko."""
    storage = sshd_server.storage(remote_root, name="test/ssh_buffer")
    storage.bulk_transport = request.param
    yield storage
    storage.close()


@pytest.fixture
def paramiko_storage(sshd_server, remote_root: Path):
    storage = sshd_server.storage(remote_root, name="test/ssh_buffer")
    storage.bulk_transport = "paramiko"
    yield storage
    storage.close()


@pytest.fixture
def openssh_storage(sshd_server, remote_root: Path):
    storage = sshd_server.storage(remote_root, name="test/ssh_buffer")
    assert storage.bulk_transport == "openssh"  # ssh is installed here and in the image
    yield storage
    storage.close()


def unpooled_storage(sshd_server, tmp_path: Path, name: str) -> SSHStorage:
    """A storage with an SSH connection of its own (its own copy of known_hosts makes a
    different pool key), so that no other test holds its connection open."""
    known_hosts = tmp_path / f"known_hosts-{name.replace('/', '_')}"
    shutil.copy(sshd_server.known_hosts, known_hosts)
    (tmp_path / "root").mkdir(exist_ok=True)
    return SSHStorage(
        name,
        sshd_server.host,
        sshd_server.port,
        sshd_server.user,
        str(tmp_path / "root"),
        key_filename=sshd_server.key_file,
        known_hosts=str(known_hosts),
    )


def files_under(root: Path) -> list[str]:
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_round_trip_keeps_every_byte_and_checksum(storage, remote_root):
    data = os.urandom(6 * MiB + 123)
    expected = hashlib.sha256(data).hexdigest()

    result = storage.write_stream("pkg/raw_data_package_1.tar", io.BytesIO(data))

    assert result.checksum == expected
    assert result.size == len(data)
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
    temp.write_bytes(b"partial")  # the name of a write in progress before .ccat-partial/
    assert is_temp_name(temp.name)
    (remote_root / ".ccat-partial" / "0123-pkg_4.tar").write_bytes(b"partial")

    assert list(storage.list()) == [
        ("dtp/y", 4),
        ("raw/pkg_1.tar", 1),
        ("raw/pkg_2.tar", 2),
        ("raw/sub/x", 3),
    ]
    assert list(storage.list("raw/pkg_")) == [("raw/pkg_1.tar", 1), ("raw/pkg_2.tar", 2)]
    assert list(storage.list("raw/sub/")) == [("raw/sub/x", 3)]
    assert list(storage.list("nothing/here")) == []


def test_leftover_of_a_killed_write_is_listed_and_removed(storage, remote_root):
    storage.write_stream("raw/kept.tar", io.BytesIO(b"object"))
    partial = remote_root / ".ccat-partial"
    assert list(partial.iterdir()) == [], "a finished write leaves nothing behind"
    (partial / "0123-pkg.tar").write_bytes(b"x" * 10)  # its writer was killed
    os.utime(partial / "0123-pkg.tar", (1_000_000_000, 1_000_000_000))
    (partial / ".ccat-unpack-abc" / "raw").mkdir(parents=True)
    (partial / ".ccat-unpack-abc" / "raw" / "f").write_bytes(b"y")
    found = {t.name: t for t in storage.list_temporaries()}
    assert set(found) == {".ccat-partial/0123-pkg.tar", ".ccat-partial/.ccat-unpack-abc"}
    assert found[".ccat-partial/0123-pkg.tar"].size == 10
    assert found[".ccat-partial/0123-pkg.tar"].modified_at.timestamp() == 1_000_000_000
    for temporary in found.values():
        assert storage.remove_temporary(temporary) is True
        assert storage.remove_temporary(temporary) is False
    assert list(storage.list_temporaries()) == []
    assert files_under(remote_root) == ["raw/kept.tar"]


def test_write_in_progress_is_a_temporary_until_it_completes(storage, remote_root):
    with storage.open_write("raw/slow.tar") as out:
        out.write(b"a" * 1000)
        out.flush()
        [temporary] = storage.list_temporaries()
        assert temporary.name.endswith("-slow.tar")
        assert not (remote_root / "raw" / "slow.tar").exists()
    assert list(storage.list_temporaries()) == []
    assert (remote_root / "raw" / "slow.tar").read_bytes() == b"a" * 1000


def test_disk_usage_reports_the_filesystem_of_the_root(storage, remote_root):
    storage.write_stream("e.bin", io.BytesIO(b"x"))  # creates the root

    usage = storage.disk_usage()

    local = shutil.disk_usage(remote_root)
    assert usage.total_bytes == local.total
    assert 0 < usage.used_bytes <= usage.total_bytes
    assert 0.0 < usage.percent <= 100.0


def test_missing_root_is_a_location_condition_and_is_never_recreated(sshd_server, tmp_path):
    storage = sshd_server.storage(tmp_path / "does-not-exist")
    for call in (
        storage.disk_usage,
        lambda: storage.stat("pkg/a.tar"),
        lambda: storage.open_read("pkg/a.tar").__enter__(),
        lambda: storage.write_stream("pkg/a.tar", io.BytesIO(b"abc")),
        lambda: storage.delete("pkg/a.tar"),
        lambda: list(storage.list()),
    ):
        with pytest.raises(LocationUnavailableError, match="missing") as caught:
            call()
        assert caught.value.location == "test/ssh"
    assert not (tmp_path / "does-not-exist").exists()


def test_root_replaced_by_a_file_is_a_location_condition(sshd_server, tmp_path):
    (tmp_path / "root").write_text("not a directory")
    storage = sshd_server.storage(tmp_path / "root")
    with pytest.raises(LocationUnavailableError, match="not a directory"):
        storage.write_stream("pkg/a.tar", io.BytesIO(b"abc"))


def test_unreachable_host_is_a_location_condition(sshd_server, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    storage = SSHStorage(
        "test/down",
        "127.0.0.1",
        port,
        sshd_server.user,
        str(tmp_path),
        key_filename=sshd_server.key_file,
        known_hosts=sshd_server.known_hosts,
    )
    try:
        with pytest.raises(LocationUnavailableError, match="cannot reach") as caught:
            storage.stat("a.tar")
        assert caught.value.location == "test/down"
    finally:
        storage.close()


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
    assert known_hosts in message
    assert "test/changed_key" in message
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


def test_missing_object_is_a_permanent_error(storage, remote_root):
    (remote_root / "other.tar").write_bytes(b"x")  # a location in use: its root is not empty
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
    assert "test/ssh_buffer" in str(caught.value)
    assert "pkg/big.tar" in str(caught.value)
    assert not (remote_root / "pkg" / "big.tar").exists()
    assert not storage.stat("pkg/big.tar").exists  # and the next call reconnects
    assert files_under(remote_root) == []  # the temporary file was removed after reconnecting


def test_transport_closed_from_another_thread_mid_write_leaves_no_file(
    paramiko_storage, remote_root
):
    storage = paramiko_storage
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


def test_openssh_master_killed_mid_write_leaves_no_file(openssh_storage, remote_root):
    storage = openssh_storage
    with pytest.raises(TransientStorageError), storage.open_write("pkg/m.tar") as out:
        for i in range(64):
            out.write(os.urandom(MiB))
            if i == 2:
                os.kill(storage.connection.openssh().master_pid, 9)
    assert not (remote_root / "pkg" / "m.tar").exists()
    storage.write_stream("pkg/m.tar", io.BytesIO(b"after"))  # a new master is started
    assert (remote_root / "pkg" / "m.tar").read_bytes() == b"after"
    assert files_under(remote_root) == ["pkg/m.tar"]


def test_bulk_transport_falls_back_to_paramiko_without_ssh_client(
    sshd_server, tmp_path, monkeypatch
):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no ssh on PATH
    storage = unpooled_storage(sshd_server, tmp_path, "test/no_ssh_client")
    assert storage.bulk_transport == "paramiko"

    storage.write_stream("a.bin", io.BytesIO(b"bytes via paramiko"))
    with storage.open_read("a.bin") as stream:
        assert stream.read() == b"bytes via paramiko"
    assert storage.connection._openssh is None  # the OpenSSH client was never used
    storage.close()


def test_bulk_transport_can_be_chosen_and_bad_choice_is_refused(sshd_server, tmp_path, monkeypatch):
    monkeypatch.setenv("CCAT_SSH_BULK_TRANSPORT", "paramiko")
    assert sshd_server.storage(tmp_path).bulk_transport == "paramiko"
    monkeypatch.setenv("CCAT_SSH_BULK_TRANSPORT", "openssh")
    assert sshd_server.storage(tmp_path).bulk_transport == "openssh"
    monkeypatch.setenv("CCAT_SSH_BULK_TRANSPORT", "rsync")
    with pytest.raises(PermanentStorageError, match="CCAT_SSH_BULK_TRANSPORT"):
        sshd_server.storage(tmp_path)
    monkeypatch.setenv("CCAT_SSH_BULK_TRANSPORT", "openssh")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(PermanentStorageError, match="no ssh client"):
        sshd_server.storage(tmp_path)


def test_openssh_transfers_share_one_master_connection(sshd_server, tmp_path):
    storage = unpooled_storage(sshd_server, tmp_path, "test/one_master")
    storage.write_stream("a.bin", io.BytesIO(b"first"))
    client = storage.connection.openssh()
    master = client.master_pid
    connections = len(sshd_server.connection_pids())
    for i in range(5):
        storage.write_stream(f"b{i}.bin", io.BytesIO(b"x" * i))
        with storage.open_read(f"b{i}.bin") as stream:
            assert stream.read() == b"x" * i

    assert client.master_pid == master
    assert client.masters_started == 1
    assert len(sshd_server.connection_pids()) == connections  # no new SSH connection
    storage.close()


def test_closing_the_last_storage_leaves_no_ssh_process(sshd_server, tmp_path):
    storage = unpooled_storage(sshd_server, tmp_path, "test/close")
    storage.write_stream("a.bin", io.BytesIO(b"a"))
    client = storage.connection.openssh()
    master, control_dir = client.master_pid, client._control_dir
    assert master is not None
    assert process_running(master)

    storage.close()

    assert not process_running(master)
    assert not os.path.exists(control_dir)


def test_close_all_connections_stops_openssh_masters(sshd_server, tmp_path):
    storage = unpooled_storage(sshd_server, tmp_path, "test/close_all")
    storage.write_stream("a.bin", io.BytesIO(b"a"))
    master = storage.connection.openssh().master_pid

    close_all_connections()

    assert not process_running(master)
    storage._connection = None  # the pool forgot it; the storage reconnects on next use
    assert storage.stat("a.bin").size == 1
    storage.close()


def test_abandoned_read_stops_the_transfer(storage, remote_root):
    (remote_root / "big.bin").write_bytes(os.urandom(16 * MiB))

    with storage.open_read("big.bin") as stream:
        assert len(stream.read(MiB)) == MiB

    with storage.open_read("big.bin") as stream:
        assert stream.read() == (remote_root / "big.bin").read_bytes()


def test_object_vanished_between_stat_and_read_is_permanent(storage, monkeypatch):
    from ccat_dagster.storage.base import ObjectStat

    monkeypatch.setattr(storage, "stat", lambda key: ObjectStat(exists=True, size=5))
    with (
        pytest.raises(PermanentStorageError, match="not found") as caught,
        storage.open_read("gone.tar") as stream,
    ):
        stream.read()
    assert "gone.tar" in str(caught.value)
    assert "test/ssh_buffer" in str(caught.value)


def test_short_read_is_detected_as_transient(storage, remote_root, monkeypatch):
    from ccat_dagster.storage.base import ObjectStat

    (remote_root / "short.bin").write_bytes(b"12345")
    monkeypatch.setattr(storage, "stat", lambda key: ObjectStat(exists=True, size=10))
    with (
        pytest.raises(TransientStorageError, match="read 5 bytes, the object has 10"),
        storage.open_read("short.bin") as stream,
    ):
        stream.read()


def test_write_into_unwritable_place_is_permanent(storage, remote_root):
    (remote_root / "pkg").write_text("a file where a directory should be")
    with pytest.raises(PermanentStorageError, match="not a directory"):
        storage.write_stream("pkg/x.tar", io.BytesIO(b"x"))
    assert (remote_root / "pkg").read_text() == "a file where a directory should be"


def test_openssh_client_refuses_a_changed_host_key_and_never_adds_it(sshd_server, tmp_path):
    known_hosts = sshd_server.write_wrong_known_hosts(tmp_path / "known_hosts")
    before = Path(known_hosts).read_text()
    client = OpenSSHClient(
        sshd_server.host,
        sshd_server.port,
        sshd_server.user,
        sshd_server.key_file,
        [known_hosts],
        "test/changed_key",
    )
    try:
        process = client.start("echo should-not-run", write=False)
        output = os.read(process.fd, 100)
        status = process.wait(60)
        error = classify_exit(
            status, process.stderr_text(), where="read", location="test/changed_key", key=None
        )
        process.stop()
    finally:
        client.close()

    assert output == b""
    assert isinstance(error, PermanentStorageError)
    assert "host key" in str(error)
    assert Path(known_hosts).read_text() == before  # nothing was added or updated
    assert client.master_pid is None


def test_openssh_client_refuses_an_unknown_host(sshd_server, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    client = OpenSSHClient(
        sshd_server.host,
        sshd_server.port,
        sshd_server.user,
        sshd_server.key_file,
        [str(empty)],
        "t",
    )
    try:
        process = client.start("echo should-not-run", write=False)
        assert os.read(process.fd, 100) == b""
        status = process.wait(60)
        error = classify_exit(status, process.stderr_text(), where="read", location="t", key=None)
        process.stop()
    finally:
        client.close()
    assert isinstance(error, PermanentStorageError)
    assert "host key" in str(error)
    assert empty.read_text() == ""


@pytest.mark.parametrize(
    ("status", "stderr", "expected"),
    [
        (255, "ssh: connect to host h port 22: Connection refused", LocationUnavailableError),
        (255, "Connection reset by peer", TransientStorageError),
        (255, "ssh: connect to host h port 22: Connection timed out", LocationUnavailableError),
        (255, "Connection to h closed by remote host.", TransientStorageError),
        (255, "", TransientStorageError),
        (-9, "", TransientStorageError),
        (255, "Host key verification failed.", PermanentStorageError),
        (255, "root@h: Permission denied (publickey).", PermanentStorageError),
        (255, "Unable to negotiate with h port 22: no matching cipher", PermanentStorageError),
        (1, "cat: x: No such file or directory", None),  # the remote command's own failure
    ],
)
def test_ssh_client_failures_are_classified(status, stderr, expected):
    error = classify_exit(status, stderr, where="read on h:22", location="loc", key="k")
    if expected is None:
        assert error is None
    else:
        assert type(error) is expected
        assert "loc" in str(error)
        assert "k" in str(error)


def test_missing_object_in_an_empty_root_is_a_gone_mount(storage):
    with pytest.raises(LocationUnavailableError, match="empty"), storage.open_read("a.tar"):
        pass
