"""Deletion claims of failed cleanup runs are released at once (daemon deployment).

A cleanup run that died (its worker killed: the code server marks it failed; never started:
Dagster's run monitoring fails it) may hold deletion claims. This run-failure sensor gives them
back as soon as the run is FAILED instead of after the stale-claim timeout
(``lifecycle.deletion.claims.release_claims_of_dead_runs``). ``ccat run-until-idle`` does the same
itself for the runs it finds dead.
"""

from dagster import (
    DefaultSensorStatus,
    JobDefinition,
    RunFailureSensorContext,
    SensorDefinition,
    run_failure_sensor,
)

from ccat_dagster.defs.resources import OpsDbResource
from ccat_dagster.lifecycle.common import names
from ccat_dagster.lifecycle.deletion.claims import release_claims_of_dead_runs


def build_release_claims_sensor(
    site_short_name: str, cleanup_job: JobDefinition
) -> SensorDefinition:
    @run_failure_sensor(
        name=names.release_claims_sensor(site_short_name),
        monitored_jobs=[cleanup_job],
        default_status=DefaultSensorStatus.STOPPED,
        description=(
            f"Release at once the deletion claims of a failed {cleanup_job.name} run (scheduled "
            "copies back to their status, in-progress ones claimable again)."
        ),
    )
    def release_claims(context: RunFailureSensorContext, ops_db: OpsDbResource) -> None:
        run = context.dagster_run
        with ops_db.session() as session:
            released = release_claims_of_dead_runs(
                session, [run.run_id], reason=f"run {run.run_id} of {run.job_name} failed"
            )
            session.commit()
        if released:
            context.log.info(
                f"run {run.run_id}: {released.returned} claimed copies given back, "
                f"{released.abandoned} in-progress deletions claimable again"
            )

    return release_claims
