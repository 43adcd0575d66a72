"""Benchmark of the deletion decision on PostgreSQL at 100k and 1M physical copies.

Creates (and drops) its own database, migrates it, bulk-loads a realistic mix of copies with
set-based ``INSERT ... SELECT generate_series`` (archived, in-flight and waiting packages; raw
files PRESENT and DELETION_POSSIBLE; transfer packages at source and LTA-site buffers; two LTA
sites), then times ``plan_deletions`` and every finder and counts their SQL statements with a
``before_cursor_execute`` event: the count must not grow with the number of copies.

Baseline: a per-copy loop -- one ``can_delete_*`` decision per copy (a few queries each), timed
on a sample and extrapolated to every candidate copy. Prints ``ratio = ours / baseline``.

    .venv/bin/python bench/bench_deletion.py [--sizes 100000,1000000] [--sample 500]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session

# the per-copy can_delete_* decisions of the baseline are test helpers (ccat_dagster_tests)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scratch import scratch_database

from ccat_dagster.lifecycle.deletion import rules as d
from ccat_dagster.lifecycle.deletion.plan import plan_deletions
from ccat_dagster_tests import deletion_rules as matrix
from ccat_ops_db.migrate import upgrade
from ccat_ops_db.models import (
    DataLocation,
    DataTransferPackage,
    DiskDataLocation,
    LocationType,
    RawDataPackage,
    Site,
)
from ccat_ops_db.session import make_engine

FILES_PER_PACKAGE = 8
PACKAGES_PER_DTP = 10
# copies per package: 8 files + up to 3 package copies + 2 transfer-package copies / 10
COPIES_PER_PACKAGE = FILES_PER_PACKAGE + 2.25 + 2 / PACKAGES_PER_DTP


def migrate_with_topology(url: str) -> None:
    """A migrated ops DB at ``url`` holding the bench topology of ``make_topology``."""
    upgrade(url)
    engine = make_engine(url)
    with Session(engine) as session:
        make_topology(session)
        session.commit()
    engine.dispose()


def make_topology(session: Session) -> dict[str, int]:
    locs: dict[str, DataLocation] = {}
    for short, specs in {
        "ccat": [
            ("primecam_raw_data", LocationType.SOURCE),
            ("telescope_buffer", LocationType.BUFFER),
        ],
        "cologne": [("buffer", LocationType.BUFFER), ("lta", LocationType.LONG_TERM_ARCHIVE)],
        "us": [("buffer", LocationType.BUFFER), ("lta", LocationType.LONG_TERM_ARCHIVE)],
    }.items():
        site = Site(name=short, short_name=short)
        session.add(site)
        for name, ltype in specs:
            locs[f"{short}/{name}"] = DiskDataLocation(
                site=site, name=name, location_type=ltype, path=f"/tmp/{short}/{name}"
            )
            session.add(locs[f"{short}/{name}"])
    session.execute(
        sa.text("INSERT INTO executed_obs_unit (id, name, created_at) VALUES (1, 'obs', now())")
    )
    session.execute(sa.text("INSERT INTO instrument_module (id, name) VALUES (1, 'module')"))
    session.flush()
    return {k: v.id for k, v in locs.items()}


def bulk_load(session: Session, loc: dict[str, int], packages: int) -> None:
    """Everything set-based: one INSERT ... SELECT generate_series per kind of row.

    Package g: g%4 in (0,1) ARCHIVED (copies at source buffer, Cologne buffer, Cologne LTA),
    g%4 == 2 TRANSFERRING (source buffer + Cologne buffer), g%4 == 3 WAITING (source buffer).
    Raw files of every 8th package are DELETION_POSSIBLE (half of them past retention).
    DTPs: transferred+unpacked to Cologne; every other one also to the US (secondary).
    """
    dtps = packages // PACKAGES_PER_DTP + 1
    p = {
        "P": packages,
        "D": dtps,
        "K": FILES_PER_PACKAGE,
        **{k.replace("/", "_"): v for k, v in loc.items()},
    }
    sql = [
        """INSERT INTO data_transfer_package (id, name, relative_path, size, status,
               origin_location_id, retry_count, created_at, updated_at)
           SELECT g, 'dtp_' || g, 'transfer/dtp_' || g || '.tar', 1000000000, 'COMPLETED',
               :ccat_telescope_buffer, 0, now(), now()
           FROM generate_series(1, :D) g""",
        """INSERT INTO data_transfer (data_transfer_package_id, origin_location_id,
               destination_location_id, route_kind, status, unpack_status, retry_count,
               unpack_retry_count, created_at)
           SELECT g, :ccat_telescope_buffer, :cologne_buffer, 'primary', 'COMPLETED', 'COMPLETED',
               0, 0, now() FROM generate_series(1, :D) g""",
        """INSERT INTO data_transfer (data_transfer_package_id, origin_location_id,
               destination_location_id, route_kind, status, unpack_status, retry_count,
               unpack_retry_count, created_at)
           SELECT g, :cologne_buffer, :us_buffer, 'secondary', 'COMPLETED', 'COMPLETED', 0, 0,
               now() FROM generate_series(2, :D, 2) g""",
        """INSERT INTO raw_data_package (id, name, relative_path, size, checksum,
               checksum_algorithm, file_count, status, state, source_location_id,
               executed_obs_unit_id, instrument_module_id, data_transfer_package_id,
               retry_count, created_at, updated_at)
           SELECT g, 'pkg_' || g, 'packages/pkg_' || g || '.tar', 100000000, md5(g::text),
               'md5', :K, 'COMPLETED',
               CASE WHEN g % 4 IN (0, 1) THEN 'ARCHIVED' WHEN g % 4 = 2 THEN 'TRANSFERRING'
                    ELSE 'WAITING' END,
               :ccat_primecam_raw_data, 1, 1,
               CASE WHEN g % 4 <> 3 THEN (g - 1) / 10 + 1 END, 0, now(), now()
           FROM generate_series(1, :P) g""",
        """INSERT INTO raw_data_file (id, name, relative_path, size, checksum,
               checksum_algorithm, source_location_id, executed_obs_unit_id,
               instrument_module_id, raw_data_package_id, created_at)
           SELECT f, 'f_' || f, 'raw/f_' || f || '.dat', 12500000, md5(f::text), 'md5',
               :ccat_primecam_raw_data, 1, 1, (f - 1) / :K + 1, now()
           FROM generate_series(1, :P * :K) f""",
        # raw-file copies at SOURCE
        """INSERT INTO physical_copy (type, data_location_id, status, size, created_at,
               updated_at, retry_count, raw_data_file_id)
           SELECT 'raw_data_file', :ccat_primecam_raw_data,
               CASE WHEN ((f - 1) / :K + 1) % 8 = 0 THEN 'DELETION_POSSIBLE' ELSE 'PRESENT' END,
               12500000, now(),
               CASE WHEN ((f - 1) / :K + 1) % 16 = 0 THEN now() - interval '40 days'
                    ELSE now() END,
               0, f
           FROM generate_series(1, :P * :K) f""",
        # package copies: source buffer (all), Cologne buffer (not WAITING), Cologne LTA (ARCHIVED)
        """INSERT INTO physical_copy (type, data_location_id, status, size, created_at,
               updated_at, retry_count, raw_data_package_id)
           SELECT 'raw_data_package', :ccat_telescope_buffer, 'PRESENT', 100000000, now(), now(),
               0, g FROM generate_series(1, :P) g""",
        """INSERT INTO physical_copy (type, data_location_id, status, size, created_at,
               updated_at, retry_count, raw_data_package_id)
           SELECT 'raw_data_package', :cologne_buffer, 'PRESENT', 100000000, now(), now(), 0, g
           FROM generate_series(1, :P) g WHERE g % 4 <> 3""",
        """INSERT INTO physical_copy (type, data_location_id, status, size, created_at,
               updated_at, verified_at, retry_count, raw_data_package_id)
           SELECT 'raw_data_package', :cologne_lta, 'PRESENT', 100000000, now(), now(), now(),
               0, g FROM generate_series(1, :P) g WHERE g % 4 IN (0, 1)""",
        # transfer-package copies at the source buffer and the Cologne buffer
        """INSERT INTO physical_copy (type, data_location_id, status, size, created_at,
               updated_at, retry_count, data_transfer_package_id)
           SELECT 'data_transfer_package', l.loc, 'PRESENT', 1000000000, now(), now(), 0, g
           FROM generate_series(1, :D) g
           CROSS JOIN (VALUES (:ccat_telescope_buffer), (:cologne_buffer)) AS l(loc)""",
    ]
    for statement in sql:
        session.execute(sa.text(statement), p)
    session.commit()
    session.execute(sa.text("ANALYZE"))


class StatementCounter:
    def __init__(self, engine: sa.Engine) -> None:
        self.count = 0
        event.listen(engine, "before_cursor_execute", self._on_execute)

    def _on_execute(self, *args, **kwargs) -> None:
        self.count += 1

    @contextmanager
    def measure(self):
        start_count, start, cpu = self.count, time.perf_counter(), time.process_time()
        result = {}
        yield result
        result["statements"] = self.count - start_count
        result["seconds"] = time.perf_counter() - start
        result["cpu"] = time.process_time() - cpu


FINDERS = {
    "dtp@source_buffers": matrix.find_deletable_data_transfer_packages_at_source_buffers,
    "dtp@lta_buffers": matrix.find_deletable_data_transfer_packages_at_lta_buffers,
    "rdp@source_buffers": matrix.find_deletable_raw_data_packages_at_source_buffers,
    "rdp@lta_buffers": matrix.find_deletable_raw_data_packages_at_lta_buffers,
    "rdf deletion_possible": matrix.process_deletion_possible_raw_data_files,
    "rdf processing": matrix.find_deletable_processing_raw_data_files,
    "rdf staged": matrix.find_deletable_staged_raw_data_files_by_location,
}


def baseline_per_copy(
    session: Session, counter: StatementCounter, loc: dict[str, int], sample: int
):
    """The per-copy loop: one can_delete_* decision per package copy, ORM objects in hand."""
    rdps = session.scalars(
        sa.select(RawDataPackage).order_by(RawDataPackage.id).limit(sample)
    ).all()
    dtps = session.scalars(
        sa.select(DataTransferPackage).order_by(DataTransferPackage.id).limit(sample // 10 + 1)
    ).all()
    src_buf = session.get_one(DataLocation, loc["ccat/telescope_buffer"])
    lta_buf = session.get_one(DataLocation, loc["cologne/buffer"])
    decisions = 0
    with counter.measure() as m:
        for pkg in rdps:
            matrix.can_delete_raw_data_package_from_source_buffer(session, pkg, src_buf)
            matrix.can_delete_raw_data_package_from_lta_buffer(session, pkg, lta_buf)
            decisions += 2
        for dtp in dtps:
            matrix.can_delete_data_transfer_package_from_source_buffer(session, dtp, src_buf)
            matrix.can_delete_data_transfer_package_from_lta_buffer(session, dtp, lta_buf)
            decisions += 2
    return decisions, m["seconds"] / decisions, m["statements"] / decisions


def run(size: int, sample: int) -> dict:
    packages = int(size / COPIES_PER_PACKAGE)
    with scratch_database("ccat_bench_deletion") as url:
        upgrade(url)
        engine = make_engine(url)
        counter = StatementCounter(engine)
        with Session(engine) as session:
            loc = make_topology(session)
            t0 = time.perf_counter()
            bulk_load(session, loc, packages)
            load_s = time.perf_counter() - t0
            copies = session.scalar(sa.text("SELECT count(*) FROM physical_copy"))
            print(
                f"\n== {copies:,} physical copies ({packages:,} packages), loaded in {load_s:.1f} s"
            )
            ctx = d.rule_context(session)
            for name, finder in FINDERS.items():
                with counter.measure() as m:
                    rows = finder(session, ctx=ctx)
                print(
                    f"  {name:24s} {len(rows):>9,} deletable  "
                    f"{m['statements']} statement(s)  {m['seconds']:.2f} s"
                )
            with counter.measure() as plan_m:
                plan = plan_deletions(session)
            print(
                f"  plan_deletions (all locations): {len(plan.deletable):,} deletable, "
                f"{len(plan.blocked):,} blocked, {plan_m['statements']} statements, "
                f"{plan_m['seconds']:.2f} s (client CPU {plan_m['cpu']:.2f} s, the rest is the "
                f"server; target < 5 s at 1M; load average {os.getloadavg()[0]:.1f})"
            )
            src_buf = session.get_one(DataLocation, loc["ccat/telescope_buffer"])
            with counter.measure() as loc_m:
                loc_plan = plan_deletions(session, location=src_buf)
            print(
                f"  plan_deletions (ccat/telescope_buffer): {len(loc_plan.deletable):,} deletable, "
                f"{loc_m['statements']} statements, {loc_m['seconds']:.2f} s "
                f"(client CPU {loc_m['cpu']:.2f} s)"
            )
            decisions, per_decision_s, per_decision_stmts = baseline_per_copy(
                session, counter, loc, sample
            )
            candidates = len(plan.deletable) + len(plan.blocked)
            baseline_s = per_decision_s * candidates
            baseline_stmts = per_decision_stmts * candidates
            print(
                f"  baseline (per-copy loop, {decisions} decisions sampled): "
                f"{per_decision_s * 1000:.2f} ms and {per_decision_stmts:.1f} statements per copy "
                f"-> {baseline_s:,.0f} s, {baseline_stmts:,.0f} statements for "
                f"{candidates:,} candidates"
            )
            print(
                f"  ratio = ours / baseline: time {plan_m['seconds'] / baseline_s:.4f}, "
                f"statements {plan_m['statements'] / baseline_stmts:.6f}"
            )
        engine.dispose()
    return {
        "copies": copies,
        "plan_statements": plan_m["statements"],
        "plan_seconds": plan_m["seconds"],
        "location_statements": loc_m["statements"],
        "baseline_seconds": baseline_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--sample", type=int, default=500)
    args = parser.parse_args()
    results = [run(int(s), args.sample) for s in args.sizes.split(",")]
    counts = {r["plan_statements"] for r in results}
    sizes = ", ".join(f"{r['copies']:,}" for r in results)
    print(
        f"\nstatements per plan_deletions at {sizes} copies: "
        f"{[r['plan_statements'] for r in results]} "
        f"({'constant' if len(counts) == 1 else 'NOT constant'})"
    )
    if len(counts) != 1:
        raise SystemExit("the number of statements grew with the number of copies")


if __name__ == "__main__":
    main()
