"""Code location of site `us`: `dagster code-server start -m ccat_dagster.sites.us`."""

from ccat_dagster.defs.definitions import build_site_definitions

defs = build_site_definitions("us")
