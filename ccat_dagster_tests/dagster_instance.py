"""The Dagster instance of the in-process tests: Dagster's ``instance_for_test``, with its SQLite
run storage and event log kept open between uses, and the event log in one database.

Dagster's SQLite storages create a SQLAlchemy engine and open a new SQLite connection for every
read and write (``NullPool``), and the default event log a database with its schema and Alembic
stamp for every new run. Measured in one end-to-end test (52 s under the profiler): 3,500
engines and connections, 3,700 commits. The tests execute their runs one after another in one
process, so here the event log is one database (``ConsolidatedSqliteEventLogStorage``, WAL
mode), and run storage and event log each keep one engine with a connection pool for the
instance's lifetime. (Their commits do not wait for the disk, as no SQLite commit of the test
process does: ``fixtures/databases.py``.)

What the lifecycle does and records is the same: only how Dagster reaches its tables differs
(docs/performance.md, "The test suite's wall time"). The deployment tests and the commands the
tests start as processes use the instance config ``ccat instance init`` writes, as deployed; the
fault harness's commands use it with these storages (``use_pooled_storages``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml
from dagster import DagsterInstance
from dagster import instance_for_test as dagster_instance_for_test
from dagster._core.storage.event_log import (  # noqa: TID251 (test harness only)
    ConsolidatedSqliteEventLogStorage,
)
from dagster._core.storage.runs import SqliteRunStorage  # noqa: TID251 (test harness only)
from dagster._core.storage.sqlite import (  # noqa: TID251 (test harness only)
    SQLITE_BUSY_TIMEOUT_SECONDS,
)


class _PooledConnections:
    """What the two storages share: a lazily created pooled engine, disposed with them."""

    _conn_string: str
    _pooled: sa.Engine | None = None

    @contextmanager
    def _pooled_connection(self) -> Iterator[sa.Connection]:
        if self._pooled is None:
            self._pooled = sa.create_engine(
                self._conn_string, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS}
            )
        with self._pooled.connect() as conn, conn.begin():
            yield conn

    def dispose(self) -> None:
        if self._pooled is not None:
            self._pooled.dispose()
            self._pooled = None
        super().dispose()  # type: ignore[misc]  # the storage class after this one in the MRO


class PooledSqliteRunStorage(_PooledConnections, SqliteRunStorage):
    """``SqliteRunStorage`` on one pooled engine (tests only)."""

    @classmethod
    def from_config_value(cls, inst_data, config_value) -> PooledSqliteRunStorage:  # type: ignore[override]
        # SqliteRunStorage's own builds a SqliteRunStorage whatever the subclass
        return cls.from_local(inst_data=inst_data, **config_value)

    def connect(self) -> Iterator[sa.Connection]:  # type: ignore[override]
        return self._pooled_connection()


class PooledConsolidatedSqliteEventLogStorage(
    _PooledConnections, ConsolidatedSqliteEventLogStorage
):
    """``ConsolidatedSqliteEventLogStorage`` on one pooled engine (tests only)."""

    def _connect(self) -> Iterator[sa.Connection]:  # type: ignore[override]
        return self._pooled_connection()


def _storage(cls: type, base_dir: Path) -> dict[str, Any]:
    return {"module": __name__, "class": cls.__name__, "config": {"base_dir": str(base_dir)}}


def pooled_storages(home: Path) -> dict[str, Any]:
    """The instance config of the storages above in ``home``: the run storage where Dagster's
    SQLite default keeps it (``history/runs.db``), the event log in one database."""
    return {
        "run_storage": _storage(PooledSqliteRunStorage, home / "history"),
        "event_log_storage": _storage(PooledConsolidatedSqliteEventLogStorage, home),
    }


def use_pooled_storages(home: Path) -> None:
    """Make the instance config ``home/dagster.yaml`` (the embedded default that ``ccat
    instance init`` wrote) use the storages above, for the processes a test starts on it."""
    with open(home / "dagster.yaml", "a") as config:
        config.write("\n" + yaml.safe_dump(pooled_storages(home), sort_keys=False))


@contextmanager
def instance_for_test(overrides: Mapping[str, Any] | None = None) -> Iterator[DagsterInstance]:
    """``dagster.instance_for_test(overrides)`` on the storages above, in the instance's own
    (temporary) directory."""
    with tempfile.TemporaryDirectory(prefix="ccat-dagster-", ignore_cleanup_errors=True) as home:
        overrides = {**pooled_storages(Path(home)), **(overrides or {})}
        with dagster_instance_for_test(overrides=overrides, temp_dir=home) as instance:
            yield instance
