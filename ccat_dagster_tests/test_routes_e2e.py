"""Route overrides end to end: the topology's DIRECT, CUSTOM and RELAY routes drive real bundles
over real disks through every stage, then the cleanup. Runs on SQLite and PostgreSQL.

The topology is pipeline_support's (ccat SOURCE + buffer, cologne and us archive sites) plus a
relay site ``hub`` with only a BUFFER and a second buffer ``us/intake``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import create_engine, event, select
from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.transfer.routing import plan_relay_onward_transfers
from ccat_dagster_tests.dagster_instance import instance_for_test
from ccat_dagster_tests.pipeline_support import (
    drive,
    let_retention_elapse,
    real_topology,
    setup_pipeline,
)
from ccat_ops_db.models import (
    DataLocation,
    DataTransfer,
    DataTransferPackage,
    PackageState,
    PhysicalCopy,
    PhysicalCopyStatus,
    RawDataPackage,
    RoundRobinState,
    Site,
    Status,
)
from ccat_ops_db.session import session_scope

pytestmark = pytest.mark.slow

S = PhysicalCopyStatus
POLICY = {"retention_period_minutes": 5, "data_transfer_package_max_bytes": 1}


def _run(url: str, tmp_path: Path, route: dict, *, cleanup: bool = False) -> None:
    topology = real_topology(tmp_path, policy=POLICY, routes=[route])
    setup_pipeline(url, topology, tmp_path, n_obs_units=2, files_per_unit=2, max_size=40_000)
    with instance_for_test() as instance:
        report = drive(url, instance, include_schedules=cleanup)
        assert not report.failed_runs
        if cleanup:
            let_retention_elapse(url)
            report = drive(url, instance)
            assert not report.failed_runs


def _hops(session) -> dict[str, list[tuple[str, str, str]]]:
    """bundle name -> (origin, destination, route kind) of each of its transfers, in order."""
    out: dict[str, list[tuple[str, str, str]]] = {}
    for t in session.scalars(select(DataTransfer).order_by(DataTransfer.id)):
        assert t.status == Status.COMPLETED
        out.setdefault(t.data_transfer_package.name, []).append(
            (t.origin_location.qualified_name, t.destination_location.qualified_name, t.route_kind)
        )
    return out


def _copies(session, kind: type | None = None) -> dict[tuple[str, str], Counter]:
    """(copy type, location) -> Counter of statuses."""
    out: dict[tuple[str, str], Counter] = {}
    rows = session.execute(
        select(PhysicalCopy.type, Site.short_name, DataLocation.name, PhysicalCopy.status)
        .join(DataLocation, DataLocation.id == PhysicalCopy.data_location_id)
        .join(Site, Site.id == DataLocation.site_id)
    )
    for copy_type, site, location, status in rows:
        out.setdefault((copy_type.value, f"{site}/{location}"), Counter())[status] += 1
    return out


def _all_archived_everywhere(session) -> list[RawDataPackage]:
    packages = session.scalars(select(RawDataPackage)).all()
    assert len(packages) == 4
    assert all(p.state == PackageState.ARCHIVED for p in packages)
    copies = _copies(session)
    for lta in ("cologne/lta", "us/lta"):
        assert copies[("raw_data_package", lta)] == Counter({S.PRESENT: 4}), lta
    return list(packages)


def test_direct_route_sends_every_bundle_to_the_destination_without_round_robin(
    ops_db_url, tmp_path
):
    _run(ops_db_url, tmp_path, {"origin": "ccat", "type": "DIRECT", "destination": "us"})
    with session_scope(ops_db_url) as session:
        _all_archived_everywhere(session)
        hops = _hops(session)
        assert len(hops) == 4
        for name, legs in hops.items():
            assert legs[0] == ("ccat/telescope_buffer", "us/buffer", "direct"), name
            # the secondary route still brings it to the other archive
            assert legs[1:] == [("us/buffer", "cologne/buffer", "secondary")], name
        assert session.scalar(select(RoundRobinState)) is None, "round-robin never advanced"


def test_custom_route_sends_every_bundle_to_the_named_location(ops_db_url, tmp_path):
    route = {"origin": "ccat", "type": "CUSTOM", "destination": "us", "location": "intake"}
    _run(ops_db_url, tmp_path, route)
    with session_scope(ops_db_url) as session:
        _all_archived_everywhere(session)
        hops = _hops(session)
        assert len(hops) == 4
        for name, legs in hops.items():
            assert legs[0] == ("ccat/telescope_buffer", "us/intake", "custom"), name
            assert legs[1:] == [("us/intake", "cologne/buffer", "secondary")], name
        # the packages were unpacked in the named buffer, not the site's primary one
        copies = _copies(session)
        assert copies[("raw_data_package", "us/intake")][S.PRESENT] == 4
        assert ("raw_data_package", "us/buffer") not in copies
        assert session.scalar(select(RoundRobinState)) is None


def test_relay_route_passes_through_the_relay_buffer_and_its_copies_are_cleaned(
    ops_db_url, tmp_path
):
    route = {"origin": "ccat", "type": "RELAY", "relay": "hub", "destination": "us"}
    _run(ops_db_url, tmp_path, route, cleanup=True)
    with session_scope(ops_db_url) as session:
        packages = _all_archived_everywhere(session)
        hops = _hops(session)
        assert len(hops) == 4
        for name, legs in hops.items():
            assert legs == [
                ("ccat/telescope_buffer", "hub/buffer", "relay"),
                ("hub/buffer", "us/buffer", "primary"),
                ("us/buffer", "cologne/buffer", "secondary"),
            ], name

        copies = _copies(session)
        # the source site's bundle and package copies went once the destination held the data
        assert copies[("data_transfer_package", "ccat/telescope_buffer")] == Counter({S.DELETED: 4})
        assert copies[("raw_data_package", "ccat/telescope_buffer")] == Counter({S.DELETED: 4})
        # the copies left at the relay site's buffer went too
        assert copies[("data_transfer_package", "hub/buffer")] == Counter({S.DELETED: 4})
        assert ("raw_data_package", "hub/buffer") not in copies, "a relay does not unpack"
        # the archives keep everything; the raw files at the source went after the retention
        assert copies[("raw_data_file", "ccat/primecam_raw_data")] == Counter({S.DELETED: 8})
        bundles = session.scalars(select(DataTransferPackage)).all()
    for bundle in bundles:
        for where in ("ccat/buffer", "hub/buffer"):
            assert not (tmp_path / where / bundle.relative_path).exists(), where
    for package in packages:
        assert (tmp_path / "us" / "lta" / package.relative_path).exists()
        assert (tmp_path / "cologne" / "lta" / package.relative_path).exists()


def _statements_of(url: str, call) -> tuple[object, list[str]]:
    statements: list[str] = []

    def record(conn, cursor, statement, *args):
        statements.append(statement)

    engine = create_engine(url)
    event.listen(engine, "before_cursor_execute", record)
    try:
        with Session(engine) as session:
            return call(session), statements
    finally:
        engine.dispose()


def test_relay_onward_planning_skips_hops_already_sent_on(ops_db_url, tmp_path):
    """Its cost does not grow with the history: a hop sent on is not read again."""
    route = {"origin": "ccat", "type": "RELAY", "relay": "hub", "destination": "us"}
    _run(ops_db_url, tmp_path, route)
    created, statements = _statements_of(ops_db_url, plan_relay_onward_transfers)
    assert created == []
    # one query for the hops (none left), none per hop (its route, its destination)
    assert not [s for s in statements if "data_transfer_route" in s], statements


def test_relay_through_an_archive_site_archives_there_and_goes_on(ops_db_url, tmp_path):
    """``ccat -> RELAY via cologne -> us``: the relay site is an archive site, so it unpacks and
    archives the bundle on the way; the copies are cleaned by the archive-site rules."""
    route = {"origin": "ccat", "type": "RELAY", "relay": "cologne", "destination": "us"}
    _run(ops_db_url, tmp_path, route, cleanup=True)
    with session_scope(ops_db_url) as session:
        _all_archived_everywhere(session)
        for name, legs in _hops(session).items():
            assert legs[0] == ("ccat/telescope_buffer", "cologne/buffer", "relay"), name
            assert legs[1][:2] == ("cologne/buffer", "us/buffer"), name
            assert len(legs) == 2, name
        copies = _copies(session)
        for kind in ("data_transfer_package", "raw_data_package"):
            for where in ("ccat/telescope_buffer", "cologne/buffer", "us/buffer"):
                assert copies[(kind, where)] == Counter({S.DELETED: 4}), (kind, where)
