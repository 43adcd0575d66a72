"""Pipeline decisions without Dagster: bundling, round-robin routing, custom routes, retries."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

from sqlalchemy import select

from ccat_dagster.lifecycle.common.policy import Policy
from ccat_dagster.lifecycle.common.retries import handle_failure
from ccat_dagster.lifecycle.transfer.data_transfer_packages import plan_bundles
from ccat_dagster.lifecycle.transfer.routing import next_lta_site, primary_destination
from ccat_dagster_tests.pipeline_support import real_topology
from ccat_ops_db.models import (
    DataTransferRoute,
    PackageState,
    RawDataPackage,
    RouteType,
    Site,
    Status,
    utcnow,
)
from ccat_ops_db.session import session_scope
from ccat_ops_db.topology import apply_topology


def _pkg(size: int, age_minutes: float):
    return SimpleNamespace(size=size, created_at=utcnow() - timedelta(minutes=age_minutes))


def test_bundles_close_at_max_bytes_and_a_trickle_ships_after_max_wait():
    policy = Policy(data_transfer_package_max_bytes=100, data_transfer_package_max_wait_minutes=60)
    now = utcnow()
    full = [_pkg(40, 1), _pkg(40, 1), _pkg(40, 1)]
    bundles = plan_bundles(full, policy, now)
    assert [len(b) for b in bundles] == [2], "the third package waits for more data"
    assert plan_bundles([_pkg(10, 5)], policy, now) == []
    assert [len(b) for b in plan_bundles([_pkg(10, 61)], policy, now)] == [1]
    assert [len(b) for b in plan_bundles([_pkg(500, 0)], policy, now)] == [1], "oversized ships"


def _topology(session, tmp_path):
    apply_topology(session, real_topology(tmp_path))
    session.commit()
    return {s.short_name: s for s in session.scalars(select(Site))}


def test_round_robin_alternates_and_survives_a_restart(ops_db_url, session, tmp_path):
    sites = _topology(session, tmp_path)
    first = [next_lta_site(session, sites["ccat"]).short_name for _ in range(3)]
    session.commit()
    assert first == ["cologne", "us", "cologne"]
    # a new process: fresh session, the position comes from the database, not memory
    with session_scope(ops_db_url) as fresh:
        ccat = fresh.scalar(select(Site).where(Site.short_name == "ccat"))
        assert next_lta_site(fresh, ccat).short_name == "us"


def test_custom_route_overrides_round_robin(session, tmp_path):
    sites = _topology(session, tmp_path)
    session.add(
        DataTransferRoute(
            route_type=RouteType.DIRECT,
            origin_site_id=sites["ccat"].id,
            destination_site_id=sites["us"].id,
        )
    )
    session.flush()
    for _ in range(3):
        destination, kind = primary_destination(session, sites["ccat"])
        assert destination.qualified_name == "us/buffer"
        assert kind == "direct"


def test_retry_then_permanent_failure_marks_packages_failed(session, tmp_path):
    sites = _topology(session, tmp_path)
    source = next(loc for loc in sites["ccat"].locations if loc.name == "primecam_raw_data")
    from ccat_ops_db.models import ExecutedObsUnit, InstrumentModule

    obs, module = ExecutedObsUnit(name="o"), InstrumentModule(name="m")
    session.add_all([obs, module])
    session.flush()
    package = RawDataPackage(
        name="p",
        relative_path="raw_data_packages/p.tar",
        status=Status.IN_PROGRESS,
        source_location_id=source.id,
        executed_obs_unit_id=obs.id,
        instrument_module_id=module.id,
    )
    session.add(package)
    session.flush()
    outcomes = [
        handle_failure(
            session,
            package,
            "checksum mismatch",
            max_retries=3,
            entity_type="raw_data_package",
            packages=[package],
        )
        for _ in range(4)
    ]
    assert outcomes == [False, False, False, True]
    assert package.status == Status.FAILED
    assert package.state == PackageState.FAILED
    assert package.retry_count == 4
    assert package.failure_reason == "checksum mismatch"
