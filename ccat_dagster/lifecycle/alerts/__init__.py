"""Alerts: which conditions of the ops DB are incidents, their durable state (open, throttled,
resolved), the messages and the channels that carry them. No Dagster here: the sensors of
``ccat_dagster.defs.alerts`` call these functions (docs/operations.md: alerts and dashboards)."""
