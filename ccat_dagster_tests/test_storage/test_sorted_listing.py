"""Every backend lists keys in ascending code point order and resumes after a key (the
consistency audit's slices), and moves an object without ever overwriting one: local disk, SFTP
(a real sshd) and S3 (a moto server)."""

from __future__ import annotations

import io
from itertools import islice
from pathlib import Path

import pytest

from ccat_dagster.storage.base import Storage
from ccat_dagster.storage.errors import PermanentStorageError
from ccat_dagster.storage.local import LocalDiskStorage
from ccat_dagster.storage.s3 import S3Storage

#: a directory "a" sorts between "a.txt" and "a0": a walk must not list a directory's keys
#: before the files of its parent that sort after it
KEYS = ["a.txt", "a/x", "a/y/z", "a0", "b-c/d", "b/c", "ü", ".ccat-quarantine/2026-12-01/q"]


@pytest.fixture(params=["local", "ssh", "s3"])
def storage(request, tmp_path: Path):
    if request.param == "local":
        (tmp_path / "root").mkdir()
        yield LocalDiskStorage("test/disk", tmp_path / "root")
    elif request.param == "ssh":
        root = tmp_path / "remote"
        root.mkdir()
        ssh = request.getfixturevalue("sshd_server").storage(root, name="test/ssh")
        yield ssh
        ssh.close()
    else:
        endpoint = request.getfixturevalue("s3_endpoint")
        bucket = request.getfixturevalue("s3_bucket")
        yield S3Storage("test/s3", bucket, "raw", endpoint_url=endpoint, region="us-east-1")


def _fill(storage: Storage) -> None:
    for key in KEYS:
        storage.write_stream(key, io.BytesIO(key.encode()))


def test_listing_is_sorted_and_resumes_after_a_key(storage: Storage):
    _fill(storage)
    ordered = sorted(KEYS)
    assert [k for k, _ in storage.list()] == ordered
    assert dict(storage.list()) == {k: len(k.encode()) for k in KEYS}
    for i, after in enumerate(ordered):
        assert [k for k, _ in storage.list(start_after=after)] == ordered[i + 1 :], after
    # a start key that is not an object, and one inside a directory
    assert [k for k, _ in storage.list(start_after="a/")] == [
        "a/x",
        "a/y/z",
        "a0",
        "b-c/d",
        "b/c",
        "ü",
    ]
    assert [k for k, _ in storage.list("a/", start_after="a/x")] == ["a/y/z"]
    # slices of two, resumed from the last key, cover everything once
    seen, after = [], ""
    while batch := list(islice(storage.list(start_after=after), 2)):
        seen += [k for k, _ in batch]
        after = batch[-1][0]
    assert seen == ordered


def test_move_renames_and_never_overwrites(storage: Storage):
    _fill(storage)
    storage.move("a/x", ".ccat-quarantine/2026-12-02/a/x")
    assert not storage.stat("a/x").exists
    with storage.open_read(".ccat-quarantine/2026-12-02/a/x") as fh:
        assert fh.read() == b"a/x"
    with pytest.raises(PermanentStorageError, match="existing object"):
        storage.move("a.txt", "a0")
    with storage.open_read("a0") as fh:
        assert fh.read() == b"a0"
    with pytest.raises(PermanentStorageError, match="no object"):
        storage.move("a/x", "a/x2")
