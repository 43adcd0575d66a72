"""Thin Dagster wiring: partitions, assets, checks, jobs, sensors, schedules, resources."""

import warnings

from dagster import BetaWarning, PreviewWarning

# Partitioned asset checks (per-package lta_presence records) are a preview feature of Dagster
# 1.13 that we rely on deliberately; do not repeat the warning at every code-location load.
warnings.filterwarnings("ignore", category=PreviewWarning)
warnings.filterwarnings("ignore", category=BetaWarning)
