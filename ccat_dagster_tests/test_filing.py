"""Filing raw data at a SOURCE: rows, copies and audit; idempotency; rejections write nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import event, func, select

from ccat_dagster.lifecycle.common.locations import LocationError
from ccat_dagster.lifecycle.ingest.filing import FilingError, register_raw_data_files
from ccat_dagster.simulate import demo_topology, simulate_instrument
from ccat_ops_db.checksum import checksum_file
from ccat_ops_db.models import (
    AuditLog,
    ExecutedObsUnit,
    InstrumentModule,
    PhysicalCopyStatus,
    RawDataFile,
    RawDataFilePhysicalCopy,
)
from ccat_ops_db.topology import apply_topology

SOURCE = "ccat/primecam_raw_data"


@pytest.fixture
def root(session, tmp_path) -> Path:
    """The root directory of the SOURCE location ccat/primecam_raw_data of the demo topology."""
    apply_topology(session, demo_topology(tmp_path / "home"))
    session.commit()
    return tmp_path / "home" / "ccat" / "primecam_raw_data"


def _count(session, model) -> int:
    return session.scalar(select(func.count()).select_from(model))


def _counts(session) -> tuple[int, ...]:
    return tuple(
        _count(session, m)
        for m in (RawDataFile, RawDataFilePhysicalCopy, AuditLog, ExecutedObsUnit, InstrumentModule)
    )


def _simulate(root: Path, **kwargs):
    kwargs = {"n_obs_units": 1, "modules": ["pcam_280"], "files_per_unit": 4} | kwargs
    return simulate_instrument(root, min_size=1000, max_size=20_000, seed=1, **kwargs)


def test_registering_files_records_file_copy_and_audit(session, root):
    files = _simulate(root)
    result = register_raw_data_files(
        session, SOURCE, files[0].obs_unit, "pcam_280", [f.path for f in files]
    )
    session.commit()

    assert (result.registered, result.already_registered) == (4, 0)
    rows = {r.relative_path: r for r in session.scalars(select(RawDataFile))}
    assert len(rows) == 4
    for f in files:
        row = rows[f.path.relative_to(root).as_posix()]
        checksum, size = checksum_file(f.path)
        assert (row.size, row.checksum, row.checksum_algorithm) == (size, checksum, "sha256")
        assert row.name == f.path.name
        assert row.executed_obs_unit.name == f.obs_unit
        assert row.instrument_module.name == "pcam_280"
        assert row.source_location.name == "primecam_raw_data"
    copies = session.scalars(select(RawDataFilePhysicalCopy)).all()
    assert len(copies) == 4
    for copy in copies:
        assert copy.status is PhysicalCopyStatus.PRESENT
        assert copy.data_location_id == copy.raw_data_file.source_location_id
        assert (copy.size, copy.checksum) == (copy.raw_data_file.size, copy.raw_data_file.checksum)
        assert copy.checksum_algorithm == "sha256"
    audits = session.scalars(select(AuditLog)).all()
    assert sorted(a.entity_id for a in audits) == sorted(c.id for c in copies)
    assert {a.new_status for a in audits} == {"PRESENT"}


def test_registering_the_same_files_again_is_a_no_op(session, root):
    files = _simulate(root)
    paths = [f.path for f in files]
    register_raw_data_files(session, SOURCE, files[0].obs_unit, "pcam_280", paths)
    session.commit()
    before = _counts(session)

    again = register_raw_data_files(session, SOURCE, files[0].obs_unit, "pcam_280", paths)
    session.commit()
    assert (again.registered, again.already_registered) == (0, 4)
    assert _counts(session) == before


def test_directory_registers_every_regular_file_below_it_and_later_only_new_ones(session, root):
    files = _simulate(root, files_per_unit=3)
    obs_dir = root / files[0].obs_unit
    first = register_raw_data_files(session, SOURCE, files[0].obs_unit, "pcam_280", [obs_dir])
    assert first.registered == 3
    (obs_dir / "pcam_280" / "late.dat").write_bytes(b"written after the first filing")
    second = register_raw_data_files(
        session,
        SOURCE,
        files[0].obs_unit,
        "pcam_280",
        [files[0].obs_unit],  # relative to root
    )
    session.commit()
    assert (second.registered, second.already_registered) == (1, 3)
    assert _count(session, RawDataFile) == 4


def test_same_path_with_different_content_is_refused_and_nothing_changes(session, root):
    files = _simulate(root, files_per_unit=2)
    paths = [f.path for f in files]
    register_raw_data_files(session, SOURCE, files[0].obs_unit, "pcam_280", paths)
    session.commit()
    original = session.scalars(select(RawDataFile.checksum).order_by(RawDataFile.id)).all()
    before = _counts(session)

    size = files[1].path.stat().st_size
    files[1].path.write_bytes(b"\0" * size)  # same size, other bytes
    new_file = root / "new.dat"
    new_file.write_bytes(b"new")
    with pytest.raises(FilingError) as excinfo:
        register_raw_data_files(session, SOURCE, files[0].obs_unit, "pcam_280", [*paths, new_file])
    session.rollback()
    message = str(excinfo.value)
    assert files[1].path.relative_to(root).as_posix() in message
    assert "other content" in message
    assert "new file name" in message
    assert _counts(session) == before
    assert session.scalars(select(RawDataFile.checksum).order_by(RawDataFile.id)).all() == original


def test_same_file_under_another_obs_unit_is_refused(session, root):
    files = _simulate(root, files_per_unit=1)
    register_raw_data_files(session, SOURCE, files[0].obs_unit, "pcam_280", [files[0].path])
    session.commit()
    with pytest.raises(FilingError, match="already registered for obs unit"):
        register_raw_data_files(session, SOURCE, "obs_other", "pcam_280", [files[0].path])


def _outside(root: Path) -> str:
    outside = root.parent / "outside.dat"
    outside.write_bytes(b"outside")
    return str(outside)


def _dotdot(root: Path) -> str:
    (root / "sub").mkdir()
    (root / "x.dat").write_bytes(b"x")
    return str(root / "sub" / ".." / "x.dat")


def _symlink_out(root: Path) -> str:
    target = root.parent / "secret.dat"
    target.write_bytes(b"secret")
    (root / "link.dat").symlink_to(target)
    return str(root / "link.dat")


def _symlinked_dir_out(root: Path) -> str:
    (root.parent / "elsewhere").mkdir()
    (root.parent / "elsewhere" / "f.dat").write_bytes(b"f")
    (root / "obs").mkdir()
    (root / "obs" / "linked").symlink_to(root.parent / "elsewhere")
    return str(root / "obs")


def _fifo(root: Path) -> str:
    os.mkfifo(root / "pipe")
    return str(root / "pipe")


def _missing(root: Path) -> str:
    return str(root / "never_written.dat")


REJECTED_PATHS = {
    "outside the root": (_outside, "outside the location root"),
    "'..' component": (_dotdot, "contains '..'"),
    "symlink out of the root": (_symlink_out, "symlink leading out of the location root"),
    "symlinked directory out of the root": (_symlinked_dir_out, "symlink leading out"),
    "not a regular file": (_fifo, "not a regular file"),
    "missing file": (_missing, "does not exist"),
}


@pytest.mark.parametrize("case", list(REJECTED_PATHS))
def test_bad_path_rejects_the_whole_call_and_writes_nothing(session, root, case):
    make_bad, expected = REJECTED_PATHS[case]
    good = _simulate(root, files_per_unit=2)
    bad = make_bad(root)
    with pytest.raises(FilingError) as excinfo:
        register_raw_data_files(
            session, SOURCE, good[0].obs_unit, "pcam_280", [good[0].path, bad, good[1].path]
        )
    session.rollback()
    message = str(excinfo.value)
    assert expected in message
    assert "nothing was registered" in message
    assert "ccat/primecam_raw_data" in message
    assert _counts(session) == (0, 0, 0, 0, 0)


def test_unknown_location_is_rejected(session, root):
    files = _simulate(root, files_per_unit=1)
    with pytest.raises(LocationError, match="unknown location 'ccat/raw'"):
        register_raw_data_files(session, "ccat/raw", "obs", "pcam_280", [files[0].path])
    assert _counts(session) == (0, 0, 0, 0, 0)


def test_location_that_is_not_a_source_is_rejected(session, root):
    buffer_root = root.parent / "telescope_buffer"
    (buffer_root / "f.dat").write_bytes(b"f")
    with pytest.raises(FilingError) as excinfo:
        register_raw_data_files(
            session, "ccat/telescope_buffer", "obs", "pcam_280", [buffer_root / "f.dat"]
        )
    message = str(excinfo.value)
    assert "ccat/telescope_buffer is a BUFFER location" in message
    assert "SOURCE" in message
    assert _counts(session) == (0, 0, 0, 0, 0)


def test_symlink_inside_the_root_registers_the_target_once(session, root):
    (root / "data.dat").write_bytes(b"payload")
    (root / "alias.dat").symlink_to(root / "data.dat")
    result = register_raw_data_files(
        session, SOURCE, "obs", "pcam_280", [root / "alias.dat", root / "data.dat"]
    )
    assert result.registered == 1
    assert session.scalars(select(RawDataFile.relative_path)).all() == ["data.dat"]


def test_bulk_registration_issues_few_statements_independent_of_file_count(session, engine, root):
    def register(n: int, obs_unit: str) -> int:
        directory = root / obs_unit
        directory.mkdir()
        for i in range(n):
            (directory / f"f{i:05d}.dat").write_bytes(f"{obs_unit} {i}".encode())
        statements = []
        listener = lambda *args: statements.append(args[2])  # noqa: E731
        event.listen(engine, "before_cursor_execute", listener)
        try:
            result = register_raw_data_files(session, SOURCE, obs_unit, "pcam_280", [directory])
            session.commit()
        finally:
            event.remove(engine, "before_cursor_execute", listener)
        assert result.registered == n
        return len(statements)

    small = register(200, "obs_small")
    large = register(2_000, "obs_large")
    assert _count(session, RawDataFile) == 2_200
    assert _count(session, AuditLog) == 2_200
    print(f"statements: {small} for 200 files, {large} for 2,000 files")
    assert large < 40, f"{large} statements for 2,000 files"
    # 10x the files may cost a few more multi-row pages, never a statement per file.
    assert large - small < 15, (small, large)
