"""Bug (found by the fault suite, twin_cleanup): two ``ccat`` commands opening a new SQLite
DAGSTER_HOME at the same moment failed ("table already exists", "database is locked") or
stamped the schema version twice, after which every command failed ("more than one head
present"). Six processes open a fresh home at once, half through the CLI's path and half
through ``open_instance`` (as a test and its child run-until-idle do), four times over (forked
after the imports, so they race on the open alone)."""

from __future__ import annotations

import multiprocessing
import sqlite3

from ccat_dagster.cli.pipeline import dagster_instance
from ccat_dagster.instance import write_instance_config
from ccat_dagster.runner import open_instance

PROCESSES = 6
TRIALS = 4


def _open(home: str, through_cli: bool, barrier, results) -> None:
    import os

    os.environ["DAGSTER_HOME"] = home
    barrier.wait()
    try:
        with dagster_instance() if through_cli else open_instance(home) as instance:
            instance.get_runs(limit=1)
        results.put("ok")
    except Exception as exc:  # noqa: BLE001 - reported to the test
        results.put(repr(exc))


def test_commands_opening_a_new_home_at_once_all_succeed(tmp_path):
    context = multiprocessing.get_context("fork")
    for trial in range(TRIALS):
        home = tmp_path / f"home-{trial}"
        write_instance_config(home)
        barrier, results = context.Barrier(PROCESSES), context.Queue()
        processes = [
            context.Process(target=_open, args=(str(home), i % 2 == 0, barrier, results))
            for i in range(PROCESSES)
        ]
        for p in processes:
            p.start()
        for p in processes:
            p.join(120)
        outcomes = [results.get(timeout=5) for _ in processes]
        assert outcomes == ["ok"] * PROCESSES, outcomes
        with sqlite3.connect(home / "schedules" / "schedules.db") as db:
            (heads,) = db.execute("SELECT count(*) FROM alembic_version").fetchone()
        assert heads == 1
