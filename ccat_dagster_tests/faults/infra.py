"""The real components a fault schedule runs against, started once per harness and shared by the
schedules: a private PostgreSQL cluster (``initdb``/``pg_ctl`` on a port of its own, so it can be
restarted), an OpenSSH ``sshd`` (its connections can be dropped, the daemon stopped), a moto S3
server process behind a fault proxy (endpoint down, 5xx, bytes flipped in transit), a small tmpfs
for the telescope buffer (filled to make the disk full) and the fork server for ``ccat``.

Nothing here touches the machine's shared PostgreSQL; every port is a free one on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from ccat_dagster_tests.faults import REPO_ROOT
from ccat_dagster_tests.faults.launcher import Zygote
from ccat_dagster_tests.fixtures.s3server import FAKE_ENV, s3_admin_client
from ccat_dagster_tests.fixtures.sshd import SshdServer, running_sshd
from ccat_ops_db.migrate import upgrade

PG_BIN = Path("/usr/lib/postgresql")
TEMPLATE_DB = "ccat_faults_template"
BUFFER_DISK_SIZE = "8m"


class InfrastructureError(RuntimeError):
    """A real component of the fault harness could not be started."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise InfrastructureError(f"{what} did not listen on 127.0.0.1:{port} within {timeout}s")


def _pg_bin(name: str) -> str:
    versions = sorted(PG_BIN.glob("*/bin"), reverse=True)
    for directory in versions:
        if (directory / name).exists():
            return str(directory / name)
    found = shutil.which(name)
    if not found:
        raise InfrastructureError(f"{name} not found (install postgresql)")
    return found


class PrivatePostgres:
    """A PostgreSQL cluster of the harness's own: fsync off, trust auth, its own port."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ccat-faults-pg-"))
        self.port = free_port()
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self._run(_pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")
        self.start()

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self.as_postgres, *args], capture_output=True, text=True)
        if done.returncode != 0:
            raise InfrastructureError(f"{' '.join(args[:2])} failed: {done.stderr.strip()}")

    def _ctl(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            _pg_bin("pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            "60",
            "-o",
            options,
            action,
            *extra,
        )

    def start(self) -> None:
        self._ctl("start")

    def stop(self) -> None:
        self._ctl("stop", "-m", "fast")

    def restart(self) -> None:
        """Every connection breaks; the server is back when this returns."""
        self._ctl("restart", "-m", "fast")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        engine = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(sa.text(sql))
        finally:
            engine.dispose()

    def close(self) -> None:
        with contextlib.suppress(InfrastructureError):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class S3Endpoint:
    """A moto server process behind the fault proxy; ``endpoint`` is the proxy's URL."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        env = {**os.environ, **FAKE_ENV}
        self.upstream_port = free_port()
        self.moto = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.upstream_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        _wait_for_port(self.upstream_port, 30, "moto server")
        self.control = workdir / "s3proxy.mode"
        self.control.write_text("pass\n")
        port_file = workdir / "s3proxy.port"
        self.proxy = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ccat_dagster_tests.faults.proxy",
                "--upstream",
                f"127.0.0.1:{self.upstream_port}",
                "--control",
                str(self.control),
                "--port-file",
                str(port_file),
            ],
            start_new_session=True,
            cwd=REPO_ROOT,
        )
        deadline = time.monotonic() + 30
        while not port_file.exists():
            if time.monotonic() > deadline or self.proxy.poll() is not None:
                raise InfrastructureError("the S3 fault proxy did not start")
            time.sleep(0.05)
        self.port = int(port_file.read_text())
        self.endpoint = f"http://127.0.0.1:{self.port}"
        #: a client that bypasses the proxy: arranging, corrupting and scanning objects
        self.admin = s3_admin_client(f"http://127.0.0.1:{self.upstream_port}")

    def set_mode(self, mode: str) -> None:
        tmp = self.control.with_suffix(".tmp")
        tmp.write_text(mode + "\n")
        os.replace(tmp, self.control)
        if mode == "pass":
            _wait_for_port(self.port, 10, "S3 fault proxy")
        time.sleep(0.1)  # the proxy polls every 50 ms

    def flips(self) -> int:
        events = Path(f"{self.control}.events")
        return len(events.read_text().splitlines()) if events.exists() else 0

    def close(self) -> None:
        for process in (self.proxy, self.moto):
            if process.poll() is None:
                process.kill()
                process.wait()


@dataclass
class BufferDisk:
    """A small tmpfs (root may mount one); ``fill`` leaves no free byte, ``drain`` frees it."""

    mount_point: Path
    mounted: bool

    @property
    def filler(self) -> Path:
        return self.mount_point / "filler"

    def fill(self) -> None:
        free = shutil.disk_usage(self.mount_point).free
        # ENOSPC ends it: full, as intended
        with open(self.filler, "ab") as out, contextlib.suppress(OSError):
            while free > 0:
                out.write(b"\0" * min(free, 1 << 20))
                out.flush()
                free = shutil.disk_usage(self.mount_point).free

    def drain(self) -> None:
        self.filler.unlink(missing_ok=True)

    def clear(self) -> None:
        for child in self.mount_point.iterdir():
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)


@contextmanager
def buffer_disk(mount_point: Path) -> Iterator[BufferDisk]:
    mount_point.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={BUFFER_DISK_SIZE}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise InfrastructureError(
            f"cannot mount a tmpfs at {mount_point} for the buffer-disk-full fault (run as root): "
            f"{done.stderr.strip()}"
        )
    try:
        yield BufferDisk(mount_point, mounted=True)
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False, capture_output=True)


@dataclass
class Infrastructure:
    workdir: Path
    postgres: PrivatePostgres
    sshd: SshdServer
    s3: S3Endpoint
    disk: BufferDisk
    zygote: Zygote

    def heal(self) -> None:
        """Bring every component back (the data is not touched)."""
        if not self.pg_running():
            self.postgres.start()
        self.sshd.start_daemon()
        self.s3.set_mode("pass")
        self.disk.drain()

    def pg_running(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.postgres.port), 0.5):
                return True
        except OSError:
            return False


def _restore_env(saved: dict[str, str | None]) -> None:
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@contextmanager
def infrastructure(workdir: Path) -> Iterator[Infrastructure]:
    """Start every component under ``workdir``; stop them all on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    saved = {k: os.environ.get(k) for k in (*FAKE_ENV, "AWS_PROFILE")}
    with ExitStack() as stack:
        stack.callback(_restore_env, saved)
        os.environ.pop("AWS_PROFILE", None)
        os.environ.update(FAKE_ENV)  # fake credentials only; never a real profile
        postgres = PrivatePostgres()
        stack.callback(postgres.close)
        postgres.admin(f'CREATE DATABASE "{TEMPLATE_DB}"')
        upgrade(postgres.url(TEMPLATE_DB))
        sshd = stack.enter_context(running_sshd(workdir / "sshd"))
        s3 = S3Endpoint(workdir)
        stack.callback(s3.close)
        disk = stack.enter_context(buffer_disk(workdir / "buffer_disk"))
        zygote = Zygote(workdir)
        stack.callback(zygote.close)
        yield Infrastructure(workdir, postgres, sshd, s3, disk, zygote)
