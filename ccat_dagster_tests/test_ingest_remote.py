"""A SOURCE on an instrument computer: its host is not the host the telescope's code runs on
($CCAT_HOST), so it is reached over the real sshd even from its own site. Detection is one
remote ``find`` per tick, checksums are computed on that host in batches (no byte of a file
crosses the network to file it), and hostile file names (spaces, quotes, ``$(...)``, a leading
'-', a newline, a backslash) are filed, packaged, archived and cleaned like any other."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from dagster import SensorResult, SkipReason, build_sensor_context
from sqlalchemy import select

from ccat_dagster.defs.definitions import build_site_definitions
from ccat_dagster.lifecycle.ingest.detection import IngestCursor, IngestError, ingest_tick
from ccat_dagster.lifecycle.ingest.filing import FilingError, register_listed_files
from ccat_dagster.lifecycle.ingest.source_tree import RemoteSourceTree, source_tree
from ccat_dagster.lifecycle.summary import packages_missing_from_ltas
from ccat_dagster.storage.factory import LOCAL_HOST_ENV, StorageRegistry
from ccat_dagster.storage.ssh import SSHStorage
from ccat_dagster_tests.dagster_instance import instance_for_test
from ccat_dagster_tests.pipeline_support import (
    MARKER_INGEST,
    availability,
    drive,
    drop_simulated_data,
    let_retention_elapse,
    real_topology,
)
from ccat_ops_db.ingest_spec import IngestSpec
from ccat_ops_db.models import (
    DiskDataLocation,
    IngestFinding,
    PackageState,
    PhysicalCopy,
    PhysicalCopyStatus,
    RawDataFile,
    RawDataPackage,
)
from ccat_ops_db.session import session_scope
from ccat_ops_db.topology import apply_topology

pytestmark = pytest.mark.slow

#: names an instrument (or a person) may write; none may reach a shell as code
HOSTILE_NAMES = (
    "with space.dat",
    'it\'s "quoted".dat',
    "$(touch PWNED).dat",
    "`touch PWNED2`.dat",
    "-leading-dash.dat",
    "new\nline.dat",
    "back\\slash.dat",
    "semi;colon&amp.dat",
)


@pytest.fixture
def remote_source(ops_db_url, tmp_path, sshd_server, monkeypatch):
    """The SOURCE ccat/primecam_raw_data on the sshd's host; this process is "telescope-ops"."""
    monkeypatch.setenv("CCAT_SSH_KEY_FILE", sshd_server.key_file)
    monkeypatch.setenv(LOCAL_HOST_ENV, "telescope-ops")
    topology = real_topology(
        tmp_path,
        ingest=MARKER_INGEST,
        source_host=sshd_server,
        policy={"retention_period_minutes": 5},
    )
    with session_scope(ops_db_url) as session:
        apply_topology(session, topology)
    return ops_db_url, tmp_path / "ccat" / "src"


def _write_hostile(src: Path, obs_unit: str = "obs_hostile", module: str = "pcam_280ghz"):
    directory = src / obs_unit / module
    directory.mkdir(parents=True)
    written = {}
    for i, name in enumerate(HOSTILE_NAMES):
        data = f"{i}:{name}".encode() * (100 + i)
        (directory / name).write_bytes(data)
        written[f"{obs_unit}/{module}/{name}"] = hashlib.sha256(data).hexdigest()
    return directory, written


class _Counting:
    """Counts the remote commands and streamed reads of an SSHStorage (the real one runs)."""

    def __init__(self, monkeypatch):
        self.commands: list[str] = []
        self.reads: list[str] = []
        run, read = SSHStorage.run_command, SSHStorage.open_read

        def counted_run(storage, command, **kwargs):
            self.commands.append(command)
            return run(storage, command, **kwargs)

        def counted_read(storage, key):
            self.reads.append(key)
            return read(storage, key)

        monkeypatch.setattr(SSHStorage, "run_command", counted_run)
        monkeypatch.setattr(SSHStorage, "open_read", counted_read)


def _tick(url, cursor=None):
    with session_scope(url) as session, StorageRegistry(local_site="ccat") as storages:
        source = session.scalars(
            select(DiskDataLocation).where(DiskDataLocation.name == "primecam_raw_data")
        ).one()
        tree = source_tree(source, storages.get(source))
        assert isinstance(tree, RemoteSourceTree), "its own site reaches it over SSH"
        spec = IngestSpec.model_validate(MARKER_INGEST)
        return ingest_tick(session, source, spec, cursor or IngestCursor(), tree=tree)


def test_remote_source_is_filed_with_checksums_computed_on_its_host(remote_source, monkeypatch):
    url, src = remote_source
    directory, written = _write_hostile(src)
    (src / "stray file.txt").write_bytes(b"matches no pattern")
    unfinished = src / "obs_later" / "pcam_350ghz"
    unfinished.mkdir(parents=True)
    (unfinished / "still writing.dat").write_bytes(b"x" * 1000)
    counting = _Counting(monkeypatch)

    first = _tick(url)
    assert first.registered == 0, "no marker yet: nothing is complete"
    assert first.waiting == len(HOSTILE_NAMES) + 1
    assert first.unmatched == ["stray file.txt"]

    (directory / ".complete").write_bytes(b"")
    second = _tick(url, first.cursor)
    assert second.registered == len(HOSTILE_NAMES)
    assert second.unmatched == [], "reported once, not on every tick"
    assert second.waiting == 1

    with session_scope(url) as session:
        filed = {f.relative_path: f.checksum for f in session.scalars(select(RawDataFile))}
    assert filed == written, "every hostile name filed, with the checksum of its bytes"
    assert counting.reads == [], "the checksums were computed on the host, not by pulling"
    assert not list(src.rglob("PWNED*")), "no name ran as a command on the host"
    assert not Path("PWNED").exists()

    # an idle tick: one remote command (the listing of what changed), nothing filed
    counting.commands.clear()
    idle = _tick(url, second.cursor)
    assert (idle.registered, idle.news) == (0, False)
    assert len(counting.commands) <= 2, "\n".join(c[-120:] for c in counting.commands)
    assert all("sha256sum" not in c for c in counting.commands)


def test_remote_source_root_missing_is_a_clear_error_and_files_nothing(remote_source, tmp_path):
    url, src = remote_source
    src.rename(tmp_path / "unmounted")
    with pytest.raises(IngestError, match=r"cannot enter the root .*src.* mounted"):
        _tick(url)
    with session_scope(url) as session:
        assert session.scalars(select(RawDataFile)).all() == []
        assert session.scalars(select(IngestFinding)).all() == []


def test_remote_source_reaches_every_lta_and_is_cleaned_by_the_rules(remote_source):
    """Dropped on the instrument computer with its marker: filed, packaged over SSH,
    archived in both LTAs, and once the retention elapsed the SOURCE files are deleted there
    by the rules, hostile names included. Nobody typed a command."""
    url, src = remote_source
    complete = drop_simulated_data(src.parent.parent, n_obs_units=2, max_size=80_000)
    directory, written = _write_hostile(src)
    (directory / ".complete").write_bytes(b"")

    with instance_for_test() as instance:
        report = drive(url, instance)
        assert not report.failed_runs, report.failed_runs
        with session_scope(url) as session:
            packages = session.scalars(select(RawDataPackage)).all()
            assert packages
            assert all(p.state == PackageState.ARCHIVED for p in packages)
            assert packages_missing_from_ltas(session) == []
            filed = {f.relative_path for f in session.scalars(select(RawDataFile))}
        assert filed == {f.path.relative_to(src).as_posix() for f in complete} | set(written)

        let_retention_elapse(url)
        report = drive(url, instance)
        assert not report.failed_runs, report.failed_runs

    with session_scope(url) as session:
        statuses = {
            c.raw_data_file.relative_path: c.status
            for c in session.scalars(
                select(PhysicalCopy).where(PhysicalCopy.raw_data_file_id.is_not(None))
            )
            if c.data_location.location_type.value == "SOURCE"
        }
    assert set(statuses.values()) == {PhysicalCopyStatus.DELETED}, statuses
    assert not [p for p in src.rglob("*") if p.is_file() and p.name != ".complete"]


def test_a_file_that_grew_while_hashed_on_its_host_is_not_filed(remote_source):
    """The size listed and the size once hashed on the host differ: the instrument is still
    writing. Nothing of the group is filed; the next tick takes it once it is complete."""
    url, src = remote_source
    directory = src / "obs_grow" / "pcam_280ghz"
    directory.mkdir(parents=True)
    (directory / "a.dat").write_bytes(b"a" * 5000)
    with session_scope(url) as session, StorageRegistry(local_site="ccat") as storages:
        source = session.scalars(
            select(DiskDataLocation).where(DiskDataLocation.name == "primecam_raw_data")
        ).one()
        tree = source_tree(source, storages.get(source))
        with pytest.raises(FilingError, match="changed size while being registered"):
            register_listed_files(
                session,
                source,
                "obs_grow",
                "pcam_280ghz",
                [("obs_grow/pcam_280ghz/a.dat", 4000)],
                tree.checksums,
            )
        session.rollback()
        assert session.scalars(select(RawDataFile)).all() == []


def test_an_instrument_computer_that_does_not_answer_is_shown_unavailable(
    remote_source, sshd_server
):
    """The ingest sensor meets a host that is down: the SOURCE is marked unavailable from the
    telescope site (ccat status, the UI; probed with backoff), the tick is skipped, nothing is
    filed; when the host answers again the next tick files what is there."""
    url, src = remote_source
    directory, written = _write_hostile(src)
    (directory / ".complete").write_bytes(b"")
    defs = build_site_definitions("ccat", ops_db_url=url)
    sensor = defs.resolve_sensor_def("ccat_primecam_raw_data_ingest_sensor")
    with instance_for_test() as instance:
        sshd_server.stop_daemon()
        try:
            with build_sensor_context(
                instance=instance, definitions=defs, resources=defs.resources
            ) as context:
                result = sensor(context)
        finally:
            sshd_server.start_daemon()
        assert isinstance(result, SkipReason)
        assert "ccat/primecam_raw_data" in (result.skip_message or "")
        assert availability(url) == {("ccat/primecam_raw_data", "ccat"): False}
        with session_scope(url) as session:
            assert session.scalars(select(RawDataFile)).all() == []

        with build_sensor_context(
            instance=instance, definitions=defs, resources=defs.resources
        ) as context:
            result = sensor(context)
        assert isinstance(result, SensorResult)
    with session_scope(url) as session:
        filed = {f.relative_path for f in session.scalars(select(RawDataFile))}
    assert filed == set(written)
