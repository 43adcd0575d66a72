"""Local-disk storage: objects are files under a root directory on a filesystem mounted where the
code runs. Writes go to a temporary file in ``<root>/.ccat-partial/``, are fsynced and renamed
into place only when complete, so a reader never sees a partial file under its final name (where
the target directory is on another filesystem mounted under the root, the temporary is a hidden
``.<name>.part-<uuid>`` beside the target instead, so the rename stays atomic). OS errors are
mapped to transient or permanent storage errors naming location and key, or to
LocationUnavailableError when they belong to the location rather than to one object (root
missing or not a directory, mount gone, disk full, read-only). The root is never created by a
write: a missing root is a missing mount, not a directory to make on the disk beneath it.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat as stat_mode
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

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
from ccat_ops_db.checksum import DEFAULT_ALGORITHM, checksum_file

#: marker of an in-progress write; such files are never listed as objects
PART_MARKER = ".part-"

# Errors that a retry can cure: stale NFS handles, timeouts, interrupted or busy resources.
_TRANSIENT_ERRNOS = {
    errno.EAGAIN,
    errno.EINTR,
    errno.EBUSY,
    errno.ETIMEDOUT,
    errno.EIO,
    errno.ECONNRESET,
}
# Errors of a mount or network filesystem that is gone: the whole location does not answer.
_MOUNT_GONE_ERRNOS = {
    errno.ESTALE,
    errno.ENOTCONN,
    errno.ENODEV,
    errno.ENXIO,
    errno.EHOSTDOWN,
    errno.EHOSTUNREACH,
    errno.ENETDOWN,
    errno.ENETUNREACH,
}


def is_part_file(name: str) -> bool:
    """True for the temporary name of a write in progress (``.<base>.part-<uuid>``)."""
    return name.startswith(".") and PART_MARKER in name


def partial_dir(root: str | os.PathLike[str]) -> Path:
    """The directory of writes in progress under a disk location's root (also where unpacking
    builds its temporary directories)."""
    return Path(root) / PARTIAL_DIR


def root_problem(root: Path | None, *, empty_counts: bool = False) -> str | None:
    """Why the location root cannot hold objects (missing, not a directory, unreadable, or,
    with ``empty_counts``, empty: an unmounted mount point is an empty directory); None if fine."""
    if root is None:
        return None
    try:
        st = os.stat(root)
    except FileNotFoundError:
        return f"the location root {root} is missing (not mounted?)"
    except OSError as exc:
        return f"the location root {root} cannot be examined: {exc}"
    if not stat_mode.S_ISDIR(st.st_mode):
        return f"the location root {root} is not a directory"
    if empty_counts:
        try:
            with os.scandir(root) as entries:
                if next(entries, None) is None:
                    return f"the location root {root} is empty (mount gone?)"
        except OSError as exc:
            return f"the location root {root} cannot be listed: {exc}"
    return None


def _root_denied(root: Path | None, *, writing: bool) -> bool:
    """True when this process may not use the root itself (so no object there is usable)."""
    if root is None:
        return False
    mode = os.R_OK | os.X_OK | (os.W_OK if writing else 0)
    return not os.access(root, mode)


def map_os_error(
    exc: OSError,
    *,
    location: str,
    key: str | None,
    reading: bool,
    root: Path | None = None,
) -> StorageError:
    """The storage error an operator can act on for an OSError at ``location``/``key``.

    With ``root`` (the location root) an error that is really the location's (its root missing,
    not a directory, empty when an object is missing, not accessible) becomes a
    LocationUnavailableError; so do a full disk (LocationFullError), a read-only filesystem and
    the errors of a mount that is gone. A missing object under a healthy root stays a permanent
    "missing source" error of that object."""
    code = exc.errno
    if code == errno.ENOENT:
        if reading:
            problem = root_problem(root, empty_counts=True)
            if problem is not None:
                return LocationUnavailableError(
                    f"location unavailable: {problem}; mount it or restore the directory, work "
                    "waits and resumes by itself",
                    location=location,
                    key=key,
                )
            return PermanentStorageError(
                "missing source: the object does not exist; check the recorded path or copy it "
                "again from another copy",
                location=location,
                key=key,
            )
        problem = root_problem(root) or str(exc)
        return LocationUnavailableError(
            f"directory missing: {problem}; check that the location root exists and is mounted "
            "(work waits and resumes by itself)",
            location=location,
            key=key,
        )
    if code == errno.ENOTDIR:
        problem = root_problem(root)
        if root is None or problem is not None:
            return LocationUnavailableError(
                f"not a directory: {problem or exc}; the location root must be a directory",
                location=location,
                key=key,
            )
        return PermanentStorageError(
            f"not a directory: {exc}; a path component of the object is a file",
            location=location,
            key=key,
        )
    if code == errno.EROFS:
        return LocationUnavailableError(
            f"read-only file system: {exc}; remount the location read-write",
            location=location,
            key=key,
        )
    if code in (errno.EACCES, errno.EPERM):
        if _root_denied(root, writing=not reading):
            return LocationUnavailableError(
                f"permission denied on the location root {root}: {exc}; fix its ownership or "
                "permissions for the user running this code",
                location=location,
                key=key,
            )
        return PermanentStorageError(
            f"permission denied: {exc}; fix ownership/permissions of the location for the "
            "user running this code",
            location=location,
            key=key,
        )
    if code in (errno.ENOSPC, errno.EDQUOT):
        return LocationFullError(
            f"disk full: {exc}; free space at the location (or lower its buffer thresholds); "
            "writes there wait until it has room",
            location=location,
            key=key,
        )
    if code in _MOUNT_GONE_ERRNOS:
        return LocationUnavailableError(
            f"mount or network filesystem not answering: {exc}", location=location, key=key
        )
    if code in _TRANSIENT_ERRNOS:
        return TransientStorageError(
            f"I/O error, may succeed on retry: {exc}", location=location, key=key
        )
    return PermanentStorageError(f"filesystem error: {exc}", location=location, key=key)


class _AtomicFileWriter:
    """The writable stream handed out by ``open_write``: maps OS errors while writing to
    storage errors of *this* location, so they are not confused with errors of a source."""

    def __init__(self, fh: BinaryIO, *, location: str, key: str) -> None:
        self._fh = fh
        self._location = location
        self._key = key

    def write(self, data: bytes) -> int:
        try:
            return self._fh.write(data)
        except OSError as exc:
            raise map_os_error(exc, location=self._location, key=self._key, reading=False) from exc

    def flush(self) -> None:
        try:
            self._fh.flush()
        except OSError as exc:
            raise map_os_error(exc, location=self._location, key=self._key, reading=False) from exc

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._fh.tell()


class LocalDiskStorage(Storage):
    """Objects as files under ``root`` on a local (or locally mounted) filesystem."""

    def __init__(self, name: str, root: str | os.PathLike[str]) -> None:
        self.name = name
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalDiskStorage({self.name!r}, root={str(self.root)!r})"

    def path_of(self, key: str) -> Path:
        """Filesystem path of ``key`` (validated: stays under the root)."""
        return self.root / check_key(key, location=self.name)

    def _map(self, exc: OSError, key: str | None, *, reading: bool) -> StorageError:
        return map_os_error(exc, location=self.name, key=key, reading=reading, root=self.root)

    def _require_root(self, key: str | None) -> None:
        """Raise LocationUnavailableError when the root is missing or not a directory: a
        missing object must not be reported (or deleted, or written) under a missing mount."""
        problem = root_problem(self.root)
        if problem is not None:
            raise LocationUnavailableError(
                f"location unavailable: {problem}; mount it or restore the directory, work "
                "waits and resumes by itself",
                location=self.name,
                key=key,
            )

    def stat(self, key: str) -> ObjectStat:
        path = self.path_of(key)
        try:
            st = path.stat()
        except FileNotFoundError:
            self._require_root(key)
            return ObjectStat(exists=False)
        except OSError as exc:
            raise self._map(exc, key, reading=True) from exc
        if not path.is_file():
            raise PermanentStorageError(
                "not a regular file (a directory?); keys name files", location=self.name, key=key
            )
        return ObjectStat(
            exists=True, size=st.st_size, modified_at=datetime.fromtimestamp(st.st_mtime, UTC)
        )

    @contextmanager
    def open_read(self, key: str) -> Iterator[BinaryIO]:
        path = self.path_of(key)
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed below, after the caller's block
        except OSError as exc:
            raise self._map(exc, key, reading=True) from exc
        try:
            yield fh
        finally:
            fh.close()

    def _temporary_for(self, path: Path) -> Path:
        """Where a write to ``path`` goes first: ``.ccat-partial/`` when it is on the same
        filesystem as the target directory (the rename must not cross filesystems)."""
        partial = partial_dir(self.root)
        partial.mkdir(exist_ok=True)
        name = f"{uuid.uuid4().hex}-{path.name[:100]}"
        if os.stat(partial).st_dev == os.stat(path.parent).st_dev:
            return partial / name
        return path.with_name(f".{path.name}{PART_MARKER}{uuid.uuid4().hex}")

    @contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        path = self.path_of(key)
        self._require_root(key)  # never create the root itself: it is a mount point
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._temporary_for(path)
            fh = open(tmp, "xb")  # noqa: SIM115 - closed below on every path
        except OSError as exc:
            raise self._map(exc, key, reading=False) from exc
        try:
            yield _AtomicFileWriter(fh, location=self.name, key=key)  # type: ignore[misc]
        except BaseException:
            # The caller's block failed (its own error, not ours to re-label): drop the part file.
            fh.close()
            tmp.unlink(missing_ok=True)
            raise
        try:
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
            os.replace(tmp, path)
        except BaseException as exc:
            fh.close()
            tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise self._map(exc, key, reading=False) from exc
            raise
        _fsync_dir(path.parent)

    def delete(self, key: str) -> DeleteResult:
        path = self.path_of(key)
        try:
            path.unlink()
        except FileNotFoundError:
            self._require_root(key)
            return DeleteResult(key=key, existed=False)
        except IsADirectoryError as exc:
            raise PermanentStorageError(
                "not a regular file (a directory?); refusing to delete it",
                location=self.name,
                key=key,
            ) from exc
        except OSError as exc:
            raise self._map(exc, key, reading=False) from exc
        return DeleteResult(key=key, existed=True)

    def list(self, prefix: str = "", *, start_after: str = "") -> Iterator[tuple[str, int]]:
        check_prefix(prefix, location=self.name)
        # Walk only the directory the prefix points into; the rest of the prefix filters names.
        start_dir = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root / start_dir if start_dir else self.root
        if not start.is_dir():
            self._require_root(prefix or None)
            return
        yield from self._walk(start_dir, prefix, start_after)

    def _walk(self, rel_dir: str, prefix: str, start_after: str) -> Iterator[tuple[str, int]]:
        """The objects under ``rel_dir`` in ascending key order (``base.sort_key``)."""
        directory = self.root / rel_dir if rel_dir else self.root
        try:
            with os.scandir(directory) as it:
                entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
        except FileNotFoundError:
            return  # removed while listing
        except OSError as exc:
            raise self._map(exc, rel_dir or None, reading=True) from exc
        entries.sort(key=lambda e: sort_key(e[0], is_directory=e[1]))
        for name, is_dir in entries:
            key = f"{rel_dir}/{name}" if rel_dir else name
            if is_dir:
                if key == PARTIAL_DIR:
                    continue  # writes in progress, never objects
                if (key.startswith(prefix) or prefix.startswith(key + "/")) and (
                    may_hold_keys_after(key, start_after)
                ):
                    yield from self._walk(key, prefix, start_after)
                continue
            if is_part_file(name) or not key.startswith(prefix) or key <= start_after:
                continue
            try:
                size = os.stat(directory / name).st_size
            except FileNotFoundError:
                continue  # deleted while listing
            except OSError as exc:
                raise self._map(exc, key, reading=True) from exc
            yield key, size

    def move(self, key: str, new_key: str) -> None:
        path, target = self.path_of(key), self.path_of(new_key)
        self._require_root(key)
        if not path.is_file():
            raise PermanentStorageError("no object to move", location=self.name, key=key)
        if target.exists():
            raise PermanentStorageError(
                f"refusing to move onto an existing object {new_key}", location=self.name, key=key
            )
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(path, target)
        except OSError as exc:
            raise self._map(exc, key, reading=False) from exc
        _fsync_dir(target.parent)
        _fsync_dir(path.parent)

    def _raise_walk_error(self, exc: OSError) -> None:
        raise self._map(exc, None, reading=True) from exc

    def checksum(self, key: str, algorithm: str = DEFAULT_ALGORITHM) -> tuple[str, int]:
        path = self.path_of(key)
        try:
            return checksum_file(path, algorithm)
        except OSError as exc:
            raise self._map(exc, key, reading=True) from exc

    def list_temporaries(self) -> Iterator[TemporaryObject]:
        """Files (writes) and directories (unpacks) in ``.ccat-partial/``; a directory's size is
        the sum of its files, its time the newest modification inside it."""
        partial = partial_dir(self.root)
        try:
            entries = sorted(os.scandir(partial), key=lambda e: e.name)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._map(exc, PARTIAL_DIR, reading=True) from exc
        for entry in entries:
            try:
                size, mtime = _tree_size_and_mtime(Path(entry.path))
            except FileNotFoundError:
                continue  # finished (renamed or removed) while listing
            except OSError as exc:
                raise self._map(exc, f"{PARTIAL_DIR}/{entry.name}", reading=True) from exc
            yield TemporaryObject(
                name=f"{PARTIAL_DIR}/{entry.name}",
                size=size,
                modified_at=datetime.fromtimestamp(mtime, UTC),
            )

    def remove_temporary(self, temporary: TemporaryObject) -> bool:
        directory, _, name = temporary.name.partition("/")
        if directory != PARTIAL_DIR or not name or "/" in name or name in (".", ".."):
            raise PermanentStorageError(
                "not a temporary of this location; refusing to remove it",
                location=self.name,
                key=temporary.name,
            )
        path = partial_dir(self.root) / name
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise self._map(exc, temporary.name, reading=False) from exc
        return True

    def disk_usage(self) -> DiskUsage:
        try:
            usage = shutil.disk_usage(self.root)
        except OSError as exc:
            raise self._map(exc, None, reading=False) from exc
        return DiskUsage(total_bytes=usage.total, used_bytes=usage.used)


def _tree_size_and_mtime(path: Path) -> tuple[int, float]:
    """Total size of the files under ``path`` (or of the file) and the newest mtime there."""
    st = path.lstat()
    if not path.is_dir() or path.is_symlink():
        return st.st_size, st.st_mtime
    size, newest = 0, st.st_mtime
    for dirpath, _dirnames, filenames in os.walk(path):
        newest = max(newest, os.lstat(dirpath).st_mtime)
        for filename in filenames:
            try:
                file_stat = os.lstat(os.path.join(dirpath, filename))
            except FileNotFoundError:
                continue
            size += file_stat.st_size
            newest = max(newest, file_stat.st_mtime)
    return size, newest


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable: a crash right after must not lose the new directory entry."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the data itself is synced
    finally:
        os.close(fd)
