"""Code location of site `cologne`: `dagster code-server start -m ccat_dagster.sites.cologne`."""

from ccat_dagster.defs.definitions import build_site_definitions

defs = build_site_definitions("cologne")
