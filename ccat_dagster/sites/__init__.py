"""The Dagster code locations: one per site, all from ``ccat_dagster.sites.site``."""
