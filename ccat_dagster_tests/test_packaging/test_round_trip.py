"""Writing packages and unpacking them again: contents, manifest, checksums, idempotence."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from ccat_dagster.packaging import (
    DATA_TRANSFER_PACKAGE,
    MANIFEST_NAME,
    RAW_DATA_PACKAGE,
    ExpectedMember,
    InvalidPackageMemberError,
    PackageMember,
    PackageSourceChangedError,
    PackageVerificationError,
    read_manifest,
    unpack_package,
    verify_package,
    write_package,
)
from ccat_dagster.packaging.writer import _header
from ccat_dagster.storage.errors import PermanentStorageError, TransientStorageError
from ccat_dagster_tests.test_packaging.helpers import (
    SOURCE_FILES,
    expected_for,
    make_source,
    members_for,
    opener,
    tree,
)
from ccat_ops_db.checksum import checksum_chunks, checksum_file


def write_rdp(src: Path, tar_path: Path, name: str = "rdp_obs_0001"):
    members = members_for(src)
    with open(tar_path, "wb") as out:
        result = write_package(out, members, kind=RAW_DATA_PACKAGE, name=name)
    return members, result


def test_raw_data_package_round_trip_restores_every_file(tmp_path):
    src = make_source(tmp_path / "src")
    tar_path = tmp_path / "rdp.tar"
    members, _ = write_rdp(src, tar_path)

    with open(tar_path, "rb") as stream:
        entries = unpack_package(
            stream,
            tmp_path / "dest",
            expected=expected_for(members),
            kind=RAW_DATA_PACKAGE,
            name="rdp_obs_0001",
        )

    assert tree(tmp_path / "dest") == tree(src)
    assert {e.path for e in entries} == set(SOURCE_FILES)


def test_returned_checksum_and_size_are_those_of_the_written_tar(tmp_path):
    src = make_source(tmp_path / "src")
    tar_path = tmp_path / "rdp.tar"
    _, result = write_rdp(src, tar_path)
    assert (result.checksum, result.size) == checksum_file(tar_path)
    assert result.algorithm == "sha256"
    assert result.size % tarfile.RECORDSIZE == 0


def test_manifest_is_first_member_and_lists_filed_sizes_and_checksums(tmp_path):
    src = make_source(tmp_path / "src")
    tar_path = tmp_path / "rdp.tar"
    members, result = write_rdp(src, tar_path)

    with tarfile.open(tar_path) as tf:  # a plain tar reader sees an ordinary tar
        names = tf.getnames()
        doc = json.loads(tf.extractfile(MANIFEST_NAME).read())
    assert names[0] == MANIFEST_NAME
    assert sorted(names[1:]) == sorted(SOURCE_FILES)
    assert doc["format_version"] == 1
    assert (doc["kind"], doc["name"], doc["algorithm"]) == (
        RAW_DATA_PACKAGE,
        "rdp_obs_0001",
        "sha256",
    )
    listed = {m["path"]: (m["size"], m["algorithm"], m["checksum"]) for m in doc["members"]}
    assert listed == {m.arcname: (m.size, "sha256", m.checksum) for m in members}
    with open(tar_path, "rb") as stream:
        manifest = read_manifest(stream)
    assert list(manifest.entries) == result.entries


def test_same_sources_give_byte_identical_packages(tmp_path):
    src = make_source(tmp_path / "src")
    _, first = write_rdp(src, tmp_path / "a.tar")
    _, second = write_rdp(src, tmp_path / "b.tar")
    assert first.checksum == second.checksum


def test_data_transfer_package_of_raw_data_packages_unpacks_nested(tmp_path):
    rdp_members = []
    sources = {}
    for i in range(3):
        files = {
            f"obs_{i}/module_{j}/data_{j}.dat": bytes([i, j]) * (1000 * (j + 1)) for j in range(3)
        }
        src = make_source(tmp_path / f"src{i}", files)
        sources[f"rdp_{i}"] = src
        tar_path = tmp_path / "buffer" / f"rdp_{i}.tar"
        tar_path.parent.mkdir(exist_ok=True)
        _, result = write_rdp(src, tar_path, name=f"rdp_{i}")
        rdp_members.append(
            PackageMember(f"rdp_{i}.tar", result.size, result.checksum, opener(tar_path))
        )
    dtp_path = tmp_path / "dtp.tar"
    with open(dtp_path, "wb") as out:
        dtp = write_package(out, rdp_members, kind=DATA_TRANSFER_PACKAGE, name="dtp_0001")
    assert (dtp.checksum, dtp.size) == checksum_file(dtp_path)

    landed = tmp_path / "cologne_buffer"
    with open(dtp_path, "rb") as stream:
        unpack_package(
            stream,
            landed,
            expected=expected_for(rdp_members),
            kind=DATA_TRANSFER_PACKAGE,
            name="dtp_0001",
        )
    assert sorted(p.name for p in landed.iterdir()) == ["rdp_0.tar", "rdp_1.tar", "rdp_2.tar"]
    for name, src in sources.items():
        with open(landed / f"{name}.tar", "rb") as stream:
            unpack_package(
                stream,
                tmp_path / "unpacked" / name,
                expected=expected_for(members_for(src)),
                kind=RAW_DATA_PACKAGE,
                name=name,
            )
        assert tree(tmp_path / "unpacked" / name) == tree(src)


def test_re_unpack_of_identical_content_is_idempotent(tmp_path):
    src = make_source(tmp_path / "src")
    tar_path = tmp_path / "rdp.tar"
    write_rdp(src, tar_path)
    dest = tmp_path / "dest"
    for _ in range(2):
        with open(tar_path, "rb") as stream:
            unpack_package(stream, dest)
    # Half-present (some files deleted) also completes without touching the others.
    (dest / "README").unlink()
    with open(tar_path, "rb") as stream:
        unpack_package(stream, dest)
    assert tree(dest) == tree(src)


def test_existing_different_file_at_destination_is_never_overwritten(tmp_path):
    src = make_source(tmp_path / "src")
    tar_path = tmp_path / "rdp.tar"
    write_rdp(src, tar_path)
    dest = tmp_path / "dest"
    (dest / "obs_0001/primecam").mkdir(parents=True)
    (dest / "obs_0001/primecam/scan_001.dat").write_bytes(b"y" * 5000)  # same size, other bytes
    before = tree(dest)

    with open(tar_path, "rb") as stream, pytest.raises(PackageVerificationError) as err:
        unpack_package(stream, dest)
    assert "scan_001.dat" in str(err.value)
    assert "rdp_obs_0001" in str(err.value)
    assert "nothing was overwritten" in str(err.value)
    assert tree(dest) == before


def test_verify_package_checks_without_writing(tmp_path):
    src = make_source(tmp_path / "src")
    tar_path = tmp_path / "rdp.tar"
    members, _ = write_rdp(src, tar_path)
    with open(tar_path, "rb") as stream:
        entries = verify_package(stream, expected=expected_for(members), name="rdp_obs_0001")
    assert {e.path for e in entries} == set(SOURCE_FILES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rdp.tar", "src"]


def test_package_streams_from_a_non_seekable_stream(tmp_path):
    src = make_source(tmp_path / "src")
    tar_path = tmp_path / "rdp.tar"
    write_rdp(src, tar_path)

    class PipeLike(io.RawIOBase):
        """Readable only, like an SSH channel or an S3 body."""

        def __init__(self, data: bytes):
            self._data = io.BytesIO(data)

        def readable(self):
            return True

        def readinto(self, b):
            chunk = self._data.read(min(len(b), 1000))  # short reads, as networks do
            b[: len(chunk)] = chunk
            return len(chunk)

    unpack_package(PipeLike(tar_path.read_bytes()), tmp_path / "dest")
    assert tree(tmp_path / "dest") == tree(src)


def test_member_filed_with_another_algorithm_is_verified_with_it(tmp_path):
    data = b"filed with md5"
    path = tmp_path / "f.dat"
    path.write_bytes(data)
    md5, size = checksum_chunks([data], "md5")
    member = PackageMember("f.dat", size, md5, opener(path), algorithm="md5")
    out = io.BytesIO()
    result = write_package(out, [member], kind=RAW_DATA_PACKAGE, name="md5pkg")
    assert result.entries[0].algorithm == "md5"
    unpack_package(
        io.BytesIO(out.getvalue()),
        tmp_path / "dest",
        expected={"f.dat": ExpectedMember(size, md5, "md5")},
    )
    assert (tmp_path / "dest/f.dat").read_bytes() == data


def test_headers_are_pax_so_members_over_8_gib_are_representable():
    # Writing 9 GiB is too slow for a unit test; the header alone proves the format.
    size = 9 * 1024**3
    stream = io.BytesIO(_header("big.dat", size, 0) + bytes(1024))
    with tarfile.open(fileobj=stream, mode="r|") as tf:
        member = tf.next()
    assert (member.name, member.size) == ("big.dat", size)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"Y" + SOURCE_FILES["README"][1:], "sha256"),  # same size, modified
        (b"short", "size"),  # truncated
        (SOURCE_FILES["README"] + b"more", "larger"),  # appended to
    ],
)
def test_writer_refuses_a_source_file_changed_since_filing(tmp_path, content, why):
    src = make_source(tmp_path / "src")
    members = members_for(src)  # filed values
    (src / "README").write_bytes(content)
    with pytest.raises(PackageSourceChangedError) as err:
        write_package(io.BytesIO(), members, kind=RAW_DATA_PACKAGE, name="rdp_obs_0001")
    assert "README" in str(err.value)
    assert "rdp_obs_0001" in str(err.value)
    assert why in str(err.value)


@pytest.mark.parametrize(
    "arcname", ["/abs/file", "../up", "a/../../b", "a//b", "./a", MANIFEST_NAME, ""]
)
def test_writer_refuses_unsafe_member_paths(tmp_path, arcname):
    path = tmp_path / "f"
    path.write_bytes(b"x")
    checksum, size = checksum_file(path)
    with pytest.raises(InvalidPackageMemberError, match="member path") as err:
        write_package(
            io.BytesIO(),
            [PackageMember(arcname, size, checksum, opener(path))],
            kind=RAW_DATA_PACKAGE,
            name="p",
        )
    assert isinstance(err.value, PermanentStorageError)


def test_writer_refuses_duplicate_member_paths(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x")
    checksum, size = checksum_file(path)
    member = PackageMember("a/f", size, checksum, opener(path))
    with pytest.raises(InvalidPackageMemberError, match="twice"):
        write_package(io.BytesIO(), [member, member], kind=RAW_DATA_PACKAGE, name="p")


def test_write_error_of_the_output_stream_reaches_the_caller(tmp_path):
    src = make_source(tmp_path / "src")

    class FullDisk(io.RawIOBase):
        def writable(self):
            return True

        def write(self, data):
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_package(FullDisk(), members_for(src), kind=RAW_DATA_PACKAGE, name="rdp_obs_0001")


def test_stream_error_while_unpacking_leaves_nothing_behind(tmp_path):
    src = make_source(tmp_path / "src")
    tar_path = tmp_path / "rdp.tar"
    write_rdp(src, tar_path)
    data = tar_path.read_bytes()

    class DroppedConnection(io.RawIOBase):
        def __init__(self):
            self._data = io.BytesIO(data)

        def readable(self):
            return True

        def readinto(self, b):
            if self._data.tell() > len(data) // 2:
                raise TransientStorageError("connection reset", location="cologne/buffer")
            chunk = self._data.read(min(len(b), 4096))
            b[: len(chunk)] = chunk
            return len(chunk)

    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(TransientStorageError):
        unpack_package(DroppedConnection(), dest)
    assert list(dest.iterdir()) == []


def test_writer_refuses_a_member_without_filed_checksum(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x")
    member = PackageMember("f", 1, None, opener(path))  # e.g. a row never filed
    with pytest.raises(InvalidPackageMemberError, match="invalid sha256 checksum None"):
        write_package(io.BytesIO(), [member], kind=RAW_DATA_PACKAGE, name="p")


def test_unpack_builds_its_temporary_directory_in_tmp_parent(tmp_path):
    """The location's directory of writes in progress holds the unpack while it runs (so a
    killed unpack is found there without walking the destination), and nothing afterwards."""
    src = make_source(tmp_path / "src")
    tar_path = tmp_path / "rdp.tar"
    members, _ = write_rdp(src, tar_path)
    partial = tmp_path / "root" / ".ccat-partial"
    seen: list[list[str]] = []

    class Watching(io.RawIOBase):
        def __init__(self):
            self._data = io.BytesIO(tar_path.read_bytes())

        def readable(self):
            return True

        def readinto(self, b):
            seen.append(sorted(p.name for p in partial.iterdir()))
            chunk = self._data.read(min(len(b), 4096))
            b[: len(chunk)] = chunk
            return len(chunk)

    dest = tmp_path / "root" / "raw_data_packages"
    unpack_package(Watching(), dest, expected=expected_for(members), tmp_parent=partial)
    assert tree(dest) == tree(src)
    assert any(names and names[0].startswith(".ccat-unpack-") for names in seen)
    assert list(partial.iterdir()) == []
    assert not any(p.name.startswith(".") for p in dest.iterdir())
