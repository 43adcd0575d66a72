"""Sites as separate hosts (issue 15): the deployment of docs/scale.md, each site its own host.

``fixtures/netns.py`` makes five hosts on one machine (network namespaces on a private subnet):
the instrument computer, the telescope (ccat), cologne and us, each with an sshd of its own and
its data on its own disk, and ``ops`` with PostgreSQL, the daemon and the webserver. Each site's
code server runs on its site's host (``CCAT_HOST`` its address), so every byte that crosses
between hosts crosses over SSH: ingest lists and hashes on the instrument computer, packaging
streams from it into the telescope buffer, the LTA sites pull the bundles from the telescope.
The telescope's uplink is throttled (a token bucket), as the real one is slow.

Driven only by the daemon (sensors and schedules turned on through GraphQL): files written on
the instrument computer reach ARCHIVED in both LTAs; then, with more (bigger) files, while the
telescope's cleanup of the first ones runs, cologne is cut off (its link down) while one of its
transfer runs is in flight, and brought back 15 s later: the work finishes by itself, both waves
are in both LTAs byte for byte, the telescope is cleaned of both, and ``ccat verify`` (from ops,
over SSH to every host) passes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import func, select

from ccat_dagster.cli._summary import render_summary
from ccat_dagster.demo import DEMO_INGEST
from ccat_dagster.lifecycle.summary import packages_missing_from_ltas, pipeline_summary
from ccat_dagster_tests.deployment_support import (
    BIN,
    Deployment,
    GraphQLClient,
    ManagedProcess,
    _signal_group,
    code_server_ready,
    loaded_locations,
    postgres_url_for_dagster,
    processes_with_env,
    runs,
    start_all_instigators,
    wait_until,
    write_postgres_instance,
)
from ccat_dagster_tests.fixtures.netns import Host, Network
from ccat_dagster_tests.pipeline_support import copy_statuses, sha256
from ccat_ops_db.migrate import upgrade
from ccat_ops_db.models import (
    LocationType,
    PackageState,
    PhysicalCopyStatus,
    RawDataFile,
    RawDataPackage,
)
from ccat_ops_db.session import _cached_engine, session_scope
from ccat_ops_db.topology import apply_topology

# a whole deployment on five hosts, twice through the pipeline: minutes (docs/scale.md)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "multihost"
SITES = ("ccat", "cologne", "us")
LTA_SITES = ("cologne", "us")
CODE_SERVER_PORT = 4000
WEBSERVER_PORT = 3000
FAST_INTERVALS = {
    "CCAT_SENSOR_INTERVAL_SECONDS": "5",
    "CCAT_MONITOR_INTERVAL_SECONDS": "30",
    "CCAT_CLEANUP_CRON": "* * * * *",
    "CCAT_ALERT_INTERVAL_SECONDS": "30",
}
MODULES = ("pcam_280ghz", "pcam_350ghz")
#: first wave: small files; second wave: ~1 MB files, so that a transfer over the throttled
#: telescope uplink lasts seconds and can be cut in the middle
FIRST = {"n_obs_units": 1, "files_per_unit": 2, "min_size": 1_000, "max_size": 20_000}
SECOND = {"n_obs_units": 1, "files_per_unit": 2, "min_size": 800_000, "max_size": 1_200_000}
#: the telescope's uplink: 0.5 MB/s shared by both LTA sites, ~4 MB to each in wave 2
TELESCOPE_UPLINK = "4mbit"
CUT_SECONDS = 15
# bounds, not targets (make test runs this beside another worker's tests)
ARCHIVE_TIMEOUT = 480
RESUME_TIMEOUT = 600


def _disk(host: Host, network: Network, *parts: str) -> dict:
    assert host.root is not None
    path = host.root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return {
        "kind": "disk",
        "path": str(path),
        "host": host.address,
        "port": 22,
        "user": "root",
        "known_hosts": network.known_hosts,
    }


def multihost_topology(network: Network) -> dict:
    """Every disk location names the host it is on: local to the code server of that host only,
    reached over SSH from everywhere else."""
    instrument, ccat, cologne, us = (network[n] for n in ("instrument", "ccat", "cologne", "us"))
    return {
        "sites": [
            {
                "short_name": "ccat",
                "name": "CCAT Observatory",
                "locations": [
                    {
                        "name": "primecam_raw_data",
                        "type": "SOURCE",
                        "storage": _disk(instrument, network, "primecam"),
                        "ingest": DEMO_INGEST,
                    },
                    {
                        "name": "telescope_buffer",
                        "type": "BUFFER",
                        "priority": 1,
                        "storage": _disk(ccat, network, "buffer"),
                    },
                ],
            },
            {
                "short_name": "cologne",
                "name": "University of Cologne",
                "locations": [
                    {
                        "name": "buffer",
                        "type": "BUFFER",
                        "storage": _disk(cologne, network, "buffer"),
                    },
                    {
                        "name": "lta",
                        "type": "LONG_TERM_ARCHIVE",
                        "storage": _disk(cologne, network, "lta"),
                    },
                ],
            },
            {
                "short_name": "us",
                "name": "US archive",
                "locations": [
                    {"name": "buffer", "type": "BUFFER", "storage": _disk(us, network, "buffer")},
                    {
                        "name": "lta",
                        "type": "LONG_TERM_ARCHIVE",
                        "storage": _disk(us, network, "lta"),
                    },
                ],
            },
        ],
        "policy": {
            "data_transfer_package_max_bytes": 2_000_000,
            "data_transfer_package_max_wait_minutes": 0,
            "retention_period_minutes": 0,
        },
    }


@dataclass
class HostsDeployment(Deployment):
    """A Deployment whose processes run on the hosts of ``network``."""

    network: Network | None = None

    def start_on(self, host: Host, name: str, argv: list[str], **env: str) -> ManagedProcess:
        return self.start(name, host.exec_argv(*argv), extra_env=env)

    def start_code_server_on(self, site: str) -> ManagedProcess:
        assert self.network is not None
        host = self.network[site]
        return self.start_on(
            host,
            f"code-server-{site}",
            [
                str(BIN / "dagster"),
                "code-server",
                "start",
                "-m",
                "ccat_dagster.sites.site",
                "-h",
                host.address,
                "-p",
                str(CODE_SERVER_PORT),
                "--location-name",
                site,
            ],
            CCAT_SITE=site,
            CCAT_HOST=host.address,
        )

    def stop(self, timeout: float = 90.0) -> list[str]:
        """As Deployment.stop (clients first, then ShutdownServer to each code server, then
        signals), the ShutdownServer call made from the code server's own host."""
        clients = [p for p in self.processes if not p.name.startswith("code-server")]
        servers = [p for p in self.processes if p.name.startswith("code-server")]
        killed = self._terminate(clients, timeout)
        for server in servers:
            if server.alive() and self.network is not None:
                site = server.name.removeprefix("code-server-")
                host = self.network[site]
                call = (
                    "from dagster._grpc.client import DagsterGrpcClient as C; "
                    f"C(port={CODE_SERVER_PORT}, host='{host.address}').shutdown_server(timeout=15)"
                )
                subprocess.run(
                    host.exec_argv(sys.executable, "-c", call), capture_output=True, timeout=60
                )
        killed += self._terminate(servers, timeout)
        for process in self.processes:
            _signal_group(process.popen.pid, signal.SIGKILL)
        return killed


@dataclass
class Running:
    network: Network
    deployment: HostsDeployment
    gql: GraphQLClient
    ops_db_url: str
    home: Path
    env: dict[str, str]


@pytest.fixture
def running(multihost: Network, tmp_path: Path) -> Iterator[Running]:
    network = multihost
    assert network.postgres is not None
    ops, pg = network["ops"], network.postgres
    # the test's own clients (GraphQL, psycopg2, `ccat verify`) run on the ops host
    with network.entered("ops"):
        pg_admin = pg.url()
        admin = sa.create_engine(pg_admin, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
        with admin.connect() as conn:
            conn.execute(sa.text('CREATE DATABASE "ops"'))
            conn.execute(sa.text('CREATE DATABASE "dagster"'))
        admin.dispose()
        ops_db_url, dagster_pg_url = pg.url("ops"), postgres_url_for_dagster(pg.url("dagster"))
        upgrade(ops_db_url)
        with session_scope(ops_db_url) as session:
            apply_topology(session, multihost_topology(network))
        network.limit_egress("ccat", TELESCOPE_UPLINK)

        home = tmp_path / "dagster_home"
        previous = os.environ.get("CCAT_OPS_DB_URL")
        os.environ["CCAT_OPS_DB_URL"] = ops_db_url
        try:
            write_postgres_instance(home, dagster_pg_url)
        finally:
            if previous is None:
                os.environ.pop("CCAT_OPS_DB_URL", None)
            else:
                os.environ["CCAT_OPS_DB_URL"] = previous
        workspace = tmp_path / "workspace.yaml"
        workspace.write_text(
            "load_from:\n"
            + "".join(
                f"  - grpc_server: {{host: {network[s].address}, port: {CODE_SERVER_PORT}, "
                f"location_name: {s}}}\n"
                for s in SITES
            )
        )
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("CCAT_", "DAGSTER_"))},
            "CCAT_OPS_DB_URL": ops_db_url,
            "DAGSTER_HOME": str(home),
            "DAGSTER_PG_URL": dagster_pg_url,
            "CCAT_SSH_KEY_FILE": network.key_file,
            "CCAT_SSH_KNOWN_HOSTS": network.known_hosts,
            **FAST_INTERVALS,
        }
        log_dir = tmp_path / "logs"
        log_dir.mkdir()
        deployment = HostsDeployment(root=REPO, env=env, log_dir=log_dir, network=network)
        try:
            for site in SITES:
                deployment.start_code_server_on(site)
            for site in SITES:
                address = network[site].address
                wait_until(
                    lambda a=address: (
                        deployment.check_alive() or code_server_ready(CODE_SERVER_PORT, host=a)
                    ),
                    timeout=120,
                    what=f"the code server of {site} to serve",
                    describe=deployment.logs,
                )
            deployment.start_on(
                ops, "daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)]
            )
            web = deployment.start_on(
                ops,
                "webserver",
                [
                    str(BIN / "dagster-webserver"),
                    "-w",
                    str(workspace),
                    "-h",
                    ops.address,
                    "-p",
                    str(WEBSERVER_PORT),
                ],
            )
            gql = GraphQLClient(WEBSERVER_PORT, host=ops.address)
            wait_until(
                lambda: deployment.check_alive() or gql.is_up(),
                timeout=120,
                what="dagster-webserver to answer",
                describe=web.log_tail,
            )
            yield Running(network, deployment, gql, ops_db_url, home, env)
        finally:
            deployment.stop()
            # the pooled connections of this process go before the cluster and its namespace
            _cached_engine(ops_db_url).dispose()
            _cached_engine.cache_clear()
            shutil.rmtree(ARTIFACTS / "logs", ignore_errors=True)
            shutil.copytree(log_dir, ARTIFACTS / "logs")


def _write_on_instrument(network: Network, prefix: str, wave: dict) -> int:
    """The instrument writes its files and markers, on the instrument computer."""
    instrument = network["instrument"]
    assert instrument.root is not None
    script = (
        "import sys; from pathlib import Path; "
        "from ccat_dagster.simulate import simulate_instrument; "
        f"simulate_instrument(Path(sys.argv[1]), modules={MODULES!r}, obs_unit_prefix={prefix!r}, "
        f"marker='.complete', seed={len(prefix)}, **{wave!r})"
    )
    subprocess.run(
        instrument.exec_argv(sys.executable, "-c", script, str(instrument.root / "primecam")),
        check=True,
        capture_output=True,
        timeout=120,
    )
    return wave["n_obs_units"] * wave["files_per_unit"] * len(MODULES)


def _archived(url: str, n_files: int) -> bool:
    """Every written file filed and packaged, every package ARCHIVED and PRESENT in both LTAs."""
    with session_scope(url) as session:
        filed = session.scalar(select(func.count()).select_from(RawDataFile)) or 0
        packages = session.scalars(select(RawDataPackage)).all()
        return (
            filed >= n_files
            and sum(p.file_count or 0 for p in packages) >= n_files
            and all(p.state == PackageState.ARCHIVED for p in packages)
            and not packages_missing_from_ltas(session)
        )


def _telescope_clean(url: str, n_files: int) -> bool:
    """At least ``n_files`` raw files were at the telescope, and every copy there (its buffer
    and the instrument computer) is DELETED."""
    telescope = copy_statuses(url, "ccat", LocationType.BUFFER) + copy_statuses(
        url, "ccat", LocationType.SOURCE
    )
    return len(telescope) >= n_files and all(s == PhysicalCopyStatus.DELETED for s in telescope)


def _done(url: str, n_files: int) -> bool:
    """Everything archived in both LTAs and the telescope cleaned."""
    return _archived(url, n_files) and _telescope_clean(url, n_files)


def _describe(running: Running):
    def describe() -> str:
        with session_scope(running.ops_db_url) as session:
            text = render_summary(pipeline_summary(session))
        return f"{text}\n{running.deployment.logs(1500)}"

    return describe


def test_sites_on_separate_hosts_archive_and_survive_a_cut_link(running: Running):
    network, gql, url, deployment = (
        running.network,
        running.gql,
        running.ops_db_url,
        running.deployment,
    )
    started = time.monotonic()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        timings[name] = round(time.monotonic() - started, 1)

    with network.entered("ops"):
        locations = wait_until(
            lambda: deployment.check_alive() or loaded_locations(gql, SITES),
            timeout=120,
            what="the three code locations (one per site host) to load",
            describe=lambda: deployment.logs(2000),
        )
        start_all_instigators(gql, locations)
        lap("sensors on")

        # ---- wave 1: written on the instrument computer, archived twice; its telescope
        # cleanup (the cleanup schedule, a minute's cron) goes on while wave 2 is on its way
        n_files = _write_on_instrument(network, "first", FIRST)
        wait_until(
            lambda: deployment.check_alive() or _archived(url, n_files),
            timeout=ARCHIVE_TIMEOUT,
            what="wave 1 ARCHIVED in both LTAs",
            interval=3,
            describe=_describe(running),
        )
        lap("wave 1 archived")

        # ---- wave 2: cologne is cut off while one of its transfer runs is in flight
        before = {r["runId"] for r in runs(gql)}
        n_files += _write_on_instrument(network, "second", SECOND)

        assert network["cologne"].root is not None
        partial = network["cologne"].root / "buffer" / ".ccat-partial"

        def bytes_in_flight() -> list[Path] | None:
            """cologne's transfer has written part of a bundle (its temporary file, renamed
            into place only when complete)."""
            deployment.check_alive()
            if not partial.is_dir():
                return None
            return [p for p in partial.iterdir() if p.is_file() and p.stat().st_size > 0] or None

        wait_until(
            bytes_in_flight,
            timeout=ARCHIVE_TIMEOUT,
            what="a cologne transfer with part of a bundle written",
            interval=0.2,
            describe=_describe(running),
        )
        network.link("cologne", up=False)
        lap("cologne cut off")
        written_at_cut = sum(p.stat().st_size for p in bytes_in_flight() or [])
        # the run whose bytes were on the way (the webserver in ops still answers)
        cut_runs = [
            r["runId"]
            for r in runs(gql)
            if r["runId"] not in before
            and r["jobName"] == "cologne_data_transfer"
            and r["status"] == "STARTED"
        ]
        assert cut_runs, "a cologne transfer run was in flight when its link went down"
        time.sleep(CUT_SECONDS)
        assert not _done(url, n_files)
        network.link("cologne", up=True)
        lap("cologne back")
        wait_until(
            lambda: deployment.check_alive() or _done(url, n_files),
            timeout=RESUME_TIMEOUT,
            what="everything ARCHIVED in both LTAs after the cut, the telescope cleaned",
            interval=3,
            describe=_describe(running),
        )
        lap("wave 2 archived, telescope clean")

        # ---- nothing lost: every file filed once, every package byte for byte in both LTAs
        with session_scope(url) as session:
            assert session.scalar(select(func.count()).select_from(RawDataFile)) == n_files
            packages = session.scalars(select(RawDataPackage)).all()
            for package in packages:
                for site in LTA_SITES:
                    root = network[site].root
                    assert root is not None
                    data = (root / "lta" / package.relative_path).read_bytes()
                    assert sha256(data) == package.checksum, f"{package.name} in {site}/lta"
        instrument_root = network["instrument"].root
        assert instrument_root is not None
        assert not [
            p
            for p in (instrument_root / "primecam").rglob("*")
            if p.is_file() and p.name != ".complete"
        ], "raw files deleted on the instrument computer"
        statuses = {r["runId"]: r["status"] for r in runs(gql)}
        cut_status = [statuses[run_id] for run_id in cut_runs]

        # ---- `ccat verify` from ops: the catalogue against every host's disk, over SSH
        verify = subprocess.run(
            [str(BIN / "ccat"), "verify"],
            env=running.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert verify.returncode == 0, f"{verify.stdout[-4000:]}\n{verify.stderr[-3000:]}"
        lap("verified")

        killed = deployment.stop()
        wait_until(
            lambda: not processes_with_env("DAGSTER_HOME", str(running.home)),
            timeout=30,
            what="every deployment process to exit",
        )
        assert not killed, f"needed SIGKILL: {killed}"
        lap("torn down")
    print(
        f"multihost test: the cologne transfer cut with {written_at_cut} bytes of a bundle "
        f"written ended {cut_status}; seconds since start: {timings}"
    )
