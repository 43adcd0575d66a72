"""Read, verify and safely unpack package tars as a stream (works over SSH and S3 streams).

Every member is checked against the manifest (its first member) and, when given, against what
the ops DB expects, by two layers: tarfile's ``data_filter`` and our own explicit rules (regular
files only, manifest paths only, each once, exact sizes and checksums). Unpacking extracts into a
temporary directory inside the destination and renames members into place only after all of
them verified; on any failure the temporary directory is removed and nothing is left behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

from ccat_dagster.packaging.errors import PackageVerificationError
from ccat_dagster.packaging.manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    ExpectedMember,
    Manifest,
    ManifestEntry,
    check_against_expected,
    check_member_path,
    parse_manifest,
)
from ccat_ops_db.checksum import CHUNK_SIZE, checksum_file, new_hasher

# data_filter needs a destination to resolve member paths against; when only verifying, a
# directory that never exists serves (nothing is written there).
_VERIFY_ONLY_DEST = "/nonexistent/ccat-package-verify"


def read_manifest(stream: BinaryIO, *, name: str | None = None) -> Manifest:
    """The manifest of the package tar in ``stream`` (reads only its first member)."""
    with _open_tar(stream, name) as tf:
        return _read_manifest_member(tf, name)


def verify_package(
    stream: BinaryIO,
    *,
    expected: Mapping[str, ExpectedMember] | None = None,
    kind: str | None = None,
    name: str | None = None,
) -> list[ManifestEntry]:
    """Stream the whole package and verify it as ``unpack_package`` would, writing nothing."""
    manifest, _ = _read_package(stream, None, expected=expected, kind=kind, name=name)
    return list(manifest.entries)


def unpack_package(
    stream: BinaryIO,
    dest_dir: Path,
    *,
    expected: Mapping[str, ExpectedMember] | None = None,
    kind: str | None = None,
    name: str | None = None,
    tmp_parent: Path | None = None,
) -> list[ManifestEntry]:
    """Verify and extract the package tar in ``stream`` into ``dest_dir``.

    ``expected`` (from the ops DB: member path -> size, checksum, algorithm) must match the
    manifest exactly; ``kind`` and ``name``, when given, must match too. Members land in
    ``dest_dir`` only when every one of them verified. A file already at a member's destination
    is accepted if its content is identical (re-unpacking is idempotent, also when a twin run
    unpacking the same package puts it there meanwhile) and is an error otherwise: nothing
    different is ever overwritten. The temporary directory is made in ``tmp_parent`` (the
    location's directory of writes in progress) when that is on the same filesystem as
    ``dest_dir`` (members are renamed into place), else in ``dest_dir``.
    """
    dest_dir = Path(dest_dir)
    created_dest = not dest_dir.exists()
    dest_dir.mkdir(parents=True, exist_ok=True)
    parent = dest_dir
    if tmp_parent is not None:
        tmp_parent.mkdir(parents=True, exist_ok=True)
        if os.stat(tmp_parent).st_dev == os.stat(dest_dir).st_dev:
            parent = tmp_parent
    tmp = Path(tempfile.mkdtemp(prefix=".ccat-unpack-", dir=parent))
    try:
        manifest, identical = _read_package(
            stream, tmp, expected=expected, kind=kind, name=name, dest_dir=dest_dir
        )
        _move_into_place(manifest, identical, tmp, dest_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created_dest:
            with contextlib.suppress(OSError):
                dest_dir.rmdir()  # only if still empty
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    return list(manifest.entries)


@contextlib.contextmanager
def _open_tar(stream: BinaryIO, name: str | None):
    try:
        # 'r|': strictly sequential reading, so any readable stream works; a large buffer
        # keeps reads from SSH/S3 streams efficient.
        with tarfile.open(fileobj=stream, mode="r|", bufsize=CHUNK_SIZE) as tf:
            yield tf
    except tarfile.TarError as exc:
        raise _corrupt(name, None, exc) from None


def _corrupt(
    package: str | None, member: str | None, exc: BaseException
) -> PackageVerificationError:
    return PackageVerificationError(
        f"tar is truncated or corrupt ({exc}); transfer the package again from a verified copy",
        package=package,
        member=member,
    )


def _read_manifest_member(tf: tarfile.TarFile, name: str | None) -> Manifest:
    first = tf.next()
    if first is None or first.name != MANIFEST_NAME:
        raise PackageVerificationError(
            f"first tar member is {first.name if first else 'missing'!r}, not {MANIFEST_NAME}; "
            "this is not a ccat-dagster package or it is corrupt: re-create it from its source "
            "copy",
            package=name,
        )
    if not first.isreg() or first.size > MAX_MANIFEST_BYTES:
        raise PackageVerificationError(
            f"{MANIFEST_NAME} is not a regular file of at most {MAX_MANIFEST_BYTES} bytes; "
            "re-create the package from its source copy",
            package=name,
        )
    fh = tf.extractfile(first)
    assert fh is not None  # a regular file always has data
    data = fh.read()
    if len(data) != first.size:
        raise _corrupt(name, MANIFEST_NAME, EOFError("manifest cut short"))
    return parse_manifest(data, package=name)


def _read_package(
    stream: BinaryIO,
    extract_to: Path | None,
    *,
    expected: Mapping[str, ExpectedMember] | None,
    kind: str | None,
    name: str | None,
    dest_dir: Path | None = None,
) -> tuple[Manifest, set[str]]:
    """Stream every member, verify it, and write it under ``extract_to`` (if given). Also
    returns the member paths already present with identical content under ``dest_dir``."""
    with _open_tar(stream, name) as tf:
        manifest = _read_manifest_member(tf, name)
        if name is not None and manifest.name != name:
            raise PackageVerificationError(
                f"manifest names package {manifest.name!r}; this is the wrong package file",
                package=name,
            )
        if kind is not None and manifest.kind != kind:
            raise PackageVerificationError(
                f"is a {manifest.kind}, expected a {kind}", package=manifest.name
            )
        if expected is not None:
            check_against_expected(manifest, expected, package=manifest.name)
        # Fail before streaming gigabytes if the destination already disagrees.
        identical = _check_destination(manifest, dest_dir) if dest_dir is not None else set()
        by_path = {e.path: e for e in manifest.entries}
        seen: set[str] = set()
        filter_dest = str(extract_to) if extract_to is not None else _VERIFY_ONLY_DEST
        while True:
            try:
                member = tf.next()
            except tarfile.TarError as exc:
                raise _corrupt(manifest.name, None, exc) from None
            if member is None:
                break
            entry = _check_member(member, by_path, seen, filter_dest, manifest.name)
            seen.add(entry.path)
            # An identical file already in place is still verified, but not written again.
            target_dir = None if entry.path in identical else extract_to
            _copy_member(tf, member, entry, target_dir, manifest.name)
        missing = sorted(set(by_path) - seen)
        if missing:
            raise PackageVerificationError(
                f"{len(missing)} manifest member(s) missing from the tar, e.g. {missing[:5]}; "
                "the tar is truncated or corrupt: transfer it again from a verified copy",
                package=manifest.name,
            )
    return manifest, identical


def _check_member(
    member: tarfile.TarInfo,
    by_path: Mapping[str, ManifestEntry],
    seen: set[str],
    filter_dest: str,
    package: str,
) -> ManifestEntry:
    def reject(why: str) -> PackageVerificationError:
        return PackageVerificationError(
            f"{why}; the package is unsafe or corrupt and was rejected: re-create it from a "
            "verified source copy",
            package=package,
            member=member.name,
        )

    # Layer 1: tarfile's own extraction filter (absolute paths, escaping the destination,
    # links, device files and fifos).
    try:
        tarfile.data_filter(member, filter_dest)
    except tarfile.FilterError as exc:
        raise reject(f"refused by tarfile's data filter: {exc}") from None
    # Layer 2: our rules. Only plain regular files, exactly as listed in the manifest.
    if not member.isreg() or member.sparse is not None:
        raise reject("not a regular file (links, directories and special files are refused)")
    check_member_path(member.name, package=package)
    if member.name in seen:
        raise reject("appears twice in the tar")
    entry = by_path.get(member.name)
    if entry is None:
        raise reject("not listed in the manifest")
    if member.size != entry.size:
        raise reject(f"tar says {member.size} bytes, manifest says {entry.size}")
    return entry


def _copy_member(
    tf: tarfile.TarFile,
    member: tarfile.TarInfo,
    entry: ManifestEntry,
    extract_to: Path | None,
    package: str,
) -> None:
    src = tf.extractfile(member)
    assert src is not None  # regular file
    hasher = new_hasher(entry.algorithm)
    size = 0
    out = None
    if extract_to is not None:
        target = extract_to / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        out = open(target, "xb")  # noqa: SIM115 - closed below, also on error
    try:
        while True:
            try:
                chunk = src.read(CHUNK_SIZE)
            except tarfile.TarError as exc:
                raise _corrupt(package, entry.path, exc) from None
            if not chunk:
                break
            hasher.update(chunk)
            size += len(chunk)
            if out is not None:
                out.write(chunk)
        if out is not None:
            out.flush()
            os.fsync(out.fileno())  # verified bytes must survive a crash once reported
    finally:
        if out is not None:
            out.close()
    actual = hasher.hexdigest()
    if size != entry.size or actual != entry.checksum:
        raise PackageVerificationError(
            f"content does not match the manifest: {size} bytes, {entry.algorithm} {actual}; "
            f"expected {entry.size} bytes, {entry.checksum}; the package is corrupt: transfer "
            "it again from a verified copy",
            package=package,
            member=entry.path,
        )


def _check_destination(manifest: Manifest, dest_dir: Path) -> set[str]:
    """Paths whose identical file already sits at the destination; raise if any member's
    destination holds something else (a different file, a directory, a symlink)."""
    identical: set[str] = set()
    for entry in manifest.entries:

        def conflict(why: str, entry: ManifestEntry = entry) -> PackageVerificationError:
            return PackageVerificationError(
                f"destination {dest_dir / entry.path} {why}; nothing was overwritten: move the "
                "existing file away if it is stale, then unpack again",
                package=manifest.name,
                member=entry.path,
            )

        parent = dest_dir
        for part in entry.path.split("/")[:-1]:
            parent = parent / part
            try:
                mode = os.lstat(parent).st_mode
            except FileNotFoundError:
                break
            if not stat.S_ISDIR(mode):  # lstat: a symlink is refused too
                raise conflict(f"has {parent} which is not a plain directory")
        target = dest_dir / entry.path
        try:
            st = os.lstat(target)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if not stat.S_ISREG(st.st_mode):
            raise conflict("exists and is not a regular file")
        if st.st_size != entry.size or checksum_file(target, entry.algorithm)[0] != entry.checksum:
            raise conflict("already holds a different file")
        identical.add(entry.path)
    return identical


def _move_into_place(manifest: Manifest, identical: set[str], tmp: Path, dest_dir: Path) -> None:
    """Rename every verified member from ``tmp`` into ``dest_dir``; all or nothing. Members in
    ``identical`` are already there; any other destination must still be free."""
    created_dirs: list[Path] = []
    moved: list[Path] = []
    try:
        for entry in manifest.entries:
            if entry.path in identical:
                continue
            target = dest_dir / entry.path
            _make_parents(dest_dir, target.parent, created_dirs)
            if os.path.lexists(target):
                if _holds(target, entry):
                    # A twin unpacking the same package (two runs of one stage) was faster:
                    # the same verified bytes are there, which is what this unpack wanted.
                    continue
                raise PackageVerificationError(
                    f"destination {target} appeared while unpacking; nothing was overwritten: "
                    "check what else writes there, then unpack again",
                    package=manifest.name,
                    member=entry.path,
                )
            os.replace(tmp / entry.path, target)
            moved.append(target)
        # Make the new names durable: the caller records the copies as present next.
        for directory in {p.parent for p in moved} | {d.parent for d in created_dirs}:
            _fsync_dir(directory)
    except BaseException:
        for target in moved:
            with contextlib.suppress(OSError):
                target.unlink()
        for directory in reversed(created_dirs):
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise


def _holds(target: Path, entry: ManifestEntry) -> bool:
    """Is ``target`` a regular file with exactly the member's size and checksum?"""
    try:
        st = os.lstat(target)
    except OSError:
        return False
    return (
        stat.S_ISREG(st.st_mode)
        and st.st_size == entry.size
        and checksum_file(target, entry.algorithm)[0] == entry.checksum
    )


def _make_parents(dest_dir: Path, parent: Path, created: list[Path]) -> None:
    missing = []
    while parent != dest_dir and not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:
            if not directory.is_dir():
                raise
            continue  # a twin unpacking into the same place made it first: not ours to remove
        created.append(directory)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
