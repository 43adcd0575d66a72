"""The file tree of a SOURCE location as the ingest sensor sees it: on this machine
(:class:`LocalSourceTree`, ``os.scandir``) or on an instrument computer reached over SSH
(:class:`RemoteSourceTree`, the original system's ``execute_remote_command``).

Both answer the same few questions, and the remote one answers each with one remote command,
never one round trip per file: which files changed since the cursor (one ``find``), whether
files exist (one ``sh`` loop over the names), and the checksums and sizes of a batch of files
(``sha256sum`` on that host; no bytes of the files cross the network). File names travel
NUL-separated, on stdin or in ``find -printf`` output, never through a shell's word
splitting, so spaces, quotes, ``$(...)``, leading '-' and newlines in names are plain bytes.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.ingest.filing import register_listed_files, register_raw_data_files
from ccat_dagster.storage.base import PARTIAL_DIR, Storage
from ccat_dagster.storage.ssh import REMOTE_HASH_TOOLS, SSHStorage
from ccat_ops_db.checksum import DEFAULT_ALGORITHM
from ccat_ops_db.models import DiskDataLocation

#: file names per remote checksum command (also bounded by NAMES_PER_BATCH_BYTES)
FILES_PER_BATCH = 500
NAMES_PER_BATCH_BYTES = 256 * 1024
#: exit status of a remote command whose ``cd`` into the root failed
NO_ROOT_STATUS = 3


class IngestError(RuntimeError):
    """The SOURCE cannot be scanned at all (its root is missing, unreadable or unreachable)."""


@dataclass(frozen=True)
class SourceFile:
    """A file at the SOURCE: its path relative to the root, the later of its content and
    metadata change times, its size, and whether it is a symlink (remote trees do not follow
    them)."""

    relative: str
    changed_ns: int
    size: int
    symlink: bool = False


class SourceTree(Protocol):
    name: str
    root: str

    def scan(self, since_ns: int) -> Iterator[SourceFile]:
        """Every file changed at or after ``since_ns``."""
        ...

    def changed_ns(self, relative: str) -> int | None:
        """The change time of a file the last scan may not have listed (a marker); None when
        it is absent or, for a remote tree, older than the scan's ``since_ns``."""
        ...

    def existing(self, relatives: Iterable[str]) -> set[str]:
        """Those of ``relatives`` that exist (as anything, a dangling symlink too)."""
        ...

    def files_under(self, directory: str) -> Iterator[str]:
        """Relative paths of every file under ``directory`` ('' is the root)."""
        ...

    def register(
        self,
        session: Session,
        location: DiskDataLocation,
        obs_unit: str,
        instrument_module: str,
        files: Sequence[SourceFile],
    ) -> None:
        """File ``files`` through the filing path (FilingError: nothing written)."""
        ...


def _decode(raw: bytes) -> str:
    return os.fsdecode(raw)


def _seconds_to_ns(text: bytes) -> int:
    return int(Decimal(text.decode()) * 1_000_000_000)


class LocalSourceTree:
    """A SOURCE mounted on this machine: one ``stat`` per entry, symlinked directories not
    entered; a symlinked file is given to the filing path, which refuses one leading out of the
    root."""

    def __init__(self, name: str, root: str) -> None:
        self.name, self.root = name, root.rstrip("/") or "/"

    def scan(self, since_ns: int) -> Iterator[SourceFile]:
        root = self.root
        cut = len(root.rstrip("/")) + 1
        stack = [root]
        while stack:
            current = stack.pop()
            try:
                with os.scandir(current) as entries:
                    listed = list(entries)
            except OSError as exc:
                if current == root:
                    raise IngestError(
                        f"cannot list the root {root}: {exc.strerror or exc}; check that the "
                        "SOURCE is mounted here"
                    ) from exc
                continue  # reported by the filing path if a file of it is ever given
            for entry in listed:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                        continue
                    st = entry.stat()
                except OSError:
                    continue  # gone since the listing
                changed = max(st.st_mtime_ns, st.st_ctime_ns)
                if changed >= since_ns and stat.S_ISREG(st.st_mode):
                    yield SourceFile(entry.path[cut:], changed, st.st_size)

    def changed_ns(self, relative: str) -> int | None:
        try:
            st = os.stat(os.path.join(self.root, relative))
        except OSError:
            return None
        return max(st.st_mtime_ns, st.st_ctime_ns)

    def existing(self, relatives: Iterable[str]) -> set[str]:
        return {r for r in relatives if os.path.lexists(os.path.join(self.root, r))}

    def files_under(self, directory: str) -> Iterator[str]:
        for current, _dirs, names in os.walk(os.path.join(self.root, directory)):
            for name in names:
                yield os.path.relpath(os.path.join(current, name), self.root)

    def register(
        self,
        session: Session,
        location: DiskDataLocation,
        obs_unit: str,
        instrument_module: str,
        files: Sequence[SourceFile],
    ) -> None:
        register_raw_data_files(
            session, location, obs_unit, instrument_module, [f.relative for f in files]
        )


#: ``find -printf`` of a remote scan: type, mtime, ctime, size, path under the root; NUL-ended
_FIND_FORMAT = "%y %T@ %C@ %s %P\\0"
_HEX = re.compile(rb"[0-9a-f]{32,128}")


class RemoteSourceTree:
    """A SOURCE on another host, read through the shell of its SSH server (GNU find and
    coreutils, as on any Linux instrument computer). ``scan`` lists only what changed since the
    cursor (``find -newerct``), so an idle tick costs one command and an output of a few bytes,
    whatever the history. ``changed_ns`` answers from the last scan: a marker older than the
    cursor cannot mark a file changed after the cursor complete, so it need not be known."""

    def __init__(self, storage: SSHStorage) -> None:
        self.storage = storage
        self.name, self.root = storage.name, storage.root
        self._scanned: dict[str, int] = {}

    def _cd(self) -> str:
        return f"cd -- {shlex.quote(self.root)} || exit {NO_ROOT_STATUS}; "

    def _run(self, command: str, action: str, stdin: bytes = b"") -> bytes:
        status, out, err = self.storage.run_command(
            self._cd() + command, stdin=stdin, action=action
        )
        if status == NO_ROOT_STATUS:
            raise IngestError(
                f"cannot enter the root {self.root} on {self.storage.host}: "
                f"{err.decode(errors='replace').strip()}; check that the SOURCE is mounted there"
            )
        if status == 127:
            raise IngestError(
                f"{action} on {self.storage.host}: a tool is missing "
                f"({err.decode(errors='replace').strip()}); the host needs GNU find and coreutils"
            )
        # Other statuses: some entry could not be read (permissions, gone meanwhile). What was
        # listed is used; an unreadable file is reported by the filing path when it is given.
        return out

    def scan(self, since_ns: int) -> Iterator[SourceFile]:
        newer = ""
        if since_ns > 0:
            # find's ``-newerXt @T`` is strict (> T); the cursor is inclusive (>= since)
            stamp = f"@{Decimal(since_ns - 1) / 1_000_000_000:.9f}"
            newer = f"\\( -newerct {stamp} -o -newermt {stamp} \\) "
        command = (
            f"find . -mindepth 1 -path ./{PARTIAL_DIR} -prune -o "
            f"{newer}\\( -type f -o -type l \\) -printf {shlex.quote(_FIND_FORMAT)}"
        )
        out = self._run(command, "list changed files")
        files = []
        for record in out.split(b"\0"):
            if not record:
                continue
            kind, mtime, ctime, size, path = record.split(b" ", 4)
            changed = max(_seconds_to_ns(mtime), _seconds_to_ns(ctime))
            files.append(SourceFile(_decode(path), changed, int(size), symlink=kind == b"l"))
        # known before the first file is looked at: its marker may come later in the listing
        self._scanned = {f.relative: f.changed_ns for f in files}
        yield from files

    def changed_ns(self, relative: str) -> int | None:
        return self._scanned.get(relative)

    def existing(self, relatives: Iterable[str]) -> set[str]:
        names = [os.fsencode(r) for r in relatives]
        if not names:
            return set()
        script = 'for f; do if [ -e "$f" ] || [ -L "$f" ]; then printf "%s\\0" "$f"; fi; done'
        out = self._run(
            f"xargs -0 -r sh -c {shlex.quote(script)} sh",
            "check files exist",
            stdin=b"".join(b"./" + n + b"\0" for n in names),
        )
        return {_decode(r[2:]) for r in out.split(b"\0") if r.startswith(b"./")}

    def files_under(self, directory: str) -> Iterator[str]:
        start = "./" + directory if directory else "."
        out = self._run(
            f"find {shlex.quote(start)} \\( -type f -o -type l \\) -printf '%p\\0'",
            "list files",
        )
        for record in out.split(b"\0"):
            if record.startswith(b"./"):
                yield _decode(record[2:])

    def register(
        self,
        session: Session,
        location: DiskDataLocation,
        obs_unit: str,
        instrument_module: str,
        files: Sequence[SourceFile],
    ) -> None:
        register_listed_files(
            session,
            location,
            obs_unit,
            instrument_module,
            [(f.relative, f.size) for f in files],
            self.checksums,
        )

    def checksums(
        self, relatives: Sequence[str], algorithm: str = DEFAULT_ALGORITHM
    ) -> dict[str, tuple[str, int]]:
        """relative path -> (checksum, size after hashing) of every file of ``relatives`` that
        could be read, computed on the host in batches; a file missing from the answer could
        not be read there. Streams the bytes only when the host lacks the hash tool."""
        tool = REMOTE_HASH_TOOLS.get(algorithm)
        if tool is None:
            return {r: self.storage.checksum(r, algorithm) for r in relatives}
        result: dict[str, tuple[str, int]] = {}
        for batch in _batches([os.fsencode(r) for r in relatives]):
            result.update(self._checksum_batch(batch, tool))
        return result

    def _checksum_batch(self, batch: list[bytes], tool: str) -> dict[str, tuple[str, int]]:
        # The hash, then the size once hashed: a file still growing shows a size other than
        # the one listed and is refused by the filing path. ``-z``: NUL-ended records, names
        # not escaped.
        script = f'{tool} -z -- "$@"; find "$@" -maxdepth 0 -printf "%s %p\\0"'
        out = self._run(
            f"xargs -0 -r sh -c {shlex.quote(script)} sh",
            f"checksum files ({tool})",
            stdin=b"".join(b"./" + n + b"\0" for n in batch),
        )
        digests: dict[bytes, str] = {}
        sizes: dict[bytes, int] = {}
        for record in out.split(b"\0"):
            first, sep, rest = record.partition(b" ")
            if not sep:
                continue
            if _HEX.fullmatch(first) and rest[:1] in (b" ", b"*"):
                digests[rest[1:]] = first.decode()  # "<hex>  ./name" or "<hex> *./name"
            elif first.isdigit():
                sizes[rest] = int(first)
        result = {}
        for name in batch:
            key = b"./" + name
            if key in digests and key in sizes:
                result[_decode(name)] = (digests[key], sizes[key])
        return result


def _batches(names: list[bytes]) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    size = 0
    for name in names:
        if batch and (len(batch) >= FILES_PER_BATCH or size + len(name) > NAMES_PER_BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(name)
        size += len(name) + 3
    if batch:
        yield batch


def source_tree(location: DiskDataLocation, storage: Storage) -> SourceTree:
    """The tree of ``location`` as reached through ``storage`` (the factory's choice: a
    directory mounted here, or SSH to the location's host)."""
    if isinstance(storage, SSHStorage):
        return RemoteSourceTree(storage)
    return LocalSourceTree(location.qualified_name, location.path)
