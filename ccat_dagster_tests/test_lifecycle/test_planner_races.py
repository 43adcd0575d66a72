"""Two planners of the same scope at once (the daemon and a manual run, two daemons after a
failover) on SQLite and PostgreSQL: each race runs the same planner in two threads, each with
its own engine and session, over the same state, and the result must be exactly once.

A :class:`Rendezvous` wrapped around a function the planner calls between reading what is ready
and writing the new rows widens the race: each twin waits there until the other has read too.
With the planner lock the second twin never gets there before the first has committed, and the
first goes on alone after a moment; without it both write what they read (the bugs of issue 10:
empty duplicate packages, a bundle routed twice).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ccat_dagster.defs import stages
from ccat_dagster.lifecycle.audit import run as audit_run
from ccat_dagster.lifecycle.capacity import availability
from ccat_dagster.lifecycle.ingest import raw_data_packages as rdps
from ccat_dagster.lifecycle.staging import execution as staging
from ccat_dagster.lifecycle.staging import requests as jobs
from ccat_dagster.lifecycle.transfer import data_transfer_packages as dtps
from ccat_dagster.lifecycle.transfer import routing
from ccat_dagster.storage.factory import StorageRegistry
from ccat_dagster_tests import factories as f
from ccat_dagster_tests.pipeline_support import file_simulated_data, real_topology
from ccat_ops_db.models import (
    AuditCursor,
    AuditLog,
    DataLocation,
    DataTransfer,
    DataTransferPackage,
    DataTransferPackagePhysicalCopy,
    DataTransferRoute,
    LocationAvailability,
    PhysicalCopyStatus,
    RawDataFile,
    RawDataFilePhysicalCopy,
    RawDataPackage,
    RawDataPackagePhysicalCopy,
    RouteType,
    Site,
    StagingJob,
    Status,
)
from ccat_ops_db.session import make_engine, session_scope
from ccat_ops_db.topology import apply_topology

PATIENCE_SECONDS = 1.0


class Rendezvous:
    """Holds each caller until ``parties`` callers arrived, or ``patience`` seconds passed (a
    twin held at the planner lock does not arrive: the first then goes on alone). It only
    widens the window; no assertion depends on how long anything took."""

    def __init__(self, parties: int = 2, patience: float = PATIENCE_SECONDS) -> None:
        self.parties, self.patience = parties, patience
        self.arrived = 0
        self._cond = threading.Condition()

    def __call__(self) -> None:
        with self._cond:
            self.arrived += 1
            self._cond.notify_all()
            self._cond.wait_for(lambda: self.arrived >= self.parties, timeout=self.patience)

    def around(self, fn: Callable) -> Callable:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            self()
            return fn(*args, **kwargs)

        return wrapped


def race(url: str, *planners: Callable[[Session], Any]) -> list[Any]:
    """Run the planners at once, one thread, engine and session each; re-raise any error."""
    barrier = threading.Barrier(len(planners))
    results: list[Any] = [None] * len(planners)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        engine = make_engine(url)
        try:
            with Session(engine, expire_on_commit=False) as session:
                barrier.wait()
                results[i] = planners[i](session)
        except BaseException as exc:  # noqa: BLE001 - reported to the test below
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(planners))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def _location(session: Session, site: str, name: str) -> DataLocation:
    return session.scalar(
        select(DataLocation)
        .join(Site, Site.id == DataLocation.site_id)
        .where(Site.short_name == site, DataLocation.name == name)
    )


def _site(session: Session, short_name: str) -> Site:
    return session.scalar(select(Site).where(Site.short_name == short_name))


@pytest.fixture
def filed(ops_db_url, tmp_path):
    """Three sites on local disks; 2 obs units x 2 modules x 3 files filed at the SOURCE; one
    RawDataPackage per bundle (so several bundles are routed)."""
    topology = real_topology(tmp_path, policy={"data_transfer_package_max_bytes": 1})
    with session_scope(ops_db_url) as session:
        apply_topology(session, topology)
    with session_scope(ops_db_url) as session:
        file_simulated_data(session, tmp_path, n_obs_units=2, files_per_unit=3, max_size=20_000)
    return ops_db_url


def _package_all(url: str) -> None:
    with session_scope(url) as session, StorageRegistry(local_site="ccat") as storages:
        source = _location(session, "ccat", "primecam_raw_data")
        for package in rdps.create_raw_data_packages_for_location(session, source):
            assert rdps.build_raw_data_package(session, package, storage_for=storages.get).ok


def _bundle_all(url: str) -> None:
    _package_all(url)
    with session_scope(url) as session, StorageRegistry(local_site="ccat") as storages:
        buffer = _location(session, "ccat", "telescope_buffer")
        for dtp in dtps.create_data_transfer_packages(session, buffer):
            assert dtps.build_data_transfer_package(session, dtp, storage_for=storages.get).ok


def _count(session: Session, model) -> int:
    return session.scalar(select(func.count()).select_from(model))


# --------------------------------------------------------------------------- packaging


def _assert_packaged_once(url: str) -> None:
    with session_scope(url) as session:
        packages = session.scalars(select(RawDataPackage)).all()
        files = session.scalars(select(RawDataFile)).all()
        per_package = Counter(rdf.raw_data_package_id for rdf in files)
        assert len(packages) == 4, f"one package per obs unit x module, got {len(packages)}"
        assert all(rdf.raw_data_package_id is not None for rdf in files)
        assert all(p.file_count == per_package[p.id] == 3 for p in packages), "no empty package"


def test_two_packaging_planners_make_each_package_once(filed, monkeypatch):
    rendezvous = Rendezvous()
    monkeypatch.setattr(rdps, "package_name", rendezvous.around(rdps.package_name))

    def plan(session: Session):
        source = _location(session, "ccat", "primecam_raw_data")
        return rdps.create_raw_data_packages_for_location(session, source)

    made = race(filed, plan, plan)

    assert sorted(len(m) for m in made) == [0, 4]
    _assert_packaged_once(filed)


def test_a_packaging_twin_that_slips_past_the_lock_creates_no_empty_package(filed, monkeypatch):
    """Belt and braces: the files are claimed only while unpackaged, and a package whose claim
    got no file is not created."""
    monkeypatch.setattr(rdps, "planner_lock", lambda *a, **k: nullcontext())
    rendezvous = Rendezvous()
    monkeypatch.setattr(rdps, "package_name", rendezvous.around(rdps.package_name))

    def plan(session: Session):
        source = _location(session, "ccat", "primecam_raw_data")
        return rdps.create_raw_data_packages_for_location(session, source)

    race(filed, plan, plan)

    _assert_packaged_once(filed)


def test_packaging_refuses_a_package_without_files(filed):
    """An empty package (left by the bug, or by any other way) is never written or archived."""
    with session_scope(filed) as session, StorageRegistry(local_site="ccat") as storages:
        source = _location(session, "ccat", "primecam_raw_data")
        real = rdps.create_raw_data_packages_for_location(session, source)[0]
        empty = RawDataPackage(
            name="ccat.empty.duplicate",
            relative_path=rdps.raw_data_package_key("ccat.empty.duplicate"),
            source_location_id=source.id,
            executed_obs_unit_id=real.executed_obs_unit_id,
            instrument_module_id=real.instrument_module_id,
        )
        session.add(empty)
        session.commit()

        outcome = rdps.build_raw_data_package(session, empty, storage_for=storages.get)

        assert not outcome.ok
        assert outcome.permanent
        assert "no files" in outcome.error
        session.refresh(empty)
        assert empty.status == Status.FAILED
        assert "nothing to archive" in empty.failure_reason
        buffer = _location(session, "ccat", "telescope_buffer")
        assert not (f.object_path(buffer, empty.relative_path)).exists()
        assert _count(session, RawDataPackagePhysicalCopy) == 0


# --------------------------------------------------------------------------- bundling


def _assert_bundled_once(url: str) -> None:
    with session_scope(url) as session:
        packages = session.scalars(select(RawDataPackage)).all()
        bundles = session.scalars(select(DataTransferPackage)).all()
        assert all(p.data_transfer_package_id is not None for p in packages)
        assert len(bundles) == 4, "max_bytes=1: one package per bundle, each bundle once"
        assert all(len(b.raw_data_packages) == 1 for b in bundles), "no empty bundle"


def test_two_bundling_planners_bundle_each_package_once(filed, monkeypatch):
    _package_all(filed)
    rendezvous = Rendezvous()
    monkeypatch.setattr(dtps, "plan_bundles", rendezvous.around(dtps.plan_bundles))

    def plan(session: Session):
        return dtps.create_data_transfer_packages(
            session, _location(session, "ccat", "telescope_buffer")
        )

    made = race(filed, plan, plan)

    assert sorted(len(m) for m in made) == [0, 4]
    _assert_bundled_once(filed)


def test_a_bundling_twin_that_slips_past_the_lock_makes_no_partial_bundle(filed, monkeypatch):
    """Belt and braces: packages are bundled only while in no bundle, and a bundle that did not
    get all of its packages is not made."""
    _package_all(filed)
    monkeypatch.setattr(dtps, "planner_lock", lambda *a, **k: nullcontext())
    rendezvous = Rendezvous()
    monkeypatch.setattr(dtps, "plan_bundles", rendezvous.around(dtps.plan_bundles))

    def plan(session: Session):
        return dtps.create_data_transfer_packages(
            session, _location(session, "ccat", "telescope_buffer")
        )

    race(filed, plan, plan)

    _assert_bundled_once(filed)


# --------------------------------------------------------------------------- routing


def _assert_routed_once(url: str) -> None:
    with session_scope(url) as session:
        bundles = session.scalars(select(DataTransferPackage)).all()
        assert bundles
        for dtp in bundles:
            assert len(dtp.data_transfers) == 1, f"{dtp.name}: one primary route"
        spread = Counter(
            t.destination_location.site.short_name for t in session.scalars(select(DataTransfer))
        )
        assert spread == {"cologne": len(bundles) // 2, "us": len(bundles) // 2}, spread


def test_two_primary_routing_planners_route_each_bundle_once(filed, monkeypatch):
    _bundle_all(filed)
    rendezvous = Rendezvous()
    monkeypatch.setattr(
        routing, "primary_destination", rendezvous.around(routing.primary_destination)
    )

    def plan(session: Session):
        return routing.plan_primary_transfers(session, _site(session, "ccat"))

    made = race(filed, plan, plan)

    assert sorted(len(m) for m in made) == [0, 4]
    _assert_routed_once(filed)


def test_bundle_sensor_and_bundle_run_route_a_bundle_once(filed, monkeypatch):
    """Bug 6: the bundle sensor's plan and a bundle run (which routes right after building)
    both routed the same DataTransferPackage."""
    _package_all(filed)
    with session_scope(filed) as session:
        buffer = _location(session, "ccat", "telescope_buffer")
        dtp_id = dtps.create_data_transfer_packages(session, buffer)[0].id
    built = threading.Event()

    def build_then_signal(*args: Any, **kwargs: Any):
        outcome = dtps.build_data_transfer_package(*args, **kwargs)
        built.set()
        return outcome

    monkeypatch.setattr(stages, "build_data_transfer_package", build_then_signal)
    rendezvous = Rendezvous()
    monkeypatch.setattr(
        routing, "primary_destination", rendezvous.around(routing.primary_destination)
    )

    def bundle_run(session: Session):
        with StorageRegistry(local_site="ccat") as storages:
            report = stages.BUNDLE.execute(session, str(dtp_id), storages.get, "run-1")
        assert report.outcome.ok

    def sensor_tick(session: Session):
        built.wait()  # a tick that comes while the run routes the bundle it has just built
        stages.BUNDLE.plan(session, _site(session, "ccat"))

    race(filed, bundle_run, sensor_tick)

    with session_scope(filed) as session:
        routes = session.scalars(
            select(DataTransfer).where(DataTransfer.data_transfer_package_id == dtp_id)
        ).all()
        assert len(routes) == 1, [t.destination_location.site.short_name for t in routes]


def _arrived_at_cologne(url: str) -> None:
    """Every bundle routed to cologne, pulled and unpacked there (secondary routes are next)."""
    _bundle_all(url)
    with session_scope(url) as session:
        origin = _location(session, "ccat", "telescope_buffer")
        cologne = _location(session, "cologne", "buffer")
        for dtp in session.scalars(select(DataTransferPackage)):
            session.add(
                DataTransfer(
                    data_transfer_package_id=dtp.id,
                    origin_location_id=origin.id,
                    destination_location_id=cologne.id,
                    route_kind=routing.PRIMARY,
                    status=Status.COMPLETED,
                    unpack_status=Status.COMPLETED,
                )
            )
            session.add(
                DataTransferPackagePhysicalCopy(
                    data_transfer_package_id=dtp.id, data_location_id=cologne.id, size=dtp.size
                )
            )


def _assert_secondary_once(url: str) -> None:
    with session_scope(url) as session:
        us = _location(session, "us", "buffer")
        for dtp in session.scalars(select(DataTransferPackage)):
            onwards = [t for t in dtp.data_transfers if t.destination_location_id == us.id]
            assert len(onwards) == 1, f"{dtp.name}: sent on to us once"


def test_two_secondary_routing_planners_send_each_bundle_on_once(filed, monkeypatch):
    _arrived_at_cologne(filed)
    rendezvous = Rendezvous()
    monkeypatch.setattr(routing, "_buffer_of", rendezvous.around(routing._buffer_of))

    race(filed, routing.plan_secondary_transfers, routing.plan_secondary_transfers)

    _assert_secondary_once(filed)


def _relayed_via_cologne(url: str) -> None:
    """Every bundle went first to cologne on a RELAY route ccat -> us via cologne."""
    _arrived_at_cologne(url)
    with session_scope(url) as session:
        for t in session.scalars(select(DataTransfer)):
            t.route_kind = routing.RELAY
        session.add(
            DataTransferRoute(
                route_type=RouteType.RELAY,
                origin_site_id=_site(session, "ccat").id,
                destination_site_id=_site(session, "us").id,
                relay_site_id=_site(session, "cologne").id,
            )
        )


def test_two_relay_onward_planners_send_a_relayed_bundle_on_once(filed, monkeypatch):
    _relayed_via_cologne(filed)
    rendezvous = Rendezvous()
    monkeypatch.setattr(routing, "_buffer_of", rendezvous.around(routing._buffer_of))

    race(filed, routing.plan_relay_onward_transfers, routing.plan_relay_onward_transfers)

    _assert_secondary_once(filed)


def test_relay_onward_and_secondary_planners_send_a_relayed_bundle_on_once(filed, monkeypatch):
    """Cologne is an LTA site: the secondary planner also sends what arrived there on to us."""
    _relayed_via_cologne(filed)
    rendezvous = Rendezvous()
    monkeypatch.setattr(routing, "_buffer_of", rendezvous.around(routing._buffer_of))

    race(filed, routing.plan_relay_onward_transfers, routing.plan_secondary_transfers)

    _assert_secondary_once(filed)


def test_round_robin_hands_out_every_slot_once_to_concurrent_callers(filed):
    """next_lta_site without the planner lock: two callers, 10 slots each, each in its own
    transaction; exactly 10 slots per LTA site."""

    def take(session: Session) -> list[str]:
        ccat = _site(session, "ccat")
        picked = []
        for _ in range(10):
            picked.append(routing.next_lta_site(session, ccat).short_name)
            session.commit()
        return picked

    picked = race(filed, take, take)

    assert Counter(picked[0] + picked[1]) == {"cologne": 10, "us": 10}


# --------------------------------------------------------------------------- staging


def test_two_staging_runs_of_one_package_record_it_once(ops_db_url, session, tmp_path, monkeypatch):
    from ccat_dagster_tests.test_lifecycle.test_staging import archived

    topo = f.make_topology(session, tmp_path, lta_sites=("cologne", "us"))
    session.commit()
    pkg = archived(topo, n_files=3)
    job = jobs.create_staging_job(session, location="processing", packages=[pkg.name])
    package_id, location_id = pkg.id, topo.processing.id
    rendezvous = Rendezvous()
    monkeypatch.setattr(staging, "_record_staged", rendezvous.around(staging._record_staged))

    def stage(s: Session):
        return staging.stage_raw_data_package(
            s,
            s.get(RawDataPackage, package_id),
            s.get(DataLocation, location_id),
            storage_for=f.local_storage_for,
            run_id="race",
        )

    outcomes = race(ops_db_url, stage, stage)

    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    session.expire_all()
    copies = session.scalars(
        select(RawDataFilePhysicalCopy).where(
            RawDataFilePhysicalCopy.data_location_id == location_id
        )
    ).all()
    assert len(copies) == 3
    assert all(c.status == PhysicalCopyStatus.PRESENT for c in copies)
    package_copies = session.scalars(
        select(RawDataPackagePhysicalCopy).where(
            RawDataPackagePhysicalCopy.data_location_id == location_id
        )
    ).all()
    assert [c.status for c in package_copies] == [PhysicalCopyStatus.STAGED]
    assert session.get(StagingJob, job.id).status == Status.COMPLETED
    completed = session.scalar(
        select(func.count())
        .select_from(AuditLog)
        .where(
            AuditLog.entity_type == "staging_job",
            AuditLog.entity_id == job.id,
            AuditLog.new_status == "COMPLETED",
        )
    )
    assert completed == 1


# --------------------------------------------------------------------------- executors' copies


def test_two_runs_recording_the_same_copy_share_one_row(filed, monkeypatch):
    """Two Dagster instances over one ops DB may execute the same item (neither sees the other's
    run in flight): recording its copy twice is one row, not an IntegrityError."""
    from ccat_dagster.lifecycle.common import copies

    _package_all(filed)
    with session_scope(filed) as session:
        package_id = session.scalars(select(RawDataPackage.id)).first()
    rendezvous = Rendezvous()
    original = copies.find_copy

    def find_then_wait(*args: Any, **kwargs: Any):
        found = original(*args, **kwargs)
        if found is None:  # both have looked and found no row yet
            rendezvous()
        return found

    monkeypatch.setattr(copies, "find_copy", find_then_wait)

    def record(session: Session):
        package = session.get(RawDataPackage, package_id)
        copy = copies.upsert_copy(
            session,
            RawDataPackagePhysicalCopy,
            "raw_data_package_id",
            package.id,
            _location(session, "us", "buffer"),
            size=package.size,
            checksum=package.checksum,
            algorithm=package.checksum_algorithm,
            reason="test: recorded by a twin run",
        )
        session.commit()
        return copy.id

    ids = race(filed, record, record)

    assert ids[0] == ids[1]
    with session_scope(filed) as session:
        us = _location(session, "us", "buffer")
        rows = session.scalars(
            select(RawDataPackagePhysicalCopy).where(
                RawDataPackagePhysicalCopy.data_location_id == us.id
            )
        ).all()
        assert [c.status for c in rows] == [PhysicalCopyStatus.PRESENT]
        created = session.scalar(
            select(func.count())
            .select_from(AuditLog)
            .where(AuditLog.entity_type == "physical_copy", AuditLog.entity_id == rows[0].id)
        )
        assert created == 1, "the copy's creation is audited once"


# --------------------------------------------------------------------------- consistency audit


def test_two_audits_of_one_location_take_turns(filed, monkeypatch):
    """The audit schedule's run and the ``consistency`` check executed by a backfill run (one
    per partition, several at once) audit the same location. The first audit of a location
    creates its cursor: two at once both created it (an IntegrityError failed one run, seen in
    the deployment test), and both scanned the same slice and would act on the same findings.
    They take turns: the second scans the slice after the first one's."""
    rendezvous = Rendezvous()
    monkeypatch.setattr(audit_run, "scan_slice", rendezvous.around(audit_run.scan_slice))

    def audit(session: Session):
        source = _location(session, "ccat", "primecam_raw_data")
        with StorageRegistry(local_site="ccat") as storages:
            return audit_run.audit_location(session, source, storages.get(source))

    reports = race(filed, audit, audit)

    assert all(r.passed and r.listed == 12 and r.wrapped for r in reports)
    assert sorted(r.pass_number for r in reports) == [2, 3], "two passes, one after the other"
    with session_scope(filed) as session:
        source = _location(session, "ccat", "primecam_raw_data")
        cursor = session.get_one(AuditCursor, source.id)
        assert (cursor.pass_number, cursor.last_key) == (3, "")


# --------------------------------------------------------------------------- availability


def test_two_runs_failing_on_one_location_record_it_one_after_the_other(filed, monkeypatch):
    """Runs that fail on one location at once (it went down under all of them) each record it.
    The first record of a location from a site creates its availability row: two at once both
    created it (an IntegrityError failed the second run in its error handler) and both audited
    the change to unavailable. One after the other: one change, two failures counted."""
    rendezvous = Rendezvous()
    monkeypatch.setattr(availability, "probe_delay", rendezvous.around(availability.probe_delay))

    def fail(session: Session):
        lta = _location(session, "us", "lta")
        view = availability.mark_unavailable(session, lta, observer="us", reason="link down")
        session.commit()
        return view

    race(filed, fail, fail)

    with session_scope(filed) as session:
        lta = _location(session, "us", "lta")
        row = session.get_one(LocationAvailability, (lta.id, "us"))
        assert (row.available, row.consecutive_failures) == (False, 2)
        changes = session.scalars(
            select(AuditLog.new_status).where(
                AuditLog.entity_type == availability.ENTITY, AuditLog.entity_id == lta.id
            )
        ).all()
        assert changes == [availability.UNAVAILABLE]
