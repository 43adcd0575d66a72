"""Partition pruning at scale: ``prune_partitions`` over an archive's partition set on PostgreSQL.

Bulk-loads the copies of bench_deletion.py (own scratch database), then makes the lifecycle of
every archived package finished long ago (its copies outside the archives DELETED 100 days ago,
its archive copy 100 days old), adds one partition key per archived package to the Cologne
archive's set of a temporary Dagster instance, and times the set's read, the pruning query
(``finished_before``, one statement per chunk of keys) and the deletion of the keys. A second
pass prunes the next ``PRUNE_PER_RUN`` keys (a cleanup run prunes at most that many).

    .venv/bin/python bench/bench_partitions.py [--copies 1000000] [--horizon-days 30]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import sqlalchemy as sa
from dagster import AssetKey, instance_for_test
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_deletion import COPIES_PER_PACKAGE, bulk_load, make_topology
from scratch import scratch_database

from ccat_dagster.defs.partitions import drop_partitions, partition_set_name, prune_partitions
from ccat_ops_db.migrate import upgrade
from ccat_ops_db.models import DataLocation
from ccat_ops_db.session import make_engine

KEY = AssetKey(["cologne", "lta", "raw_data_package"])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--copies", type=int, default=1_000_000)
    parser.add_argument("--horizon-days", type=int, default=30)
    args = parser.parse_args()
    with scratch_database("ccat_bench_partitions") as url:
        upgrade(url)
        engine = make_engine(url)
        with Session(engine) as session, instance_for_test() as instance:
            loc = make_topology(session)
            bulk_load(session, loc, int(args.copies / COPIES_PER_PACKAGE))
            lta = loc["cologne/lta"]
            session.execute(
                sa.text(
                    "UPDATE physical_copy SET created_at = now() - interval '100 days' "
                    "WHERE data_location_id = :lta"
                ),
                {"lta": lta},
            )
            session.execute(
                sa.text(
                    "UPDATE physical_copy SET status = 'DELETED', "
                    "updated_at = now() - interval '100 days' WHERE data_location_id <> :lta "
                    "AND type = 'raw_data_package'"
                ),
                {"lta": lta},
            )
            session.commit()
            session.execute(sa.text("ANALYZE"))
            names = list(
                session.scalars(
                    sa.text(
                        "SELECT p.name FROM raw_data_package p JOIN physical_copy c "
                        "ON c.raw_data_package_id = p.id WHERE c.data_location_id = :lta"
                    ),
                    {"lta": lta},
                )
            )
            t = time.perf_counter()
            instance.add_dynamic_partitions(partition_set_name(KEY), names)
            print(
                f"{len(names):,} keys added to {partition_set_name(KEY)} in "
                f"{time.perf_counter() - t:.2f} s"
            )
            location = session.get_one(DataLocation, lta)
            for attempt in ("cleanup 1 (all past the horizon)", "cleanup 2", "cleanup 3"):
                t = time.perf_counter()
                keys = instance.get_dynamic_partitions(partition_set_name(KEY))
                read_s = time.perf_counter() - t
                t = time.perf_counter()
                pruned = prune_partitions(
                    instance, session, location, horizon_days=args.horizon_days
                )
                prune_s = time.perf_counter() - t - read_s
                t = time.perf_counter()
                drop_partitions(instance, pruned)
                drop_s = time.perf_counter() - t
                print(
                    f"{attempt}: {len(keys):,} keys read in {read_s:.2f} s; prune query "
                    f"{prune_s:.2f} s -> {len(pruned):,} keys; dropped in {drop_s:.2f} s"
                )
        engine.dispose()


if __name__ == "__main__":
    main()
