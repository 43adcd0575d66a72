"""Code location of site `ccat`: `dagster code-server start -m ccat_dagster.sites.ccat`."""

from ccat_dagster.defs.definitions import build_site_definitions

defs = build_site_definitions("ccat")
