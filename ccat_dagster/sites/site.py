"""The code location of one site, selected by the site's name: adding a site to the topology
needs no Python file, only the name in the configuration.

- A code server selects the site with ``CCAT_SITE``:
  ``CCAT_SITE=cologne dagster code-server start -m ccat_dagster.sites.site --location-name
  cologne`` loads ``defs`` (one code server per site, each with its own environment).
- A workspace that loads several sites from one environment (``workspace.yaml`` of ``make ui``,
  which has no per-entry environment) selects each with the attribute instead:
  ``python_module: {module_name: ccat_dagster.sites.site, attribute: cologne}``; run workers are
  started with the same attribute, so they build the same site.

Both are lazy (Dagster's ``@definitions``): the topology and the settings are read when Dagster
loads (or reloads) the code location, not at import, so a reload picks up ``ccat topology
apply``. Tests call ``defs()`` or ``site_definitions(name)()``.
"""

from __future__ import annotations

from collections.abc import Callable

from dagster import Definitions, definitions

from ccat_dagster.defs.settings import Settings
from ccat_dagster.defs.setup import definitions_or_setup
from ccat_dagster.defs.topology import TopologyEmptyError, load_topology_snapshot
from ccat_dagster.run_workers import fork_run_workers_from_preloaded_server

# In the code server that loads this module, each run worker is forked from a process that has
# imported it already, instead of importing Dagster and the site's code anew (run_workers.py).
fork_run_workers_from_preloaded_server()


class SiteNotSelectedError(RuntimeError):
    """``CCAT_SITE`` is not set where the code location of one site is loaded."""


def site_definitions(site: str) -> Callable[..., Definitions]:
    """The lazily built code location of ``site``."""

    @definitions
    def site_defs() -> Definitions:
        return definitions_or_setup(site)

    return site_defs


@definitions
def defs() -> Definitions:
    """The code location of the site ``CCAT_SITE`` names."""
    settings = Settings.from_env()
    if not settings.site:
        try:
            active = ", ".join(s.short_name for s in load_topology_snapshot().sites)
        except TopologyEmptyError:
            active = "none yet"
        raise SiteNotSelectedError(
            "CCAT_SITE is not set: set it to the short name of the site this code server runs "
            f"at (active sites in the ops DB: {active}), or select the site with the workspace "
            "entry's `attribute: <site>`"
        )
    # An unknown or inactive name is an error naming the active sites (TopologySnapshot.site);
    # an ops DB without a topology loads the placeholder (defs/setup.py).
    return definitions_or_setup(settings.site, settings=settings)


def __getattr__(name: str) -> Callable[..., Definitions]:
    """``attribute: <site>`` in a workspace entry (and ``-a <site>``) selects that site. Private
    and dunder names stay ordinary missing attributes, so imports and tools behave as usual."""
    if name.startswith("_") or not name.isidentifier():
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return site_definitions(name)
