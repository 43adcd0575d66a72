"""Whether the Dagster instance's run limit per site still fits the policy.

``ccat instance init`` derives the limit from the policy (``lifecycle.capacity.run_limits``), but
``dagster.yaml`` is only read at start: after ``max_normal_transfers`` is raised in the topology
the old file would let the run queue, not the policy, bind again. The transfer sensor says so in
its log, with the fix, instead of silently running fewer transfers.
"""

from __future__ import annotations

from dagster import DagsterInstance

from ccat_dagster.lifecycle.capacity.run_limits import site_run_limit
from ccat_ops_db.policy import Policy

#: the run tags whose limit per unique value is a limit per site
SITE_TAGS = ("ccat/site", "dagster/code_location")


def site_run_limit_problem(instance: DagsterInstance, policy: Policy) -> str | None:
    """The operator message when a per-site run limit of the instance is below what the policy
    needs; None when it fits (or the instance has no run queue: ``ccat run-until-idle``)."""
    queue = instance.get_concurrency_config().run_queue_config
    if queue is None:
        return None
    needed = site_run_limit(policy)
    for limit in queue.tag_concurrency_limits:
        value = limit.get("value")
        per_site = isinstance(value, dict) and value.get("applyLimitPerUniqueValue")
        if limit.get("key") in SITE_TAGS and per_site and int(limit["limit"]) < needed:
            return (
                f"dagster.yaml limits runs per site ({limit['key']}) to {limit['limit']}, below "
                f"the {needed} the policy needs (max_normal_transfers "
                f"{policy.max_normal_transfers}): transfers are held back by the run queue; run "
                "`ccat instance init --force` and restart the daemon"
            )
    return None
