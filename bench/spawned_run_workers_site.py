"""The baseline code location of ``bench_run_launch.py --run-workers spawned``: the site module
as deployed, with Dagster's own start of run workers put back. Each run worker is then a new
``spawn``-ed interpreter that imports Dagster and the site's code itself, which is what
``ccat_dagster/run_workers.py`` replaces with a fork of a preloaded helper.

    CCAT_SITE=cologne PYTHONPATH=bench dagster code-server start -m spawned_run_workers_site
"""

from __future__ import annotations

import sys

from ccat_dagster.run_workers import restore_spawned_run_workers
from ccat_dagster.sites.site import defs

__all__ = ["defs"]

# in the code server only (a run worker imports this module too, without a server class)
if "dagster._grpc.server" in sys.modules:
    restore_spawned_run_workers()
