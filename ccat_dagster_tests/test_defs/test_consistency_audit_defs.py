"""The consistency audit in Dagster: the per-site job records a ``consistency`` check on each
due location's asset, its schedule requests a run only when a location is due, a location that
does not answer is not audited (marked unavailable), and ``ccat run-until-idle`` leaves the
schedule alone (real instance, both ops-DB backends)."""

from __future__ import annotations

from dagster import (
    AssetKey,
    DagsterInstance,
    RunRequest,
    SkipReason,
    build_schedule_context,
)
from sqlalchemy import select

from ccat_dagster.defs.audit import NOT_RUN_UNTIL_IDLE
from ccat_dagster.defs.definitions import build_site_definitions
from ccat_dagster.lifecycle.common import names
from ccat_dagster_tests.dagster_instance import instance_for_test
from ccat_dagster_tests.pipeline_support import real_topology
from ccat_ops_db.models import AuditCursor, AuditFinding, DataLocation, LocationAvailability
from ccat_ops_db.session import session_scope
from ccat_ops_db.topology import apply_topology


def _setup(url, tmp_path, **policy):
    with session_scope(url) as session:
        apply_topology(session, real_topology(tmp_path, policy=policy))
    return build_site_definitions("us", ops_db_url=url)


def _schedule_tick(defs, instance: DagsterInstance):
    schedule_def = defs.resolve_schedule_def(names.consistency_audit_schedule("us"))
    repo = defs.get_repository_def()
    with build_schedule_context(
        instance=instance, repository_def=repo, resources=defs.resources
    ) as context:
        data = schedule_def.evaluate_tick(context)
    return schedule_def, data


def test_the_audit_job_records_a_consistency_check_per_due_location(ops_db_url, tmp_path):
    defs = _setup(ops_db_url, tmp_path)
    stray = tmp_path / "us" / "lta" / "packages" / "stray.tar"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"not in the catalogue")
    job = defs.resolve_job_def(names.consistency_audit_job("us"))
    with instance_for_test() as instance:
        schedule_def, data = _schedule_tick(defs, instance)
        assert schedule_def.tags.get(NOT_RUN_UNTIL_IDLE)
        assert [type(r) for r in data.run_requests or []] == [RunRequest]
        result = job.execute_in_process(instance=instance)
        assert result.success
        checks = {e.asset_key.to_user_string(): e for e in result.get_asset_check_evaluations()}
        _, again = _schedule_tick(defs, instance)
    assert set(checks) == {"us/buffer/raw_data_package", "us/lta/raw_data_package"}
    assert all(e.check_name == "consistency" for e in checks.values())
    assert checks["us/buffer/raw_data_package"].passed
    lta = checks["us/lta/raw_data_package"]
    # one object, dark: 100% of the slice, so the location looks wrong and nothing is done
    assert not lta.passed
    assert "looks wrong: 1 of 1 objects dark or lost" in (lta.description or "")
    assert lta.metadata["dark"].value == 1
    assert stray.exists()
    assert result.output_for_node(names.consistency_audit_op("us"))["anomalous"] == 1
    assert isinstance(again, SkipReason) or not again.run_requests  # nothing due for an hour


def test_a_location_that_does_not_answer_is_not_audited(ops_db_url, tmp_path):
    defs = _setup(ops_db_url, tmp_path)
    lta_root = tmp_path / "us" / "lta"
    lta_root.rename(tmp_path / "us" / "lta.away")  # the mount is gone
    job = defs.resolve_job_def(names.consistency_audit_job("us"))
    with instance_for_test() as instance:
        result = job.execute_in_process(instance=instance)
    assert result.success
    evaluations = result.get_asset_check_evaluations()
    keys = {(e.asset_key, e.check_name) for e in evaluations}
    assert (AssetKey(["us", "buffer", "raw_data_package"]), "consistency") in keys
    assert (AssetKey(["us", "lta", "raw_data_package"]), "location_available") in keys
    assert (AssetKey(["us", "lta", "raw_data_package"]), "consistency") not in keys
    with session_scope(ops_db_url) as session:
        lta = session.scalar(select(DataLocation).where(DataLocation.name == "lta").limit(1))
        rows = session.scalars(select(LocationAvailability)).all()
        assert any(not r.available and r.observer == "us" for r in rows)
        assert session.scalars(select(AuditFinding)).all() == []
        cursors = {c.data_location_id for c in session.scalars(select(AuditCursor))}
        assert lta is not None
        assert all(session.get_one(DataLocation, i).name == "buffer" for i in cursors), (
            "only the buffer was audited"
        )
