"""A code location's definitions before the ops DB holds a topology (a fresh clone's `make ui`,
a new deployment before `ccat topology apply`).

Then there is nothing to run: the code location loads one placeholder, an external asset
``<site>/setup_required`` (it cannot be materialized) whose description says what to do, with no
job, sensor or schedule; the reason is also logged. A code location that cannot reach its ops
DB, or whose site is missing from a topology, still fails to load: that is a fault to fix, not
a first start.
"""

from __future__ import annotations

import logging
from typing import Any

from dagster import AssetSpec, Definitions

from ccat_dagster.defs.definitions import build_site_definitions
from ccat_dagster.defs.topology import TopologyEmptyError

log = logging.getLogger(__name__)

#: the name of the placeholder asset of a site whose ops DB has no topology yet
SETUP_ASSET = "setup_required"


def setup_definitions(site_short_name: str, reason: str) -> Definitions:
    """The placeholder: one external asset whose description is ``reason`` and the next step."""
    return Definitions(
        assets=[
            AssetSpec(
                key=[site_short_name, SETUP_ASSET],
                description=(
                    f"Site {site_short_name!r} has nothing to run yet: {reason}. "
                    "The assets, jobs and sensors of the site appear after a reload."
                ),
                group_name="setup",
            )
        ]
    )


def definitions_or_setup(site_short_name: str, **kwargs: Any) -> Definitions:
    """What the code location of ``site_short_name`` loads: its definitions from the topology
    in the ops DB (``build_site_definitions(site_short_name, **kwargs)``), or the placeholder
    while the ops DB holds none."""
    try:
        return build_site_definitions(site_short_name, **kwargs)
    except TopologyEmptyError as exc:
        log.warning("code location %s loads no assets: %s", site_short_name, exc)
        return setup_definitions(site_short_name, str(exc))
