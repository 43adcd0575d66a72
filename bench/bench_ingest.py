"""Ingest benchmark: what the ingest sensor of a SOURCE costs, against the shell doing the same.

(a) Detect and register N new files (1,000 per obs unit directory, each with its marker) in one
    tick of ``ingest_tick`` on SQLite, against ``find ROOT -type f | wc -l`` plus ``sha256sum``
    of the same files (the least a detector that checksums can do). Target ratio <= 1.3.
(b) An idle tick (nothing new since the cursor) over 10k / 100k / 1M files already handled,
    against ``find ROOT -newer CURSOR_FILE``. The tick reads no file content and runs no SQL
    (counted); its cost must stay within 2x of find's and grow with the tree as find's does,
    not with the catalogue. The files of (b) are written on disk but not put in the catalogue:
    an idle tick never looks there (the statement count shows it).
(c) (a) and (b) for a SOURCE on another host, over a temporary sshd on loopback: one remote
    ``find -newerct`` per tick and checksums computed there in batches, against the same shell
    commands run through ``ssh host`` on a warm multiplexed connection.

Prints ``ratio = ours / baseline`` per row. Scratch data lives under /tmp and is removed.

    .venv/bin/python bench/bench_ingest.py [--new 100000] [--size 0] [--idle 10000,100000,1000000]
        [--ssh-new 10000] [--ssh-idle 10000,100000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import StatementCounter

from ccat_dagster.lifecycle.common.locations import resolve_location
from ccat_dagster.lifecycle.ingest.detection import IngestCursor, ingest_tick
from ccat_dagster.lifecycle.ingest.source_tree import RemoteSourceTree, source_tree
from ccat_dagster.simulate import demo_topology
from ccat_dagster.storage.factory import LOCAL_HOST_ENV, StorageRegistry
from ccat_dagster_tests.fixtures.sshd import SshdServer, running_sshd
from ccat_ops_db.ingest_spec import IngestSpec
from ccat_ops_db.migrate import upgrade
from ccat_ops_db.models import DiskDataLocation
from ccat_ops_db.session import make_engine
from ccat_ops_db.topology import apply_topology

SCRATCH = Path("/tmp/ccat_bench_ingest")
FILES_PER_DIR = 1_000
SPEC = IngestSpec(
    pattern="{obs_unit}/{instrument_module}/*",
    ready="marker",
    marker="{obs_unit}/{instrument_module}/.complete",
)


def make_files(root: Path, n: int, prefix: str, size: int = 0) -> None:
    """n files of ``size`` bytes (0: 100-200 bytes), distinct content, 1,000 per obs unit,
    each directory with its marker."""
    filler = os.urandom(size) if size else b""
    for i in range(n):
        directory = root / f"{prefix}_{i // FILES_PER_DIR:05d}" / "pcam_280"
        if i % FILES_PER_DIR == 0:
            if i:
                (directory.parent.with_name(f"{prefix}_{i // FILES_PER_DIR - 1:05d}")).joinpath(
                    "pcam_280", ".complete"
                ).write_bytes(b"")
            directory.mkdir(parents=True, exist_ok=True)
        head = f"file {prefix} {i} ".encode()
        data = head + filler[len(head) :] if size else head * (8 + i % 10)
        (directory / f"f{i:07d}.dat").write_bytes(data)
    if n:
        last = root / f"{prefix}_{(n - 1) // FILES_PER_DIR:05d}" / "pcam_280"
        (last / ".complete").write_bytes(b"")


def _shell(command: str) -> float:
    start = time.perf_counter()
    subprocess.run(["bash", "-c", command], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _source(session: Session) -> DiskDataLocation:
    source = resolve_location(session, "ccat/primecam_raw_data")
    assert isinstance(source, DiskDataLocation)
    return source


def _setup(home: Path, server: SshdServer | None = None) -> tuple[sa.Engine, Path]:
    """An ops DB with the demo topology; with ``server``, its SOURCE lies on that host."""
    home.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{home / 'ops.db'}"
    upgrade(url)
    engine = make_engine(url)
    topology = demo_topology(home / "data")
    if server is not None:
        for site in topology["sites"]:
            for location in site["locations"]:
                if location["name"] == "primecam_raw_data":
                    location["storage"].update(
                        host=server.host,
                        port=server.port,
                        user=server.user,
                        known_hosts=server.known_hosts,
                    )
    with Session(engine) as session:
        apply_topology(session, topology)
        session.commit()
    return engine, home / "data" / "ccat" / "primecam_raw_data"


def _ssh(server: SshdServer, control: Path) -> str:
    """The ``ssh host`` prefix of the baseline, multiplexed over one warm master connection."""
    return (
        f"ssh -q -i {server.key_file} -p {server.port} -o UserKnownHostsFile={server.known_hosts}"
        f" -o StrictHostKeyChecking=yes -o BatchMode=yes -o ControlMaster=auto"
        f" -o ControlPath={control} -o ControlPersist=120 {server.user}@{server.host}"
    )


def bench_ssh(server: SshdServer, n_new: int, sizes: list[int]) -> None:
    home = SCRATCH / "ssh"
    engine, root = _setup(home, server)
    os.environ[LOCAL_HOST_ENV] = "bench-ops"  # the SOURCE's host is another one
    os.environ["CCAT_SSH_KEY_FILE"] = server.key_file
    ssh = _ssh(server, home / "control")
    _shell(f"{ssh} true")  # the master connection, warm
    try:
        with Session(engine) as session, StorageRegistry(local_site="ccat") as storages:
            source = _source(session)
            tree = source_tree(source, storages.get(source))
            assert isinstance(tree, RemoteSourceTree)
            ingest_tick(session, source, SPEC, IngestCursor(), tree=tree)  # warm connection
            make_files(root, n_new, "obs")
            t_base = _shell(
                f"{ssh} 'find {root} -type f | wc -l; find {root} -type f -print0 | "
                f"xargs -0 sha256sum'"
            )
            start = time.perf_counter()
            tick = ingest_tick(
                session, source, SPEC, IngestCursor(), tree=tree, budget_seconds=3600
            )
            t_ours = time.perf_counter() - start
            assert tick.registered == n_new, tick
            print(f"(c) over SSH: detect and register {n_new:,} new files of 100-200 bytes")
            print(f"  baseline ssh host 'find | wc -l; find | xargs sha256sum' {t_base:7.2f} s")
            print(f"  ingest_tick (remote tree)                           {t_ours:7.2f} s")
            print(f"  ratio = ours / baseline = {t_ours / t_base:.2f}")
            print("(c) over SSH: idle tick vs ssh host find -newer CURSOR_FILE")
            written = n_new
            for size in sizes:
                make_files(root, max(0, size - written), f"obs{size}")
                written = max(size, written)
                time.sleep(1.1)
                cursor_file = home / "cursor"
                cursor_file.write_bytes(b"")
                cursor = IngestCursor(since_ns=time.time_ns(), open_findings=False)
                t_base = min(_shell(f"{ssh} find {root} -newer {cursor_file}") for _ in range(3))
                times = []
                _ = (source.id, source.path, source.qualified_name)  # loaded before counting
                with StatementCounter(engine) as counter:
                    for _ in range(3):
                        start = time.perf_counter()
                        tick = ingest_tick(session, source, SPEC, cursor, tree=tree)
                        times.append(time.perf_counter() - start)
                assert not tick.news, tick
                t_ours = min(times)
                print(
                    f"  {size:>9,} files  ssh find -newer {t_base:6.2f} s  ingest_tick "
                    f"{t_ours:6.2f} s  {counter.count} statements  ratio = {t_ours / t_base:.2f}"
                )
    finally:
        _shell(f"{ssh} -O exit 2>/dev/null || true")
        os.environ.pop(LOCAL_HOST_ENV, None)
        engine.dispose()
        shutil.rmtree(home, ignore_errors=True)


def bench_new(n: int, size: int) -> None:
    home = SCRATCH / "new"
    engine, root = _setup(home)
    try:
        make_files(root, n, "obs", size)
        t_base = _shell(
            f"find {root} -type f | wc -l; find {root} -type f -print0 | xargs -0 sha256sum"
        )
        with StatementCounter(engine) as counter, Session(engine) as session:
            source = _source(session)
            start = time.perf_counter()
            tick = ingest_tick(session, source, SPEC, IngestCursor(), budget_seconds=3600)
            t_ours = time.perf_counter() - start
        assert tick.registered == n, tick
        shown = f"{size:,} bytes" if size else "100-200 bytes"
        units = n // FILES_PER_DIR
        print(f"(a) detect and register {n:,} new files of {shown} ({units} obs units)")
        print(f"  baseline (find | wc -l; find | xargs sha256sum) {t_base:7.2f} s")
        print(
            f"  ingest_tick                                     {t_ours:7.2f} s "
            f"{n / t_ours:9.0f} files/s  {counter.count} statements"
        )
        print(f"  ratio = ours / baseline = {t_ours / t_base:.2f}")
    finally:
        engine.dispose()
        shutil.rmtree(home, ignore_errors=True)


def bench_idle(sizes: list[int]) -> None:
    home = SCRATCH / "idle"
    engine, root = _setup(home)
    print("(b) idle tick (nothing new) vs find -newer CURSOR_FILE")
    try:
        written = 0
        for size in sizes:
            make_files(root, size - written, f"obs{size}")
            written = size
            time.sleep(1.1)  # past the cursor margin
            cursor_file = home / "cursor"
            cursor_file.write_bytes(b"")
            cursor = IngestCursor(since_ns=time.time_ns(), open_findings=False)
            t_base = min(_shell(f"find {root} -newer {cursor_file}") for _ in range(3))
            with StatementCounter(engine) as counter, Session(engine) as session:
                source = _source(session)
                _ = (source.id, source.path, source.qualified_name)  # loaded before counting
                counter.count = 0
                times = []
                for _ in range(3):
                    start = time.perf_counter()
                    tick = ingest_tick(session, source, SPEC, cursor)
                    times.append(time.perf_counter() - start)
                assert not tick.news, tick
            t_ours = min(times)
            print(
                f"  {size:>9,} files  find -newer {t_base:6.2f} s  ingest_tick {t_ours:6.2f} s  "
                f"{counter.count} statements  ratio = {t_ours / t_base:.2f}"
            )
    finally:
        engine.dispose()
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--new", type=int, default=100_000, help="files for (a)")
    parser.add_argument("--size", type=int, default=0, help="bytes per file of (a); 0: tiny")
    parser.add_argument("--idle", default="10000,100000,1000000", help="tree sizes for (b)")
    parser.add_argument("--ssh-new", type=int, default=10_000, help="files for (c)")
    parser.add_argument("--ssh-idle", default="10000,100000", help="tree sizes for (c)")
    args = parser.parse_args()
    shutil.rmtree(SCRATCH, ignore_errors=True)
    SCRATCH.mkdir(parents=True)
    try:
        bench_new(args.new, args.size)
        bench_idle(sorted(int(s) for s in args.idle.split(",")))
        with running_sshd(SCRATCH / "sshd") as server:
            bench_ssh(server, args.ssh_new, sorted(int(s) for s in args.ssh_idle.split(",")))
    finally:
        shutil.rmtree(SCRATCH, ignore_errors=True)


if __name__ == "__main__":
    main()
