"""Filing benchmark: register 100,000 small files on SQLite and on PostgreSQL.

For each backend it prints files/second and the statements issued by
``register_raw_data_files``, next to a baseline doing the least work anyone could: one checksum
pass over the same files plus one plain executemany INSERT of the same RawDataFile rows.
``ratio = ours / baseline`` (time). Also times re-registering everything (the idempotent no-op,
which re-reads each file to prove its content is unchanged). Scratch data lives under /tmp; the
PostgreSQL database is created and dropped by this script.

    .venv/bin/python bench/bench_filing.py [--files N] [--backends sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import insert
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import StatementCounter

from ccat_dagster.lifecycle.common.locations import resolve_location
from ccat_dagster.lifecycle.ingest.filing import register_raw_data_files
from ccat_dagster.simulate import demo_topology
from ccat_ops_db.checksum import checksum_file
from ccat_ops_db.migrate import upgrade
from ccat_ops_db.models import ExecutedObsUnit, InstrumentModule, RawDataFile, table_of
from ccat_ops_db.session import make_engine
from ccat_ops_db.topology import apply_topology

SCRATCH = Path("/tmp/ccat_bench_filing")
PG_ADMIN = os.environ.get(
    "CCAT_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
FILES_PER_DIR = 1_000


def make_files(root: Path, n: int) -> list[Path]:
    """n small files (100-200 bytes, distinct content) under root/obs_bench/<dir>/."""
    paths = []
    for i in range(n):
        directory = root / "obs_bench" / f"d{i // FILES_PER_DIR:04d}"
        if i % FILES_PER_DIR == 0:
            directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"f{i:07d}.dat"
        path.write_bytes(f"file {i} ".encode() * (10 + i % 10))
        paths.append(path)
    return paths


def baseline(engine: sa.Engine, root: Path, paths: list[Path], source_id: int) -> float:
    """Checksum pass + one executemany INSERT of the same rows (under another prefix)."""
    start = time.perf_counter()
    rows = []
    for path in paths:
        checksum, size = checksum_file(path)
        rows.append((path.relative_to(root).as_posix(), size, checksum))
    with Session(engine) as session:
        obs = ExecutedObsUnit(name="baseline")
        module = InstrumentModule(name="baseline")
        session.add_all([obs, module])
        session.flush()
        session.execute(
            insert(table_of(RawDataFile)),
            [
                {
                    "name": rel.rsplit("/", 1)[-1],
                    "relative_path": f"baseline/{rel}",
                    "size": size,
                    "checksum": checksum,
                    "checksum_algorithm": "sha256",
                    "source_location_id": source_id,
                    "executed_obs_unit_id": obs.id,
                    "instrument_module_id": module.id,
                }
                for rel, size, checksum in rows
            ],
        )
        session.commit()
    return time.perf_counter() - start


def ours(engine: sa.Engine, root: Path) -> tuple[float, int, int]:
    with StatementCounter(engine) as counter, Session(engine) as session:
        start = time.perf_counter()
        result = register_raw_data_files(
            session, "ccat/primecam_raw_data", "obs_bench", "bench_module", [root / "obs_bench"]
        )
        session.commit()
        return time.perf_counter() - start, counter.count, result.registered


def run_backend(name: str, url: str, home: Path, paths: list[Path]) -> None:
    root = home / "ccat" / "primecam_raw_data"
    upgrade(url)
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            apply_topology(session, demo_topology(home))
            session.commit()
            source_id = resolve_location(session, "ccat/primecam_raw_data").id
        t_base = baseline(engine, root, paths, source_id)
        t_ours, statements, registered = ours(engine, root)
        assert registered == len(paths), registered
        t_again, statements_again, registered_again = ours(engine, root)
        assert registered_again == 0
        n = len(paths)
        print(f"[{name}] {n:,} files")
        for label, seconds, count in [
            ("baseline (checksum + one executemany INSERT)", t_base, None),
            ("register_raw_data_files", t_ours, statements),
            ("re-register (no-op, re-reads every file)", t_again, statements_again),
        ]:
            shown = f"  {count} statements" if count is not None else ""
            print(f"  {label:<46}{seconds:7.2f} s {n / seconds:9.0f} files/s{shown}")
        print(f"  ratio = ours / baseline = {t_ours / t_base:.2f}")
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()

    shutil.rmtree(SCRATCH, ignore_errors=True)
    home = SCRATCH / "home"
    demo_topology(home)
    start = time.perf_counter()
    paths = make_files(home / "ccat" / "primecam_raw_data", args.files)
    print(f"wrote {len(paths):,} files in {time.perf_counter() - start:.1f} s under {home}")
    try:
        for backend in args.backends.split(","):
            if backend == "sqlite":
                run_backend("sqlite", f"sqlite:///{SCRATCH / 'ops.db'}", home, paths)
            elif backend == "postgresql":
                db = f"ccat_bench_filing_{uuid.uuid4().hex[:8]}"
                admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
                with admin.connect() as conn:
                    conn.execute(sa.text(f'CREATE DATABASE "{db}"'))
                try:
                    url = make_url(PG_ADMIN).set(database=db).render_as_string(hide_password=False)
                    run_backend("postgresql", url, home, paths)
                finally:
                    with admin.connect() as conn:
                        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
                    admin.dispose()
            else:
                raise SystemExit(f"unknown backend {backend!r}; use sqlite and/or postgresql")
    finally:
        shutil.rmtree(SCRATCH, ignore_errors=True)


if __name__ == "__main__":
    main()
