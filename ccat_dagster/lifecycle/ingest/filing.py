"""Filing raw data: registering the files an instrument wrote at a SOURCE location.

Each file becomes a RawDataFile (relative path, size, checksum) of one ExecutedObsUnit and
InstrumentModule, with a PRESENT RawDataFilePhysicalCopy at the SOURCE and an audit entry. All
paths are checked and checksummed before anything is written, so a bad path rejects the whole
call and leaves the database untouched. Work is set-based: existing rows are looked up and new
rows inserted per chunk of thousands of files, never one statement per file. Registering a file
again is a no-op; the same path with other content is refused, because the first bytes may
already be packaged and archived. Names must be valid UTF-8 (the ops database and the package
manifests hold them as text): a file whose name is not is refused, named with its undecodable
bytes escaped, and nothing of the call is registered.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.common.chunks import CHUNK_ROWS, chunks
from ccat_dagster.lifecycle.common.locations import resolve_location
from ccat_ops_db.audit import audit_many
from ccat_ops_db.checksum import DEFAULT_ALGORITHM, checksum_file
from ccat_ops_db.models import (
    CopyType,
    DataLocation,
    DiskDataLocation,
    ExecutedObsUnit,
    InstrumentModule,
    LocationType,
    PhysicalCopy,
    PhysicalCopyStatus,
    RawDataFile,
    table_of,
    utcnow,
)
from ccat_ops_db.session import dialect_insert

# Problems listed in one error message; the rest are counted.
MAX_LISTED_PROBLEMS = 20
AUDIT_ENTITY_TYPE = "physical_copy"


class FilingError(ValueError):
    """Files that cannot be registered; nothing was written."""

    def __init__(self, location: str, problems: list[str]) -> None:
        self.problems = problems
        listed = problems[:MAX_LISTED_PROBLEMS]
        more = len(problems) - len(listed)
        lines = [
            f"cannot register raw data files at {location}: {len(problems)} problem(s); "
            "nothing was registered",
            *(f"  - {p}" for p in listed),
        ]
        if more:
            lines.append(f"  ... and {more} more")
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class FilingResult:
    location: str  # site/name
    obs_unit: str
    instrument_module: str
    registered: int
    already_registered: int


@dataclass(frozen=True)
class _Candidate:
    relative_path: str
    path: str  # the path to read
    size: int


def shown_path(path: str | os.PathLike[str]) -> str:
    """``path`` for a message: bytes that are not UTF-8 (kept by Python as surrogate escapes)
    shown as ``\\xNN``, so the message names the file and can itself be printed."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def not_utf8_problem(path: str) -> str:
    """The refusal of a file whose name is not UTF-8, naming it with the bytes escaped."""
    return (
        f"{shown_path(path)}: the file name is not valid UTF-8 (undecodable bytes shown as "
        "\\xNN); names are stored as UTF-8 text in the ops database and the package manifests: "
        "rename the file to a UTF-8 name and register it again"
    )


def _check_location(
    session: Session, location: DataLocation | str, *, mounted_here: bool = True
) -> DiskDataLocation:
    if isinstance(location, str):
        location = resolve_location(session, location)
    name = location.qualified_name
    if location.location_type is not LocationType.SOURCE:
        problem = (
            f"{name} is a {location.location_type.value} location; raw data files are "
            "registered only at a SOURCE location (see `ccat list-locations`)"
        )
    elif not isinstance(location, DiskDataLocation):
        problem = f"{name} is on {location.storage_type.value} storage; a SOURCE must be on disk"
    elif not (location.active and location.site.active):
        problem = (
            f"{name} is inactive; set active: true on it in the topology and run "
            "`ccat topology apply`, or register at the active SOURCE location"
        )
    elif mounted_here and not os.path.isdir(location.path):
        where = f" (host {location.host})" if location.host else ""
        problem = (
            f"the root {location.path} of {name} is not a directory on this machine; run the "
            f"registration where the location is mounted{where}"
        )
    else:
        return location
    raise FilingError(name, [problem])


class _FileCollector:
    """Expands the given paths into regular files under the root, collecting every problem.

    Works on strings and ``os.scandir`` entries: an instrument directory holds many thousands of
    files, and only symlinks need the (slow) ``realpath``.
    """

    def __init__(self, root: str) -> None:
        self.root_lexical = os.path.abspath(root)
        self.root_real = os.path.realpath(root)
        self.files: dict[str, _Candidate] = {}
        self.problems: list[str] = []
        self._real_directories: dict[str, str] = {}

    @staticmethod
    def _under(path: str, root: str) -> bool:
        return path == root or path.startswith(root.rstrip("/") + "/")

    def add(self, given: str | Path) -> None:
        shown = shown_path(given)
        if ".." in Path(given).parts:
            self.problems.append(
                f"{shown}: contains '..'; give the path without '..' (absolute, or relative to "
                f"the location root {self.root_lexical})"
            )
            return
        # Relative paths are taken relative to the location root, as instruments know it.
        path = os.path.normpath(os.path.join(self.root_lexical, given))
        if not (self._under(path, self.root_lexical) or self._under(path, self.root_real)):
            self.problems.append(
                f"{shown}: outside the location root {self.root_lexical}; move or copy the file "
                "under the root (or register it at the SOURCE location that holds it)"
            )
            return
        if not os.path.lexists(path):
            self.problems.append(f"{shown}: does not exist ({shown_path(path)}); check the path")
            return
        real = self._real_inside(path, given)
        if real is None:
            return
        if os.path.isdir(real):
            self._walk(real)
        else:
            self._file(real, given)

    def _real_inside(self, path: str, given: str | Path) -> str | None:
        real = self._realpath(path)
        if not self._under(real, self.root_real):
            self.problems.append(
                f"{shown_path(given)}: is a symlink leading out of the location root "
                f"{self.root_real} (to {shown_path(real)}); copy the data under the root instead "
                "of linking to it"
            )
            return None
        return real

    def _realpath(self, path: str) -> str:
        """``os.path.realpath`` with the directories resolved once each: it lstat()s every
        component of the path, so resolving thousands of files of one directory one by one
        costs thousands of times the depth in system calls."""
        directory, name = os.path.split(path)
        if not name or os.path.islink(path):
            return os.path.realpath(path)
        real_directory = self._real_directories.get(directory)
        if real_directory is None:
            real_directory = self._real_directories[directory] = os.path.realpath(directory)
        return os.path.join(real_directory, name)

    def _walk(self, real_directory: str) -> None:
        stack, seen = [real_directory], set()
        while stack:
            current = stack.pop()  # always a real (symlink-free) path inside the root
            if current in seen:
                continue
            seen.add(current)
            try:
                with os.scandir(current) as it:
                    entries = sorted(it, key=lambda e: e.name, reverse=True)
            except OSError as exc:
                self.problems.append(
                    f"{shown_path(current)}: cannot list directory: {exc.strerror or exc}"
                )
                continue
            for entry in entries:
                real = f"{current}/{entry.name}"
                if entry.is_symlink():
                    real = self._real_inside(entry.path, entry.path)
                    if real is None:
                        continue
                if entry.is_dir(follow_symlinks=True):
                    stack.append(real)
                else:
                    self._file(real, entry.path)

    def _file(self, real: str, given: str | Path) -> None:
        try:
            st = os.stat(real)
        except OSError as exc:
            self.problems.append(f"{shown_path(given)}: cannot be read: {exc.strerror or exc}")
            return
        if not stat.S_ISREG(st.st_mode):
            self.problems.append(
                f"{shown_path(given)}: is not a regular file (a device, socket or pipe); only "
                "regular files can be registered, so remove it from the given paths"
            )
            return
        # The canonical (symlink-free) path, so a file named two ways is registered once.
        relative = real[len(self.root_real) :].lstrip("/")
        if not is_utf8(relative):
            self.problems.append(not_utf8_problem(real))
            return
        self.files[relative] = _Candidate(relative, real, st.st_size)


def _check_names(obs_unit: str, instrument_module: str) -> list[str]:
    problems = []
    for what, value in (("obs unit", obs_unit), ("instrument module", instrument_module)):
        if not isinstance(value, str) or not value.strip():
            problems.append(f"the {what} name is empty; give the name the instrument uses")
        elif not is_utf8(value):
            problems.append(
                f"the {what} name {shown_path(value)!r} is not valid UTF-8; give it in UTF-8"
            )
        elif len(value) > 200 or any(c in value for c in "|,[]\n"):
            problems.append(
                f"the {what} name {value!r} is too long or contains '|', ',', '[', ']' or a "
                "newline (it becomes part of package names)"
            )
    return problems


def _existing_rows(session: Session, location_id: int, relative_paths: Sequence[str]) -> dict:
    rows = session.execute(
        select(
            RawDataFile.relative_path,
            RawDataFile.size,
            RawDataFile.checksum,
            RawDataFile.checksum_algorithm,
            ExecutedObsUnit.name,
            InstrumentModule.name,
        )
        .join(ExecutedObsUnit, RawDataFile.executed_obs_unit_id == ExecutedObsUnit.id)
        .join(InstrumentModule, RawDataFile.instrument_module_id == InstrumentModule.id)
        .where(
            RawDataFile.source_location_id == location_id,
            RawDataFile.relative_path.in_(relative_paths),
        )
    ).all()
    return {row[0]: row[1:] for row in rows}


def _compare_with_registered(
    candidate: _Candidate,
    registered: tuple,
    obs_unit: str,
    instrument_module: str,
    checksum: str,
    size_now: int,
) -> str | None:
    size, filed_checksum, algorithm, old_obs_unit, old_module = registered
    if (old_obs_unit, old_module) != (obs_unit, instrument_module):
        return (
            f"{candidate.relative_path}: already registered for obs unit {old_obs_unit!r} and "
            f"instrument module {old_module!r}; a file belongs to one observation, so check "
            "the obs unit and module you gave"
        )
    if not (size_now == size and checksum == filed_checksum):
        return (
            f"{candidate.relative_path}: already registered with other content (size {size}, "
            f"{algorithm} {filed_checksum[:16]}...); registered data is never replaced: write the "
            "new data under a new file name and register that"
        )
    return None


def _get_or_create_id(session: Session, model: type, name: str) -> int:
    # INSERT .. ON CONFLICT DO NOTHING: two registrations of a new obs unit may race.
    existing = session.scalar(select(model.id).where(model.name == name))
    if existing is not None:
        return existing
    session.execute(
        dialect_insert(session, model)
        .values(name=name)
        .on_conflict_do_nothing(index_elements=["name"])
    )
    return session.scalars(select(model.id).where(model.name == name)).one()


#: relative paths -> {relative path: (checksum, size once hashed)} of those that could be read
ChecksumBatch = Callable[[Sequence[str]], dict[str, tuple[str, int]]]


def register_raw_data_files(
    session: Session,
    location: DataLocation | str,
    obs_unit: str,
    instrument_module: str,
    paths: Sequence[str | Path],
    *,
    algorithm: str = DEFAULT_ALGORITHM,
    run_id: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> FilingResult:
    """Register files (or every regular file under directories) at a SOURCE disk location.

    ``location``: a DataLocation or a name for :func:`resolve_location`. Relative ``paths`` are
    relative to the location root. Raises FilingError (nothing written) for any bad path,
    changed content or a location that is not an active local SOURCE on disk. Runs in the
    caller's transaction and flushes; the caller commits. ``progress(stage, done, total)`` is
    called as files are checked (e.g. a progress bar of ``ccat files register``).
    """
    source = _check_location(session, location)
    collector = _FileCollector(source.path)
    for given in paths:
        collector.add(given)
    candidates = [collector.files[k] for k in sorted(collector.files)]
    by_path = {c.relative_path: c.path for c in candidates}

    def checksums(relatives: Sequence[str]) -> dict[str, tuple[str, int]]:
        return {r: checksum_file(by_path[r], algorithm) for r in relatives}

    return _register(
        session,
        source,
        obs_unit,
        instrument_module,
        candidates,
        collector.problems,
        checksums,
        batch=1,
        algorithm=algorithm,
        run_id=run_id,
        progress=progress,
    )


def register_listed_files(
    session: Session,
    location: DiskDataLocation,
    obs_unit: str,
    instrument_module: str,
    files: Sequence[tuple[str, int]],
    checksums: ChecksumBatch,
    *,
    algorithm: str = DEFAULT_ALGORITHM,
    run_id: str | None = None,
) -> FilingResult:
    """Register files a listing of the SOURCE found (relative path, size), with checksums
    computed where the files are (``checksums``, e.g. on an instrument computer over SSH):
    the same checks, idempotence and rows as :func:`register_raw_data_files`, for a SOURCE
    that is not mounted on this machine. Symlinks are not in such listings (refused before)."""
    source = _check_location(session, location, mounted_here=False)
    problems = []
    candidates = []
    for relative, size in sorted(files):
        if not is_utf8(relative):
            problems.append(not_utf8_problem(relative))
        elif any(part in ("", ".", "..") for part in relative.split("/")):
            problems.append(f"{shown_path(relative)}: not a path under the location root")
        else:
            candidates.append(_Candidate(relative, relative, size))
    return _register(
        session,
        source,
        obs_unit,
        instrument_module,
        candidates,
        problems,
        checksums,
        batch=CHUNK_ROWS,
        algorithm=algorithm,
        run_id=run_id,
    )


def _register(
    session: Session,
    source: DiskDataLocation,
    obs_unit: str,
    instrument_module: str,
    candidates: list[_Candidate],
    problems: list[str],
    checksums: ChecksumBatch,
    *,
    batch: int,
    algorithm: str,
    run_id: str | None,
    progress: Callable[[str, int, int], None] | None = None,
) -> FilingResult:
    """The filing of checked candidates: compare with what is registered, checksum the rest
    (``batch`` files per call of ``checksums``), insert the new ones; FilingError (nothing
    written) for any problem."""
    name = source.qualified_name
    problems = problems + _check_names(obs_unit, instrument_module)
    if problems:
        raise FilingError(name, problems)
    new: list[tuple[_Candidate, str]] = []
    done = 0
    for chunk in chunks(candidates):
        registered = _existing_rows(session, source.id, [c.relative_path for c in chunk])
        for part in chunks(chunk, batch):
            hashed = checksums([c.relative_path for c in part])
            for candidate in part:
                done += 1
                if progress is not None:
                    progress("checking and checksumming files", done, len(candidates))
                problem = _check_candidate(
                    candidate,
                    registered.get(candidate.relative_path),
                    hashed.get(candidate.relative_path),
                    obs_unit,
                    instrument_module,
                )
                if problem:
                    problems.append(problem)
                elif candidate.relative_path not in registered:
                    new.append((candidate, hashed[candidate.relative_path][0]))
    if problems:
        raise FilingError(name, problems)

    if new:
        _insert_new_files(session, source, obs_unit, instrument_module, new, algorithm, run_id)
    session.flush()
    return FilingResult(
        location=name,
        obs_unit=obs_unit,
        instrument_module=instrument_module,
        registered=len(new),
        already_registered=len(candidates) - len(new),
    )


def _check_candidate(
    candidate: _Candidate,
    registered: tuple | None,
    hashed: tuple[str, int] | None,
    obs_unit: str,
    instrument_module: str,
) -> str | None:
    """What is wrong with filing ``candidate`` (None: nothing), given its catalogue row if it
    has one and its (checksum, size once hashed), None if it could not be read."""
    if hashed is None:
        return (
            f"{candidate.relative_path}: cannot be read; check its permissions and register it "
            "again"
        )
    checksum, size = hashed
    if registered is not None:
        return _compare_with_registered(
            candidate, registered, obs_unit, instrument_module, checksum, size
        )
    if size != candidate.size:
        return (
            f"{candidate.relative_path}: changed size while being registered (is the "
            "instrument still writing it?); register it once it is complete"
        )
    return None


def _insert_new_files(
    session: Session,
    source: DiskDataLocation,
    obs_unit: str,
    instrument_module: str,
    new: list[tuple[_Candidate, str]],
    algorithm: str,
    run_id: str | None,
) -> None:
    obs_unit_id = _get_or_create_id(session, ExecutedObsUnit, obs_unit)
    module_id = _get_or_create_id(session, InstrumentModule, instrument_module)
    files, copies = table_of(RawDataFile), table_of(PhysicalCopy)
    reason = (
        f"raw data file registered at {source.qualified_name} ({obs_unit}, {instrument_module})"
    )
    now = utcnow()
    for chunk in chunks(new):
        file_ids = dict(
            session.execute(
                insert(files).returning(files.c.relative_path, files.c.id),
                [
                    {
                        "name": c.relative_path.rsplit("/", 1)[-1],
                        "relative_path": c.relative_path,
                        "size": c.size,
                        "checksum": checksum,
                        "checksum_algorithm": algorithm,
                        "source_location_id": source.id,
                        "executed_obs_unit_id": obs_unit_id,
                        "instrument_module_id": module_id,
                        "created_at": now,
                    }
                    for c, checksum in chunk
                ],
            ).all()
        )
        copy_ids = dict(
            session.execute(
                insert(copies).returning(copies.c.raw_data_file_id, copies.c.id),
                [
                    {
                        "type": CopyType.RAW_DATA_FILE,
                        "data_location_id": source.id,
                        "status": PhysicalCopyStatus.PRESENT,
                        "size": c.size,
                        "checksum": checksum,
                        "checksum_algorithm": algorithm,
                        "created_at": now,
                        "updated_at": now,
                        "verified_at": now,
                        "retry_count": 0,
                        "raw_data_file_id": file_ids[c.relative_path],
                    }
                    for c, checksum in chunk
                ],
            ).all()
        )
        audit_many(
            session,
            [
                {
                    "entity_type": AUDIT_ENTITY_TYPE,
                    "entity_id": copy_ids[file_ids[c.relative_path]],
                    "data_location_id": source.id,
                    "new_status": PhysicalCopyStatus.PRESENT,
                    "reason": reason,
                    "run_id": run_id,
                    "evidence": {
                        "relative_path": c.relative_path,
                        "size": c.size,
                        "checksum": checksum,
                        "checksum_algorithm": algorithm,
                    },
                }
                for c, checksum in chunk
            ],
        )
