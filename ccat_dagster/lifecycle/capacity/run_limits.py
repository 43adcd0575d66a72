"""How many runs a site may have in flight at once: derived from the policy, so it never binds.

Each job of a site caps its own runs in flight (its sensor, and the pool of its op): transfers
at the policy's ``max_normal_transfers`` (lowered under buffer pressure), every other job at the
counts of ``OTHER_RUNS``. The Dagster run queue's limit per site (``ccat/site`` and
``dagster/code_location`` in ``dagster.yaml``, written by ``ccat instance init``) is their sum:
a fixed number lower than that (the former 4) would be reached first and make the configured
transfer limit unreachable, while the sum still holds back runs launched by hand or by a
backfill beyond what the jobs themselves allow.
"""

from __future__ import annotations

from ccat_ops_db.policy import Policy

#: site job (the part of the Dagster job name after ``{site}_``) -> runs it has in flight at
#: most: one per stage (its sensor's cap), staging jobs created by hand one at a time, one
#: restore drill and one consistency audit (their schedules wait while one is in flight), and
#: two cleanups (the schedule's and the buffer monitor's, which waits while one is in flight)
OTHER_RUNS: dict[str, int] = {
    "raw_data_package_creation": 1,
    "data_transfer_package_creation": 1,
    "data_transfer_unpacking": 1,
    "long_term_archive_transfer": 1,
    "lta_reverification": 1,
    "staging": 1,
    "create_staging_job": 1,
    "restore_drill": 1,
    "cleanup": 2,
    "consistency_audit": 1,
}


def site_run_limit(policy: Policy) -> int:
    """The run limit per site: every job's own cap added up, transfers at their normal limit."""
    return policy.max_normal_transfers + sum(OTHER_RUNS.values())
