"""The run-failure sensor of each site gives the deletion claims of a failed cleanup run back at
once (daemon deployment), on both ops DBs."""

from __future__ import annotations

from dagster import build_run_status_sensor_context

from ccat_dagster.defs.dead_runs import build_release_claims_sensor
from ccat_dagster.defs.resources import OpsDbResource
from ccat_dagster.lifecycle.deletion import rules as d
from ccat_dagster.lifecycle.deletion.claims import claim_for_deletion
from ccat_dagster_tests import deletion_rules as matrix
from ccat_dagster_tests import factories as f
from ccat_dagster_tests.dagster_instance import instance_for_test
from ccat_dagster_tests.runner_support import always_fails
from ccat_ops_db.models import PhysicalCopy, PhysicalCopyStatus


def test_claims_of_a_failed_cleanup_run_are_released(ops_db_url, session, tmp_path):
    topo = f.make_topology(session, tmp_path, lta_sites=("cologne",))
    f.archived_package(topo)
    session.commit()
    with instance_for_test() as instance:
        result = always_fails.execute_in_process(instance=instance, raise_on_error=False)
        run = result.dagster_run
        ctx = d.rule_context(session)
        rows = matrix.find_deletable_raw_data_packages_at_source_buffers(session, ctx=ctx)
        [claimed] = claim_for_deletion(session, rows, run_id=run.run_id, ctx=ctx)
        session.commit()
        sensor = build_release_claims_sensor("ccat", always_fails)
        context = build_run_status_sensor_context(
            sensor_name=sensor.name,
            dagster_event=result.get_run_failure_event(),
            dagster_instance=instance,
            dagster_run=run,
            resources={"ops_db": OpsDbResource(url=ops_db_url)},
        ).for_run_failure()
        sensor(context)
    session.expire_all()
    copy = session.get(PhysicalCopy, claimed.copy_id)
    assert (copy.status, copy.claimed_by) == (PhysicalCopyStatus.PRESENT, None)
