"""Unsafe, corrupt or mismatching packages are refused and leave nothing behind.

Each malicious tar is crafted with tarfile directly. A valid member comes first wherever
possible, so the tests also prove that verified members are not left in place when a later
member fails.
"""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from ccat_dagster.packaging import (
    DATA_TRANSFER_PACKAGE,
    RAW_DATA_PACKAGE,
    ExpectedMember,
    PackageVerificationError,
    unpack_package,
    verify_package,
    write_package,
)
from ccat_dagster.storage.errors import PermanentStorageError
from ccat_dagster_tests.test_packaging.helpers import (
    craft_tar,
    entry,
    expected_for,
    make_source,
    manifest_bytes,
    members_for,
    raw_manifest,
    reg,
    special,
    tree,
)

GOOD = b"good data"
EVIL = b"evil data"


def assert_refused(tmp_path, data: bytes, match: str, **kwargs) -> None:
    """unpack_package and verify_package both raise; dest holds exactly what it held before."""
    dest = tmp_path / "dest"
    dest.mkdir(exist_ok=True)
    (dest / "keep.txt").write_bytes(b"operator file")
    before = tree(dest)
    with pytest.raises(PackageVerificationError, match=match) as err:
        unpack_package(io.BytesIO(data), dest, **kwargs)
    assert isinstance(err.value, PermanentStorageError)
    assert tree(dest) == before, "unpack left something behind"
    assert not (tmp_path / "escape.txt").exists()
    with pytest.raises(PackageVerificationError, match=match):
        verify_package(io.BytesIO(data), **kwargs)


def good_then(*members, extra_entries=()):
    """A tar whose manifest lists good.txt (+ extra entries) and holds good.txt + members."""
    manifest = manifest_bytes([entry("good.txt", GOOD), *extra_entries])
    return craft_tar([reg("good.txt", GOOD), *members], manifest=manifest)


def test_absolute_member_path_is_refused(tmp_path):
    # tarfile's data filter would silently strip the '/'; our own check refuses it.
    data = good_then(reg("/abs.txt", EVIL), extra_entries=[entry("abs.txt", EVIL)])
    assert_refused(tmp_path, data, "absolute path")


def test_absolute_path_in_manifest_is_refused(tmp_path):
    doc = {
        "format_version": 1,
        "kind": "raw_data_package",
        "name": "pkg",
        "algorithm": "sha256",
        "members": [{"path": "/etc/x", "size": 1, "algorithm": "sha256", "checksum": "0" * 64}],
    }
    assert_refused(tmp_path, craft_tar([], manifest=raw_manifest(doc)), "absolute path")


@pytest.mark.parametrize("name", ["../escape.txt", "sub/../../escape.txt"])
def test_member_escaping_the_destination_is_refused(tmp_path, name):
    data = good_then(reg(name, EVIL), extra_entries=[entry("escape.txt", EVIL)])
    assert_refused(tmp_path, data, "outside the destination|'\\.\\.' component")


@pytest.mark.parametrize(
    ("member", "match"),
    [
        (special("link", tarfile.SYMTYPE, "/etc/passwd"), "data filter"),
        (special("link", tarfile.SYMTYPE, "good.txt"), "not a regular file"),  # filter allows it
        (special("hard", tarfile.LNKTYPE, "good.txt"), "not a regular file"),
        (special("dev", tarfile.CHRTYPE), "data filter"),
        (special("blk", tarfile.BLKTYPE), "data filter"),
        (special("fifo", tarfile.FIFOTYPE), "data filter"),
        (special("sub", tarfile.DIRTYPE), "not a regular file"),
    ],
)
def test_links_devices_fifos_and_directories_are_refused(tmp_path, member, match):
    assert_refused(tmp_path, good_then(member), match)


def test_duplicate_member_is_refused(tmp_path):
    assert_refused(tmp_path, good_then(reg("good.txt", GOOD)), "appears twice")


def test_member_not_in_manifest_is_refused(tmp_path):
    assert_refused(tmp_path, good_then(reg("stowaway.txt", EVIL)), "not listed in the manifest")


def test_manifest_member_missing_from_tar_is_refused(tmp_path):
    data = good_then(extra_entries=[entry("lost.txt", EVIL)])
    assert_refused(tmp_path, data, "missing from the tar")


def test_member_size_differing_from_manifest_is_refused(tmp_path):
    data = good_then(reg("b.txt", EVIL + b"!"), extra_entries=[entry("b.txt", EVIL)])
    assert_refused(tmp_path, data, "tar says 10 bytes, manifest says 9")


def test_member_checksum_differing_from_manifest_is_refused(tmp_path):
    data = good_then(reg("b.txt", b"EVIL DATA"), extra_entries=[entry("b.txt", EVIL)])
    assert_refused(tmp_path, data, "content does not match the manifest")


def test_missing_manifest_is_refused(tmp_path):
    assert_refused(tmp_path, craft_tar([reg("good.txt", GOOD)], manifest=None), "first tar member")


@pytest.mark.parametrize(
    ("manifest", "match"),
    [
        (b"{not json", "not UTF-8 JSON"),
        (raw_manifest([]), "not a JSON object"),
        (raw_manifest({"format_version": 99}), "format_version"),
        (
            raw_manifest(
                {
                    "format_version": 1,
                    "kind": "pirate",
                    "name": "p",
                    "algorithm": "sha256",
                    "members": [],
                }
            ),
            "unknown kind",
        ),
        (
            raw_manifest(
                {
                    "format_version": 1,
                    "kind": "raw_data_package",
                    "name": "p",
                    "algorithm": "sha256",
                    "members": [
                        {"path": "good.txt", "size": 9, "algorithm": "sha256", "checksum": "nothex"}
                    ],
                }
            ),
            "invalid sha256 checksum",
        ),
    ],
)
def test_invalid_manifest_is_refused(tmp_path, manifest, match):
    assert_refused(tmp_path, craft_tar([reg("good.txt", GOOD)], manifest=manifest), match)


def test_manifest_listing_a_member_twice_is_refused(tmp_path):
    manifest = manifest_bytes([entry("good.txt", GOOD), entry("good.txt", GOOD)])
    assert_refused(tmp_path, craft_tar([reg("good.txt", GOOD)], manifest=manifest), "twice")


@pytest.mark.parametrize("data", [b"", b"this is not a tar file at all" * 100])
def test_not_a_tar_is_refused(tmp_path, data):
    assert_refused(tmp_path, data, "truncated or corrupt|first tar member")


@pytest.fixture
def package(tmp_path):
    """A valid RawDataPackage as bytes, and what the ops DB expects of it."""
    src = make_source(tmp_path / "src")
    members = members_for(src)
    out = io.BytesIO()
    write_package(out, members, kind=RAW_DATA_PACKAGE, name="rdp_obs_0001")
    return out.getvalue(), expected_for(members)


@pytest.mark.parametrize("keep", [0.999, 0.5, 0.1, 700, 1536])
def test_truncated_tar_is_refused(tmp_path, package, keep):
    data, _ = package
    cut = int(len(data) * keep) if keep < 1 else keep
    # Cutting only the trailing zero blocks leaves every member intact; cut into content.
    cut = min(cut, len(data) - 10 * 512 - 1024 - 1)
    assert_refused(tmp_path, data[:cut], "truncated or corrupt|missing from the tar")


def test_corrupted_data_byte_is_detected(tmp_path, package):
    data, expected = package
    pos = data.index(b"top level file")  # README's content
    corrupt = data[:pos] + b"T" + data[pos + 1 :]
    assert_refused(tmp_path, corrupt, "content does not match the manifest", expected=expected)


def test_corrupted_header_byte_is_detected(tmp_path, package):
    data, _ = package
    pos = data.index(b"obs_0001/primecam/empty.dat\x00")  # its header, not the manifest
    corrupt = data[:pos] + b"X" + data[pos + 1 :]
    assert_refused(tmp_path, corrupt, "missing from the tar|truncated or corrupt")


def test_package_differing_from_ops_db_is_refused(tmp_path, package):
    data, expected = package
    wrong_checksum = dict(expected)
    wrong_checksum["README"] = ExpectedMember(expected["README"].size, "0" * 64)
    assert_refused(tmp_path, data, "ops DB says", expected=wrong_checksum)
    wrong_size = dict(expected)
    wrong_size["README"] = ExpectedMember(1, expected["README"].checksum)
    assert_refused(tmp_path, data, "ops DB says", expected=wrong_size)
    fewer = {k: v for k, v in expected.items() if k != "README"}
    assert_refused(
        tmp_path, data, "in the package but not in the ops DB: \\['README'\\]", expected=fewer
    )
    more = {**expected, "lost.dat": ExpectedMember(1, "0" * 64)}
    assert_refused(
        tmp_path, data, "in the ops DB but not in the package: \\['lost.dat'\\]", expected=more
    )


def test_wrong_package_name_or_kind_is_refused(tmp_path, package):
    data, _ = package
    assert_refused(tmp_path, data, "wrong package file", name="rdp_other")
    assert_refused(tmp_path, data, "expected a data_transfer_package", kind=DATA_TRANSFER_PACKAGE)


def test_symlinked_directory_at_destination_is_not_followed(tmp_path, package):
    data, _ = package
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(elsewhere, dest / "obs_0001")
    with pytest.raises(PackageVerificationError, match="not a plain directory"):
        unpack_package(io.BytesIO(data), dest)
    assert list(elsewhere.iterdir()) == []
    assert sorted(os.listdir(dest)) == ["obs_0001"]


def test_error_names_package_member_and_what_to_do(tmp_path):
    data = good_then(reg("b.txt", b"EVIL DATA"), extra_entries=[entry("b.txt", EVIL)])
    with pytest.raises(PackageVerificationError) as err:
        unpack_package(io.BytesIO(data), tmp_path / "new_dest")
    message = str(err.value)
    assert "package 'pkg'" in message
    assert "member 'b.txt'" in message
    assert "transfer it again from a verified copy" in message
    assert not (tmp_path / "new_dest").exists()  # a destination we created is removed again
