"""The Dagster instance of the in-process tests: Dagster's ``instance_for_test``, with the event
log in one SQLite database (``ConsolidatedSqliteEventLogStorage``) instead of one per run.

Dagster's default SQLite event log creates an engine for every event it stores, and for every
new run a database with its schema and Alembic stamp. The tests execute their runs one after
another in one process, so one database serves them all, in WAL mode, and an end-to-end test
spends less of its time storing events (docs/performance.md, "The test suite's wall time").
What the lifecycle does and records is the same: only where Dagster keeps its events differs.
The deployment tests and the commands the tests start as processes use the instance config
``ccat instance init`` writes, as deployed.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from dagster import DagsterInstance
from dagster import instance_for_test as dagster_instance_for_test


@contextmanager
def instance_for_test(overrides: Mapping[str, Any] | None = None) -> Iterator[DagsterInstance]:
    """``dagster.instance_for_test(overrides)`` with the event log in one database, in the
    instance's own (temporary) directory."""
    with tempfile.TemporaryDirectory(prefix="ccat-dagster-", ignore_cleanup_errors=True) as home:
        storage = {
            "event_log_storage": {
                "module": "dagster._core.storage.event_log",
                "class": "ConsolidatedSqliteEventLogStorage",
                "config": {"base_dir": home},
            }
        }
        overrides = {**storage, **(overrides or {})}
        with dagster_instance_for_test(overrides=overrides, temp_dir=home) as instance:
            yield instance
