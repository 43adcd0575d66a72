"""The tests' own Dagster instance (``dagster_instance.py``): Dagster's SQLite storages on one
pooled engine each, their records the same as Dagster's; and no SQLite commit of the test
process waits for the disk (``fixtures/databases.py``)."""

from __future__ import annotations

import threading

import sqlalchemy as sa
from dagster import DagsterEventType, EventRecordsFilter, job, op

from ccat_dagster_tests.dagster_instance import (
    PooledConsolidatedSqliteEventLogStorage,
    PooledSqliteRunStorage,
    instance_for_test,
)


@op
def _step() -> int:
    return 1


@job
def _one_step():
    _step()


def test_runs_and_events_are_stored_through_one_engine_per_storage() -> None:
    with instance_for_test() as instance:
        runs, events = instance.run_storage, instance.event_log_storage
        assert isinstance(runs, PooledSqliteRunStorage)
        assert isinstance(events, PooledConsolidatedSqliteEventLogStorage)
        first = _one_step.execute_in_process(instance=instance)
        engines = (runs._pooled, events._pooled)
        second = _one_step.execute_in_process(instance=instance)
        assert first.success
        assert second.success
        assert (runs._pooled, events._pooled) == engines, "one engine for the instance's life"
        assert all(engines)

        seen: list[int] = []  # another thread gets a connection of its own from the pool
        reader = threading.Thread(target=lambda: seen.append(len(instance.get_runs())))
        reader.start()
        reader.join()
        assert seen == [2]
        success = instance.get_event_records(EventRecordsFilter(DagsterEventType.RUN_SUCCESS))
        assert {r.run_id for r in success} == {first.run_id, second.run_id}
    assert (runs._pooled, events._pooled) == (None, None), "disposed with the instance"


def test_sqlite_commits_of_the_test_process_do_not_wait_for_the_disk(tmp_path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'any.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 0  # OFF
    engine.dispose()
