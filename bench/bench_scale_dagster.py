"""Scale of the catalogue and of Dagster: 10k and 100k synthetic packages.

For each size: a scratch PostgreSQL ops DB with the copies of bench_deletion.py (per package 8
raw files, copies at the source buffer, the Cologne buffer and archive by state, one bundle per
10 packages), one partition key per package in Cologne's archive asset (a temporary SQLite
Dagster instance), then

- partitions: adding the keys (10,000 per call) and reading the set;
- sensor ticks: every sensor and schedule of every site evaluated once, as ``run_until_idle``
  and the daemon do (run requests counted, never executed);
- cleanup: ``plan_deletions`` at the Cologne buffer (what one cleanup step plans) and
  ``has_deletable`` (the cleanup schedule's question);
- GraphQL: the UI's asset page query of ``cologne/lta/raw_data_package`` (partition keys and
  partition stats) against an out-of-process code location of the site.

    .venv/bin/python bench/bench_scale_dagster.py [--packages 10000,100000]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import sqlalchemy as sa
from dagster import AssetKey, build_schedule_context, build_sensor_context, instance_for_test
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_deletion import bulk_load, make_topology
from scratch import scratch_database

from ccat_dagster.defs.definitions import build_site_definitions
from ccat_dagster.defs.partitions import partition_set_name
from ccat_dagster.lifecycle.deletion.plan import has_deletable, plan_deletions
from ccat_ops_db.migrate import upgrade
from ccat_ops_db.models import DataLocation
from ccat_ops_db.session import make_engine

KEY = AssetKey(["cologne", "lta", "raw_data_package"])
SEQUENCED = (
    "data_transfer_package",
    "raw_data_package",
    "raw_data_file",
    "executed_obs_unit",
    "instrument_module",
)
SITES = ("ccat", "cologne", "us")
ASSET_PAGE = """
query AssetPage($path: [String!]!) {
  assetNodeOrError(assetKey: {path: $path}) {
    ... on AssetNode {
      partitionKeys
      partitionStats { numMaterialized numPartitions numFailed numMaterializing }
      assetPartitionStatuses {
        ... on DefaultPartitionStatuses { materializedPartitions failedPartitions }
      }
    }
  }
}
"""


def tick_all(defs, instance) -> tuple[float, float, str, int]:
    """Total and slowest tick (s), the slowest one's name, run requests."""
    repo = defs.get_repository_def()
    total, slowest, name, requests = 0.0, 0.0, "", 0
    for sensor_def in repo.sensor_defs:
        start = time.perf_counter()
        try:
            with build_sensor_context(
                instance=instance,
                definitions=defs,
                sensor_name=sensor_def.name,
                resources=defs.resources,
            ) as context:
                data = sensor_def.evaluate_tick(context)
            requests += len(data.run_requests or [])
        except Exception as exc:  # noqa: BLE001 - a tick that fails still took its time
            print(f"    {sensor_def.name}: {type(exc).__name__}: {str(exc)[:100]}")
        elapsed = time.perf_counter() - start
        total += elapsed
        if elapsed > slowest:
            slowest, name = elapsed, sensor_def.name
    for schedule_def in repo.schedule_defs:
        start = time.perf_counter()
        try:
            with build_schedule_context(
                instance=instance, repository_def=repo, resources=defs.resources
            ) as context:
                data = schedule_def.evaluate_tick(context)
            requests += len(data.run_requests or [])
        except Exception as exc:  # noqa: BLE001
            print(f"    {schedule_def.name}: {type(exc).__name__}: {str(exc)[:100]}")
        elapsed = time.perf_counter() - start
        total += elapsed
        if elapsed > slowest:
            slowest, name = elapsed, schedule_def.name
    return total, slowest, name, requests


def graphql_asset_page(instance, url: str) -> float | str:
    try:
        from dagster_graphql.test.utils import (
            define_out_of_process_context,
            execute_dagster_graphql,
        )
    except ImportError as exc:
        return f"not measured ({exc})"
    os.environ["CCAT_BENCH_SCALE_OPS_DB_URL"] = url
    with define_out_of_process_context(__file__, "cologne_definitions", instance) as context:
        execute_dagster_graphql(context, ASSET_PAGE, {"path": list(KEY.path)})  # warm
        start = time.perf_counter()
        result = execute_dagster_graphql(context, ASSET_PAGE, {"path": list(KEY.path)})
        elapsed = time.perf_counter() - start
    if result.errors:
        return f"error: {result.errors[0]}"
    node = result.data["assetNodeOrError"]
    print(f"    asset page: {len(node.get('partitionKeys') or [])} keys, {node['partitionStats']}")
    return elapsed


def cologne_definitions():
    """The code location the GraphQL context loads (out of process)."""
    return build_site_definitions("cologne", ops_db_url=os.environ["CCAT_BENCH_SCALE_OPS_DB_URL"])


#: the location roots of bench_deletion's topology (created for the run, so that no sensor
#: waits for a missing mount), removed afterwards when this bench made them
ROOTS = [Path("/tmp", site) for site in SITES]


def run(packages: int) -> None:
    made = [root for root in ROOTS if not root.exists()]
    for site, names in {
        "ccat": ("primecam_raw_data", "telescope_buffer"),
        "cologne": ("buffer", "lta"),
        "us": ("buffer", "lta"),
    }.items():
        for name in names:
            Path("/tmp", site, name).mkdir(parents=True, exist_ok=True)
    try:
        _run(packages)
    finally:
        for root in made:
            shutil.rmtree(root, ignore_errors=True)


def _run(packages: int) -> None:
    with scratch_database("ccat_bench_scale") as url:
        upgrade(url)
        os.environ["CCAT_OPS_DB_URL"] = url
        engine = make_engine(url)
        with Session(engine) as session, instance_for_test() as instance:
            loc = make_topology(session)
            t = time.perf_counter()
            bulk_load(session, loc, packages)
            # bulk_load gives explicit ids: move the sequences past them, so that a sensor
            # creating a bundle or a package gets a fresh id
            for table in SEQUENCED:
                session.execute(
                    sa.text(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"(SELECT max(id) FROM {table}))"
                    )
                )
            session.commit()
            print(f"\n== {packages:,} packages, loaded in {time.perf_counter() - t:.1f} s")
            names = [f"pkg_{g}" for g in range(1, packages + 1)]
            t = time.perf_counter()
            for i in range(0, len(names), 10_000):
                instance.add_dynamic_partitions(partition_set_name(KEY), names[i : i + 10_000])
            add_s = time.perf_counter() - t
            t = time.perf_counter()
            keys = instance.get_dynamic_partitions(partition_set_name(KEY))
            print(
                f"  partitions: {len(keys):,} keys in {partition_set_name(KEY)}: added in "
                f"{add_s:.2f} s (10,000 per call), read in {time.perf_counter() - t:.2f} s"
            )
            for site in SITES:
                defs = build_site_definitions(site, ops_db_url=url)
                total, slowest, name, requests = tick_all(defs, instance)
                print(
                    f"  ticks of {site}: all sensors and schedules {total:.2f} s, slowest "
                    f"{name} {slowest:.2f} s, {requests} run requests"
                )
            buffer = session.get_one(DataLocation, loc["cologne/buffer"])
            t = time.perf_counter()
            plan = plan_deletions(session, location=buffer, observer="cologne")
            plan_s = time.perf_counter() - t
            t = time.perf_counter()
            has_deletable(session, [buffer], observer="cologne")
            has_s = time.perf_counter() - t
            print(
                f"  cleanup of cologne/buffer: plan {plan_s:.2f} s ({len(plan.deletable):,} "
                f"deletable, {len(plan.blocked):,} blocked), has_deletable {has_s:.3f} s"
            )
            page = graphql_asset_page(instance, url)
            shown = f"{page:.2f} s" if isinstance(page, float) else page
            print(f"  GraphQL asset page of {'/'.join(KEY.path)}: {shown}")
            print(f"  load average {os.getloadavg()[0]:.1f}")
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--packages", default="10000,100000")
    args = parser.parse_args()
    logging.getLogger("dagster").setLevel(logging.WARNING)
    for n in args.packages.split(","):
        run(int(n))


if __name__ == "__main__":
    main()
