"""One schedule's world on the shared infrastructure: its own ops database (on the private
PostgreSQL cluster), site directories, S3 bucket, telescope buffer directory (on the small tmpfs)
and Dagster home; the three-site topology of the e2e tests on the real components."""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlalchemy import update

from ccat_dagster.instance import write_instance_config
from ccat_dagster.lifecycle.common.policy import Policy
from ccat_dagster_tests.dagster_instance import use_pooled_storages
from ccat_dagster_tests.faults.infra import TEMPLATE_DB, Infrastructure
from ccat_dagster_tests.fixtures.s3server import FAKE_ENV, empty_and_delete_bucket
from ccat_dagster_tests.pipeline_support import file_simulated_data, real_topology
from ccat_ops_db.models import PhysicalCopy
from ccat_ops_db.session import _cached_engine, get_engine, session_scope
from ccat_ops_db.topology import apply_topology

#: long enough that nothing is deleted by retention unless a fault moves the clock
RETENTION_MINUTES = 120
#: kept from the harness's environment for the commands
PASS_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "CI", "PYTHONPATH", "VIRTUAL_ENV")


@dataclass(frozen=True)
class Original:
    """A raw file as the instrument wrote it (the harness's own record, not the catalogue's)."""

    name: str
    size: int
    sha256: str


@dataclass
class World:
    infra: Infrastructure
    seed: int
    root: Path
    database: str
    bucket: str
    buffer: Path
    originals: dict[str, Original] = field(default_factory=dict)
    filings: int = 0

    @property
    def url(self) -> str:
        return self.infra.postgres.url(self.database)

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster_home"

    def env(self) -> dict[str, str]:
        env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
        env.update(FAKE_ENV)
        env.update(
            CCAT_OPS_DB_URL=self.url,
            CCAT_HOME=str(self.root / "ccat_home"),
            DAGSTER_HOME=str(self.dagster_home),
            CCAT_TEMP_SWEEP_MARGIN_SECONDS="0",
            PYTHONUNBUFFERED="1",
            CCAT_SSH_KEY_FILE=self.infra.sshd.key_file,
        )
        return env

    def file(self, obs_units: int, files_per_unit: int) -> list[Original]:
        """New raw data at the SOURCE, registered in the catalogue."""
        self.filings += 1
        with session_scope(self.url) as session:
            files = file_simulated_data(
                session,
                self.root,
                n_obs_units=obs_units,
                files_per_unit=files_per_unit,
                max_size=120_000,
                seed=self.seed * 100 + self.filings,
            )
        new = []
        for f in files:
            digest = hashlib.sha256(f.path.read_bytes()).hexdigest()
            original = Original(f.path.name, f.size, digest)
            self.originals[digest] = original
            new.append(original)
        return new

    def move_clock(self, by: timedelta) -> int:
        """Time passes for the retention rules: every copy's retention clock moves back."""
        return self._move_back(PhysicalCopy.updated_at, by)

    def move_reverification_clock(self) -> int:
        """Time passes until every archive copy is due for its periodic re-verification (the
        scrub reads it back): without it bytes rotted at rest in an archive are found only
        within the interval, which a schedule does not last."""
        by = timedelta(minutes=Policy().lta_reverify_interval_minutes + 1)
        return self._move_back(PhysicalCopy.verified_at, by)

    def _move_back(self, column, by: timedelta) -> int:
        """Move one timestamp of every physical copy that has it ``by`` into the past."""
        with session_scope(self.url) as session:
            result = session.execute(
                update(PhysicalCopy).where(column.is_not(None)).values({column: column - by})
            )
            return result.rowcount or 0

    def source_dir(self) -> Path:
        return self.root / "ccat" / "src"

    def disk_dirs(self) -> dict[str, Path]:
        """location (site/name) -> directory, for every disk location."""
        return {
            "ccat/primecam_raw_data": self.source_dir(),
            "ccat/telescope_buffer": self.buffer,
            "cologne/buffer": self.root / "cologne" / "buffer",
            "us/buffer": self.root / "us" / "buffer",
            "us/lta": self.root / "us" / "lta",
        }


def create_world(infra: Infrastructure, seed: int, workdir: Path) -> World:
    root = workdir / f"schedule-{seed}"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    database = f"faults_{seed}"
    infra.postgres.admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    infra.postgres.admin(f'CREATE DATABASE "{database}" TEMPLATE "{TEMPLATE_DB}"')
    bucket = f"ccat-faults-{seed}"
    infra.s3.admin.create_bucket(Bucket=bucket)
    buffer = infra.disk.mount_point / f"schedule-{seed}"
    buffer.mkdir()
    world = World(infra, seed, root, database, bucket, buffer)
    topology = real_topology(
        root,
        sshd=infra.sshd,
        s3_endpoint=infra.s3.endpoint,
        bucket=bucket,
        policy={"retention_period_minutes": RETENTION_MINUTES},
        telescope_buffer=buffer,
    )
    with session_scope(world.url) as session:
        apply_topology(session, topology)
    write_instance_config(world.dagster_home)
    # Dagster's SQLite default makes a database per run and opens a connection per event: a
    # third of the commands' CPU. What the faults test is the lifecycle, not Dagster's storage
    # (test_kill_runs.py kills commands on that default).
    use_pooled_storages(world.dagster_home)
    return world


def destroy_world(world: World, *, keep_files: bool = False) -> None:
    """Drop the schedule's database and bucket; its directories too unless ``keep_files``."""
    infra = world.infra
    get_engine(world.url).dispose()
    _cached_engine.cache_clear()
    infra.postgres.admin(f'DROP DATABASE IF EXISTS "{world.database}" WITH (FORCE)')
    empty_and_delete_bucket(infra.s3.admin, world.bucket)
    shutil.rmtree(world.buffer, ignore_errors=True)
    if not keep_files:
        shutil.rmtree(world.root, ignore_errors=True)
