"""LocalDiskStorage: atomic writes, idempotent deletes, listing, key validation, error mapping."""

from __future__ import annotations

import errno
import io
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ccat_dagster.storage.base import TemporaryObject
from ccat_dagster.storage.errors import (
    ChecksumMismatchError,
    LocationFullError,
    LocationUnavailableError,
    PermanentStorageError,
    TransientStorageError,
)
from ccat_dagster.storage.local import LocalDiskStorage, map_os_error
from ccat_dagster_tests.fixtures.ci import unavailable
from ccat_ops_db.checksum import checksum_chunks

NAME = "ccat/telescope_buffer"


@pytest.fixture
def disk(tmp_path: Path) -> LocalDiskStorage:
    (tmp_path / "root").mkdir()
    return LocalDiskStorage(NAME, tmp_path / "root")


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_open_write_publishes_bytes_only_when_block_completes(disk: LocalDiskStorage):
    final = disk.root / "pkg/a.tar"
    with disk.open_write("pkg/a.tar") as out:
        out.write(b"hello ")
        out.write(b"world")
        assert not final.exists()
        assert list(final.parent.iterdir()) == []
        [part] = list((disk.root / ".ccat-partial").iterdir())
        assert part.name.endswith("-a.tar")
        [temporary] = list(disk.list_temporaries())
        assert temporary.name == f".ccat-partial/{part.name}"
    assert final.read_bytes() == b"hello world"
    assert files_under(disk.root) == ["pkg/a.tar"]
    assert list(disk.list_temporaries()) == []


def test_exception_inside_open_write_leaves_nothing(disk: LocalDiskStorage):
    with pytest.raises(RuntimeError, match="boom"), disk.open_write("pkg/a.tar") as out:
        out.write(b"x" * 1000)
        raise RuntimeError("boom")
    assert not disk.stat("pkg/a.tar").exists
    assert files_under(disk.root) == []


def test_failed_overwrite_keeps_previous_object(disk: LocalDiskStorage):
    with disk.open_write("a.bin") as out:
        out.write(b"original")
    with pytest.raises(RuntimeError), disk.open_write("a.bin") as out:
        out.write(b"new but broken")
        raise RuntimeError("connection lost")
    assert (disk.root / "a.bin").read_bytes() == b"original"
    assert files_under(disk.root) == ["a.bin"]


def test_write_stream_verifies_checksum_and_leaves_nothing_on_mismatch(disk: LocalDiskStorage):
    data = os.urandom(100_000)
    good, size = checksum_chunks([data])
    result = disk.write_stream("ok.bin", io.BytesIO(data), expected_checksum=good)
    assert (result.size, result.checksum) == (size, good)
    assert (disk.root / "ok.bin").read_bytes() == data

    with pytest.raises(ChecksumMismatchError) as info:
        disk.write_stream("bad.bin", io.BytesIO(data), expected_checksum="0" * 64)
    assert NAME in str(info.value)
    assert "bad.bin" in str(info.value)
    assert not disk.stat("bad.bin").exists
    assert files_under(disk.root) == ["ok.bin"]


def test_stat_read_checksum_roundtrip(disk: LocalDiskStorage):
    data = os.urandom(3 * 1024 * 1024 + 7)
    with disk.open_write("d/x.bin") as out:
        out.write(data)
    assert disk.stat("d/x.bin").size == len(data)
    with disk.open_read("d/x.bin") as stream:
        assert stream.read() == data
    assert disk.checksum("d/x.bin") == checksum_chunks([data])
    assert disk.checksum("d/x.bin", "md5") == checksum_chunks([data], "md5")


def test_delete_is_idempotent_and_says_whether_object_existed(disk: LocalDiskStorage):
    with disk.open_write("a/b.bin") as out:
        out.write(b"1")
    first = disk.delete("a/b.bin")
    second = disk.delete("a/b.bin")
    assert (first.existed, second.existed) == (True, False)
    assert not (disk.root / "a/b.bin").exists()


def test_list_returns_sizes_under_prefix_and_skips_writes_in_progress(disk: LocalDiskStorage):
    for key, size in [("raw/p1/f1", 1), ("raw/p1/f2", 2), ("raw/p2/f3", 3), ("other/x", 4)]:
        with disk.open_write(key) as out:
            out.write(b"z" * size)
    with disk.open_write("raw/p1/in_progress"):
        listed = dict(disk.list())
        assert "raw/p1/in_progress" not in listed
        assert not any(".part-" in k for k in listed)
    disk.delete("raw/p1/in_progress")  # completed (empty) when its block ended
    assert dict(disk.list("raw/")) == {"raw/p1/f1": 1, "raw/p1/f2": 2, "raw/p2/f3": 3}
    assert dict(disk.list("raw/p1/f")) == {"raw/p1/f1": 1, "raw/p1/f2": 2}
    assert list(disk.list("nothing/here/")) == []
    assert len(dict(disk.list())) == 4


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../escape", "a/../../b", "a/./b", "a//b"])
def test_invalid_keys_are_refused_naming_location_and_key(disk: LocalDiskStorage, key: str):
    for call in (
        lambda: disk.stat(key),
        lambda: disk.delete(key),
        lambda: disk.open_write(key).__enter__(),
        lambda: disk.open_read(key).__enter__(),
    ):
        with pytest.raises(PermanentStorageError) as info:
            call()
        assert NAME in str(info.value)
        assert repr(key) in str(info.value)
    assert not disk.root.exists() or files_under(disk.root) == []


def test_reading_a_missing_object_is_a_permanent_missing_source_error(disk: LocalDiskStorage):
    with disk.open_write("pkg/other.tar") as out:  # a location in use: its root is not empty
        out.write(b"x")
    with pytest.raises(PermanentStorageError, match="missing source") as info:
        disk.open_read("pkg/nope.tar").__enter__()
    assert NAME in str(info.value)
    assert "pkg/nope.tar" in str(info.value)
    with pytest.raises(PermanentStorageError, match="missing source"):
        disk.checksum("pkg/nope.tar")


@pytest.mark.parametrize(
    ("code", "kind", "phrase"),
    [
        (errno.ENOENT, PermanentStorageError, "missing source"),
        (errno.EACCES, PermanentStorageError, "permission denied"),
        (errno.EPERM, PermanentStorageError, "permission denied"),
        (errno.ENOSPC, LocationFullError, "disk full"),
        (errno.EDQUOT, LocationFullError, "disk full"),
        (errno.EROFS, LocationUnavailableError, "read-only"),
        (errno.ENOTDIR, LocationUnavailableError, "not a directory"),
        (errno.ESTALE, LocationUnavailableError, "not answering"),
        (errno.ENOTCONN, LocationUnavailableError, "not answering"),
        (errno.EIO, TransientStorageError, "retry"),
    ],
)
def test_os_errors_are_classified(code: int, kind: type, phrase: str):
    err = map_os_error(OSError(code, os.strerror(code)), location=NAME, key="k", reading=True)
    assert type(err) is kind
    assert phrase in str(err)
    assert NAME in str(err)
    assert "object=k" in str(err)


def test_permission_denied_on_real_directory_is_permanent(disk: LocalDiskStorage):
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions (see the read-only tmpfs test)")
    (disk.root / "locked").mkdir(parents=True)
    (disk.root / "locked").chmod(0o500)
    try:
        with pytest.raises(PermanentStorageError, match="permission denied"):
            disk.open_write("locked/a.bin").__enter__()
    finally:
        (disk.root / "locked").chmod(0o700)


@pytest.fixture
def tiny_tmpfs(tmp_path: Path):
    """A 1 MiB tmpfs (needs mount privileges: fails under CI, skipped elsewhere, without them)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True
    )
    if done.returncode != 0:
        unavailable(f"cannot mount a tmpfs here (run as root): {done.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_is_a_location_condition_and_leaves_no_partial_file(tiny_tmpfs: Path):
    disk = LocalDiskStorage(NAME, tiny_tmpfs)
    with pytest.raises(LocationFullError, match="disk full") as info:
        disk.write_stream("big.bin", io.BytesIO(b"x" * (3 * 1024 * 1024)))
    assert "big.bin" in str(info.value)
    assert files_under(tiny_tmpfs) == []
    assert list(disk.list_temporaries()) == []


def test_read_only_filesystem_is_a_location_condition(tiny_tmpfs: Path):
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], check=True)
    disk = LocalDiskStorage(NAME, tiny_tmpfs)
    with pytest.raises(LocationUnavailableError, match="read-only"):
        disk.write_stream("a.bin", io.BytesIO(b"abc"))


def test_disk_usage_reports_filesystem_of_root(disk: LocalDiskStorage):
    usage = disk.disk_usage()
    assert usage.total_bytes > 0
    assert 0 <= usage.percent <= 100


def test_leftovers_of_a_killed_write_and_unpack_are_listed_and_removed(disk: LocalDiskStorage):
    with disk.open_write("raw/kept.bin") as out:
        out.write(b"object")
    partial = disk.root / ".ccat-partial"
    (partial / "0123-pkg.tar").write_bytes(b"x" * 10)  # a write whose process was killed
    unpack = partial / ".ccat-unpack-abc" / "raw" / "obs"
    unpack.mkdir(parents=True)
    (unpack / "f1.fits").write_bytes(b"y" * 7)
    os.utime(partial / "0123-pkg.tar", (1_000_000_000, 1_000_000_000))
    found = {t.name: t for t in disk.list_temporaries()}
    assert set(found) == {".ccat-partial/0123-pkg.tar", ".ccat-partial/.ccat-unpack-abc"}
    assert found[".ccat-partial/0123-pkg.tar"].size == 10
    assert found[".ccat-partial/0123-pkg.tar"].modified_at.timestamp() == 1_000_000_000
    assert found[".ccat-partial/.ccat-unpack-abc"].size == 7
    assert dict(disk.list()) == {"raw/kept.bin": 6}, "temporaries are never objects"
    for temporary in found.values():
        assert disk.remove_temporary(temporary) is True
        assert disk.remove_temporary(temporary) is False
    assert list(disk.list_temporaries()) == []
    assert files_under(disk.root) == ["raw/kept.bin"]


@pytest.mark.parametrize("name", ["raw/kept.bin", ".ccat-partial/../raw/kept.bin", ".ccat-partial"])
def test_remove_temporary_refuses_anything_else(disk: LocalDiskStorage, name: str):
    with disk.open_write("raw/kept.bin") as out:
        out.write(b"object")
    fake = TemporaryObject(name=name, size=6, modified_at=datetime.now(UTC))
    with pytest.raises(PermanentStorageError, match="not a temporary"):
        disk.remove_temporary(fake)
    assert (disk.root / "raw" / "kept.bin").exists()


def test_keys_under_the_directory_of_writes_in_progress_are_refused(disk: LocalDiskStorage):
    with pytest.raises(PermanentStorageError, match="reserved for writes in progress"):
        disk.open_write(".ccat-partial/x").__enter__()


def test_missing_root_is_a_location_condition_and_is_never_recreated(tmp_path: Path):
    disk = LocalDiskStorage(NAME, tmp_path / "unmounted")
    for call in (
        lambda: disk.write_stream("pkg/a.tar", io.BytesIO(b"abc")),
        lambda: disk.open_read("pkg/a.tar").__enter__(),
        lambda: disk.stat("pkg/a.tar"),
        lambda: disk.delete("pkg/a.tar"),
        lambda: list(disk.list("pkg/")),
        lambda: disk.checksum("pkg/a.tar"),
        lambda: disk.disk_usage(),
    ):
        with pytest.raises(LocationUnavailableError) as info:
            call()
        assert info.value.location == NAME
        assert "unmounted" in str(info.value)
    assert not (tmp_path / "unmounted").exists()


def test_root_replaced_by_a_file_is_a_location_condition(tmp_path: Path):
    (tmp_path / "root").write_text("not a directory")
    disk = LocalDiskStorage(NAME, tmp_path / "root")
    with pytest.raises(LocationUnavailableError, match="not a directory"):
        disk.write_stream("pkg/a.tar", io.BytesIO(b"abc"))
    with pytest.raises(LocationUnavailableError, match="not a directory"):
        disk.open_read("pkg/a.tar").__enter__()
    with pytest.raises(LocationUnavailableError, match="not a directory"):
        disk.stat("pkg/a.tar")


def test_reading_from_an_empty_root_is_a_gone_mount_not_a_missing_source(disk: LocalDiskStorage):
    with pytest.raises(LocationUnavailableError, match="empty"):
        disk.open_read("pkg/a.tar").__enter__()
    with pytest.raises(LocationUnavailableError, match="empty"):
        disk.checksum("pkg/a.tar")
    assert disk.stat("pkg/a.tar").exists is False  # a fresh location is empty too
