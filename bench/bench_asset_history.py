"""The UI's asset page of a partitioned asset with materialization history, on PostgreSQL.

``bench_scale_dagster.py`` times the asset page query with partition keys but an empty event
log. Here, for each size N: a scratch PostgreSQL Dagster database (dagster-postgres, the
production instance config ``ccat instance init`` writes), N partition keys in Cologne's
archive asset ``cologne/lta/raw_data_package`` and one ASSET_MATERIALIZATION event per key,
written with the event log storage's batch insert (``store_event_batch``, 1,000 events per
call; one run id per 200 packages, the archive stage's batch), then the GraphQL queries the
asset page makes, against an out-of-process code location of Cologne:

- partition health: partition keys, ``assetPartitionStatuses`` and ``partitionStats``;
- latest materialization: ``assetMaterializations(limit: 1)``;
- events tab: ``assetEventHistory(limit: 100)`` (materializations, failures, observations);
- one partition's history: ``assetMaterializations(partitions: [key])``.

Each query is timed cold (the first after loading: Dagster computes and caches the asset's
partition status from the event log) and warm (best of 3), first with the keys alone (the
baseline: what ``bench_scale_dagster.py`` measures), then with the history. The ops DB and the
Dagster database are scratch PostgreSQL databases ``bench_launch_*``, dropped at the end.

    .venv/bin/python bench/bench_asset_history.py [--packages 10000,100000]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dagster import (
    AssetKey,
    AssetMaterialization,
    DagsterEvent,
    DagsterEventType,
    DagsterInstance,
    EventLogEntry,
)
from dagster._core.events import StepMaterializationData  # noqa: TID251 (bench: bulk events)

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_deletion import migrate_with_topology
from bench_run_launch import location_roots
from scratch import scratch_database

from ccat_dagster.defs.definitions import build_site_definitions
from ccat_dagster.defs.partitions import partition_set_name
from ccat_dagster.instance import write_instance_config
from ccat_dagster.runner import open_instance
from ccat_dagster_tests.deployment_support import postgres_url_for_dagster

PATH = ["cologne", "lta", "raw_data_package"]
KEY = AssetKey(PATH)
JOB = "cologne_long_term_archive_transfer"
EVENTS_PER_CALL = 1_000
PACKAGES_PER_RUN = 200  # the archive stage's batch size
QUERIES = {
    "partition health": """
query PartitionHealth($path: [String!]!) {
  assetNodeOrError(assetKey: {path: $path}) {
    ... on AssetNode {
      id
      partitionKeysByDimension { name type partitionKeys }
      assetPartitionStatuses {
        __typename
        ... on DefaultPartitionStatuses {
          materializedPartitions materializingPartitions failedPartitions
        }
      }
      partitionStats { numMaterialized numPartitions numFailed numMaterializing }
    }
  }
}
""",
    "latest materialization": """
query Latest($path: [String!]!) {
  assetNodeOrError(assetKey: {path: $path}) {
    ... on AssetNode {
      assetMaterializations(limit: 1) {
        runId partition timestamp metadataEntries { label }
      }
    }
  }
}
""",
    "events (100)": """
query Events($path: [String!]!) {
  assetOrError(assetKey: {path: $path}) {
    ... on Asset {
      assetEventHistory(
        limit: 100
        eventTypeSelectors: [MATERIALIZATION, FAILED_TO_MATERIALIZE, OBSERVATION]
      ) {
        cursor
        results {
          __typename
          ... on MaterializationEvent { runId partition timestamp metadataEntries { label } }
        }
      }
    }
  }
}
""",
    "one partition": """
query OnePartition($path: [String!]!, $partition: String!) {
  assetOrError(assetKey: {path: $path}) {
    ... on Asset {
      assetMaterializations(partitions: [$partition]) { runId partition timestamp }
    }
  }
}
""",
}


def package(g: int) -> str:
    return f"pkg_{g}"


def add_keys(instance: DagsterInstance, packages: int) -> float:
    """One partition key per package (10,000 per call); seconds."""
    names = [package(g) for g in range(1, packages + 1)]
    t = time.perf_counter()
    for i in range(0, packages, 10_000):
        instance.add_dynamic_partitions(partition_set_name(KEY), names[i : i + 10_000])
    return time.perf_counter() - t


def store_history(instance: DagsterInstance, packages: int) -> float:
    """One materialization per key, in batches of EVENTS_PER_CALL; seconds."""
    t = time.perf_counter()
    for i in range(0, packages, EVENTS_PER_CALL):
        store_history_range(instance, i + 1, min(i + EVENTS_PER_CALL, packages))
    return time.perf_counter() - t


def store_history_range(instance: DagsterInstance, first: int, last: int) -> None:
    """The materializations of packages ``first`` to ``last``, in one batch insert."""
    now = time.time()
    batch = []
    for g in range(first, last + 1):
        run_id = f"{(g - 1) // PACKAGES_PER_RUN:032x}"
        materialization = AssetMaterialization(
            asset_key=KEY, partition=package(g), metadata={"bytes": 1_000_000 + g}
        )
        event = DagsterEvent(
            event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value,
            job_name=JOB,
            step_key=f"{JOB}_batch",
            event_specific_data=StepMaterializationData(materialization),
        )
        batch.append(
            EventLogEntry(
                error_info=None,
                level=logging.INFO,
                user_message="",
                run_id=run_id,
                timestamp=now - (last - g),
                step_key=f"{JOB}_batch",
                job_name=JOB,
                dagster_event=event,
            )
        )
    instance.event_log_storage.store_event_batch(batch)


def cologne_definitions():
    """The code location the GraphQL context loads (out of process)."""
    return build_site_definitions("cologne", ops_db_url=os.environ["CCAT_BENCH_HISTORY_OPS_DB_URL"])


def time_queries(
    workspace, packages: int, only: str | None = None
) -> dict[str, tuple[float, float]]:
    """name -> (cold, best warm) seconds of every query (or ``only`` that one), printed. Each
    query gets a new request context, as each HTTP request to the webserver does (a context
    caches what it loaded, the partition keys among them)."""
    from dagster_graphql.test.utils import execute_dagster_graphql

    variables = {"path": PATH, "partition": package(packages // 2)}
    timings: dict[str, tuple[float, float]] = {}
    for name, query in QUERIES.items():
        if only and name != only:
            continue
        used = {k: v for k, v in variables.items() if f"${k}" in query}
        times, result = [], None
        for _ in range(4):
            t = time.perf_counter()
            result = execute_dagster_graphql(workspace.create_request_context(), query, used)
            times.append(time.perf_counter() - t)
        assert result is not None
        if result.errors:
            print(f"    {name}: error {result.errors[0]}")
            continue
        timings[name] = (times[0], min(times[1:]))
        print(
            f"    {name}: cold {times[0]:.2f} s, warm {min(times[1:]):.2f} s"
            f"{describe(name, result.data)}"
        )
    return timings


def describe(name: str, data: Mapping[str, Any]) -> str:
    if name == "partition health":
        node = data["assetNodeOrError"]
        return f" ({node['partitionStats']})"
    if name == "events (100)":
        return f" ({len(data['assetOrError']['assetEventHistory']['results'])} events)"
    if name == "latest materialization":
        latest = data["assetNodeOrError"]["assetMaterializations"]
        return f" (partition {latest[0]['partition']})" if latest else " (none)"
    return f" ({len(data['assetOrError']['assetMaterializations'])} events)"


def run(packages: int) -> None:
    from dagster_graphql.test.utils import define_out_of_process_workspace, execute_dagster_graphql

    with (
        scratch_database("bench_launch_history_dagster") as dagster_url,
        tempfile.TemporaryDirectory(prefix="bench_launch_") as tmp,
    ):
        home = Path(tmp, "dagster_home")
        os.environ["DAGSTER_PG_URL"] = postgres_url_for_dagster(dagster_url)
        write_instance_config(home)
        instance = open_instance(home)
        try:
            keys_s = add_keys(instance, packages)
            print(
                f"\n== {packages:,} partitions of {'/'.join(PATH)} (PostgreSQL): keys added in "
                f"{keys_s:.1f} s"
            )
            with define_out_of_process_workspace(
                __file__, "cologne_definitions", instance
            ) as workspace:
                # the code location is loaded
                execute_dagster_graphql(workspace.create_request_context(), "{ version }")
                print("  baseline, no materialization yet:")
                before = time_queries(workspace, packages)
                events_s = store_history(instance, packages)
                print(
                    f"  one materialization per key stored in {events_s:.1f} s "
                    f"({packages / events_s:,.0f}/s, store_event_batch of {EVENTS_PER_CALL:,}):"
                )
                after = time_queries(workspace, packages)
                # what every archive run does: one more key, its materialization; Dagster's id
                # of a dynamic partitions definition is a hash of its keys, so the cached status
                # no longer applies and the next view rebuilds it from the whole event log
                instance.add_dynamic_partitions(partition_set_name(KEY), [package(packages + 1)])
                store_history_range(instance, packages + 1, packages + 1)
                print("  after one more key and its materialization (an archive run):")
                time_queries(workspace, packages, only="partition health")
            for name in (n for n in QUERIES if n in after and n in before):
                print(
                    f"  {name}: with history / without, warm: "
                    f"{after[name][1] / max(before[name][1], 1e-3):.1f}"
                )
            print(f"  load average {os.getloadavg()[0]:.1f}")
        finally:
            instance.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--packages", default="10000,100000")
    args = parser.parse_args()
    logging.getLogger("dagster").setLevel(logging.WARNING)
    with location_roots(), scratch_database("bench_launch_history_ops") as ops_url:
        migrate_with_topology(ops_url)
        os.environ["CCAT_BENCH_HISTORY_OPS_DB_URL"] = ops_url
        os.environ["CCAT_OPS_DB_URL"] = ops_url
        for n in args.packages.split(","):
            run(int(n))


if __name__ == "__main__":
    main()
