"""The platform as a deployment: real processes, driven only by the Dagster daemon.

One ``dagster code-server`` per site of the three-site topology (ccat over a real sshd, its
SOURCE on an "instrument computer" reached over SSH, the cologne LTA on the moto S3 server, the
us LTA on disk), ``dagster-daemon run`` and
``dagster-webserver`` on a PostgreSQL Dagster instance, the ops DB on PostgreSQL too. The test
turns the sensors and schedules on through the webserver's GraphQL API, files a few hundred raw
files and waits until the daemon alone has archived every package in both LTAs and the cleanup
schedule has emptied the telescope site; then launches a manual cleanup with ``dagster job
launch`` and an asset backfill, checks them through GraphQL (and the per-site run limit of
dagster.yaml), screenshots the asset lineage in headless Chromium into ``test-artifacts/``, and
tears everything down, leaving no process behind.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from ccat_dagster.cli._summary import render_summary
from ccat_dagster.lifecycle.capacity.run_limits import site_run_limit
from ccat_dagster.lifecycle.summary import packages_missing_from_ltas, pipeline_summary
from ccat_dagster_tests.deployment_support import (
    ASSET_NODES_QUERY,
    SET_NUX_SEEN,
    Deployment,
    GraphQLClient,
    backfill,
    chromium_dom,
    chromium_screenshot,
    code_server_ready,
    dagster_job_launch,
    find_chromium,
    free_port,
    launch_asset_backfill,
    loaded_locations,
    max_concurrent,
    partition_observations,
    postgres_url_for_dagster,
    processes_with_env,
    rendered_asset_nodes,
    rendered_group_labels,
    run_errors,
    run_events,
    run_tag_limits,
    runs,
    shown_materialized,
    start_all_instigators,
    wait_until,
    write_postgres_instance,
    write_workspace,
)
from ccat_dagster_tests.fixtures.ci import unavailable
from ccat_dagster_tests.fixtures.databases import (
    create_pg_database,
    drop_pg_database,
    require_postgres,
)
from ccat_dagster_tests.pipeline_support import (
    MARKER_INGEST,
    copy_statuses,
    drop_simulated_data,
    real_topology,
    sha256,
)
from ccat_ops_db.models import (
    AuditLog,
    DataLocation,
    DataTransferPackage,
    LocationType,
    PackageState,
    PhysicalCopy,
    PhysicalCopyStatus,
    RawDataPackage,
    RawDataPackagePhysicalCopy,
    Site,
)
from ccat_ops_db.policy import Policy
from ccat_ops_db.session import session_scope
from ccat_ops_db.topology import apply_topology

# a whole deployment archiving 300 files under the daemon: minutes, more on busy cores (a bound,
# not a target; pytest's default 600 s was hit on a loaded machine)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "deployment"
SITES = ("ccat", "cologne", "us")
LTA_SITES = ("cologne", "us")
# Daemon-driven, so intervals are short; the daemon's own loop bounds sensor ticks below anyway.
FAST_INTERVALS = {
    "CCAT_SENSOR_INTERVAL_SECONDS": "5",
    "CCAT_MONITOR_INTERVAL_SECONDS": "30",
    "CCAT_CLEANUP_CRON": "* * * * *",
    "CCAT_ALERT_INTERVAL_SECONDS": "5",
}
# Left STOPPED so that the manual `dagster job launch` below has the us buffer still to clean.
MANUAL_ONLY_SCHEDULE = "us_cleanup_schedule"
N_OBS_UNITS, FILES_PER_UNIT = 10, 15  # x 2 instrument modules = 300 raw files
# more than the per-site run limit (the instance is written for the default policy), so the
# queue must hold some; at most the 20 packages there are
BACKFILL_PARTITIONS = site_run_limit(Policy()) + 2
assert BACKFILL_PARTITIONS <= N_OBS_UNITS * 2
ARCHIVE_TIMEOUT = 600  # a bound, not a target: the figures are in docs/performance.md
FINAL_TIMEOUT = 240
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")


@pytest.fixture
def chromium() -> str:
    path = find_chromium()
    if path is None:
        message = "headless Chromium is not installed (Debian package chromium; `make test`)"
        unavailable(message)
    return path


@pytest.fixture
def dagster_pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for the Dagster instance (runs, events, schedules)."""
    require_postgres()
    name = f"ccat_test_dagster_{uuid.uuid4().hex[:10]}"
    url = create_pg_database(name)
    yield postgres_url_for_dagster(url)
    drop_pg_database(name)


@dataclass
class Running:
    deployment: Deployment
    gql: GraphQLClient
    ops_db_url: str
    root: Path
    home: Path
    workspace: Path
    dagster_yaml: Path
    env: dict[str, str]


@pytest.fixture
def running(
    tmp_path,
    sshd_server,
    s3_endpoint,
    s3_bucket,
    fresh_postgres_url,
    dagster_pg_url,
    chromium,
    alert_webhook,
    alert_smtp,
) -> Iterator[Running]:
    root = tmp_path / "sites"
    topology = real_topology(
        root,
        sshd=sshd_server,
        s3_endpoint=s3_endpoint,
        bucket=s3_bucket,
        # a few RawDataPackages per bundle; copies may go as soon as the rules allow
        policy={"data_transfer_package_max_bytes": 600_000, "retention_period_minutes": 0},
        ingest=MARKER_INGEST,
        # the instrument computer: the same sshd under another name, so that the telescope's
        # code server (on the buffer's host, 127.0.0.1) reaches the SOURCE over SSH
        source_host=sshd_server.known_as("localhost", tmp_path),
    )
    # the code servers read the topology from the ops DB when they load
    with session_scope(fresh_postgres_url) as session:
        apply_topology(session, topology)

    home = tmp_path / "dagster_home"
    dagster_yaml = write_postgres_instance(home, dagster_pg_url)
    ports = {site: free_port() for site in SITES}
    workspace = write_workspace(tmp_path / "workspace.yaml", ports)
    env = {
        **os.environ,  # AWS_* of the moto server fixture
        "CCAT_OPS_DB_URL": fresh_postgres_url,
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_URL": dagster_pg_url,
        "CCAT_SSH_KEY_FILE": sshd_server.key_file,
        "CCAT_HOST": sshd_server.host,
        # the alerts go to a real local webhook receiver and a real local SMTP server
        "CCAT_ALERT_WEBHOOK_URL": alert_webhook.url,
        "CCAT_ALERT_SMTP_HOST": "127.0.0.1",
        "CCAT_ALERT_SMTP_PORT": str(alert_smtp.port),
        "CCAT_ALERT_SMTP_TO": "oncall@example.org",
        **FAST_INTERVALS,
    }
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    deployment = Deployment(root=REPO, env=env, log_dir=log_dir)
    try:
        for site, port in ports.items():
            deployment.start_code_server(site, port)
        for site, port in ports.items():
            wait_until(
                lambda port=port: deployment.check_alive() or code_server_ready(port),
                timeout=120,
                what=f"the code server of {site} to serve",
                describe=deployment.logs,
            )
        deployment.start_daemon(workspace)
        web = deployment.start_webserver(workspace, free_port())
        gql = GraphQLClient(deployment.webserver_port)
        wait_until(
            lambda: deployment.check_alive() or gql.is_up(),
            timeout=120,
            what="dagster-webserver to answer",
            describe=web.log_tail,
        )
        yield Running(deployment, gql, fresh_postgres_url, root, home, workspace, dagster_yaml, env)
    finally:
        deployment.stop()  # a no-op when the test tore down itself
        shutil.rmtree(ARTIFACTS / "logs", ignore_errors=True)
        shutil.copytree(log_dir, ARTIFACTS / "logs")


def _all(statuses: list[PhysicalCopyStatus], status: PhysicalCopyStatus) -> bool:
    return bool(statuses) and all(s == status for s in statuses)


def _archived_in_every_lta(url: str, n_files: int) -> bool:
    """Every filed file is in a package, every package ARCHIVED and PRESENT in both LTAs."""
    with session_scope(url) as session:
        packages = session.scalars(select(RawDataPackage)).all()
        packaged = sum(p.file_count or 0 for p in packages)
        return (
            bool(packages)
            and packaged >= n_files
            and all(p.state == PackageState.ARCHIVED for p in packages)
            and not packages_missing_from_ltas(session)
        )


def _telescope_clean(url: str) -> bool:
    return _all(
        copy_statuses(url, "ccat", LocationType.BUFFER), PhysicalCopyStatus.DELETED
    ) and _all(copy_statuses(url, "ccat", LocationType.SOURCE), PhysicalCopyStatus.DELETED)


def _summary(url: str, deployment: Deployment):
    def describe() -> str:
        with session_scope(url) as session:
            text = render_summary(pipeline_summary(session))
        return f"{text}\n{deployment.logs(1500)}"

    return describe


def _held(url: str, site: str, location: str, kind: str) -> set[str]:
    """The packages (bundles) with a copy at the location that still holds its data."""
    model, fk = (
        (DataTransferPackage, PhysicalCopy.data_transfer_package_id)
        if kind == "data_transfer_package"
        else (RawDataPackage, PhysicalCopy.raw_data_package_id)
    )
    gone = (PhysicalCopyStatus.DELETED, PhysicalCopyStatus.BAD, PhysicalCopyStatus.LOST)
    with session_scope(url) as session:
        return set(
            session.scalars(
                select(model.name)
                .join(PhysicalCopy, fk == model.id)
                .join(DataLocation, DataLocation.id == PhysicalCopy.data_location_id)
                .join(Site, Site.id == DataLocation.site_id)
                .where(
                    Site.short_name == site,
                    DataLocation.name == location,
                    PhysicalCopy.status.not_in(gone),
                )
            )
        )


def _finished(found: list[dict]) -> bool:
    return bool(found) and all(r["status"] in FINISHED for r in found)


def _tag_filter(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"key": k, "value": v} for k, v in tags.items()]


def test_daemon_alone_archives_everything_cleans_the_telescope_and_serves_the_ui(
    running: Running, s3_client, s3_bucket, sshd_server, chromium, alert_webhook, alert_smtp
):
    gql, url, root, deployment = running.gql, running.ops_db_url, running.root, running.deployment
    started = time.monotonic()
    timings: dict[str, float] = {}
    ssh_before = set(sshd_server.connection_pids())  # pooled by earlier tests of this session

    def lap(name: str) -> None:
        timings[name] = round(time.monotonic() - started, 1)

    # ---- the workspace reaches every site's code server over gRPC
    locations = wait_until(
        lambda: deployment.check_alive() or loaded_locations(gql, SITES),
        timeout=120,
        what="all three code locations to load in the webserver",
        describe=lambda: deployment.logs(2000),
    )
    lap("code locations loaded")

    # ---- sensors and schedules on, through Dagster's own interface
    instigators = start_all_instigators(gql, locations, skip_schedules=[MANUAL_ONLY_SCHEDULE])
    assert {
        "ccat_primecam_raw_data_ingest_sensor",
        "ccat_raw_data_package_creation_sensor",
        "ccat_cleanup_schedule",
    } <= set(instigators)
    assert {"us_long_term_archive_transfer_sensor", "cologne_data_transfer_sensor"} <= set(
        instigators
    )

    # ---- the instrument writes a few hundred raw files and their markers at the telescope;
    # nobody files them: the telescope SOURCE's ingest sensor does
    files = drop_simulated_data(
        root, n_obs_units=N_OBS_UNITS, files_per_unit=FILES_PER_UNIT, max_size=20_000
    )
    assert len(files) == N_OBS_UNITS * FILES_PER_UNIT * 2

    # ---- the daemon alone archives every package in both LTAs
    wait_until(
        lambda: deployment.check_alive() or _archived_in_every_lta(url, len(files)),
        timeout=ARCHIVE_TIMEOUT,
        what="every package ARCHIVED and PRESENT in both LTAs",
        interval=3,
        describe=_summary(url, deployment),
    )
    lap("archived in both LTAs")
    with session_scope(url) as session:
        packages = session.scalars(select(RawDataPackage).order_by(RawDataPackage.id)).all()
        package_names = [p.name for p in packages]
    # the us buffer is left to the manual cleanup below (its schedule stays off)
    assert _all(copy_statuses(url, "us", LocationType.BUFFER), PhysicalCopyStatus.PRESENT)

    # ---- meanwhile: a backfill of the us LTA asset over a set of partitions (GraphQL) ...
    chosen = package_names[:BACKFILL_PARTITIONS]
    backfill_id = launch_asset_backfill(
        gql, ["us", "lta", "raw_data_package"], chosen, tags={"ccat/site": "us"}
    )
    # ... and a manual cleanup of the us buffer with `dagster job launch` (the daemon runs it)
    manual_tags = {"ccat/trigger": f"deployment-test-{uuid.uuid4().hex[:6]}"}
    launched = dagster_job_launch(
        running.env,
        REPO,
        workspace=running.workspace,
        location="us",
        job="us_cleanup",
        run_config={"ops": {"us_cleanup_lta_presence": {"config": {"location": "buffer"}}}},
        tags=manual_tags,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]

    # ---- wait (bounded) for the scheduled telescope cleanup, the manual run and the backfill
    def all_done():
        deployment.check_alive()
        manual_runs = runs(gql, tags=_tag_filter(manual_tags))
        state = backfill(gql, backfill_id)
        backfill_done = state["status"] not in ("REQUESTED", "CANCELING") and _finished(
            state["runs"]
        )
        if _telescope_clean(url) and _finished(manual_runs) and backfill_done:
            return manual_runs, state
        return None

    manual_runs, backfilled = wait_until(
        all_done,
        timeout=FINAL_TIMEOUT,
        what="the telescope cleanup, the manual us_cleanup run and the backfill",
        interval=3,
        describe=lambda: f"{backfill(gql, backfill_id)}\n{_summary(url, deployment)()}",
    )
    lap("cleaned, manual run and backfill finished")

    # the bytes in both LTAs are the packages, byte for byte
    with session_scope(url) as session:
        packages = session.scalars(select(RawDataPackage).order_by(RawDataPackage.id)).all()
        for package in packages:
            s3 = s3_client.get_object(Bucket=s3_bucket, Key=f"raw/{package.relative_path}")
            assert sha256(s3["Body"].read()) == package.checksum, f"{package.name} in cologne/lta"
            disk = (root / "us" / "lta" / package.relative_path).read_bytes()
            assert sha256(disk) == package.checksum, f"{package.name} in us/lta"
        for site in LTA_SITES:
            lta = session.scalars(
                select(RawDataPackagePhysicalCopy.status)
                .join(DataLocation)
                .join(Site)
                .where(
                    Site.short_name == site,
                    DataLocation.location_type == LocationType.LONG_TERM_ARCHIVE,
                    RawDataPackagePhysicalCopy.verified_at.is_not(None),
                )
            ).all()
            assert len(lta) == len(packages)
            assert _all(lta, PhysicalCopyStatus.PRESENT)
        deleters_at = {
            site: set(
                session.scalars(
                    select(AuditLog.run_id)
                    .join(DataLocation, DataLocation.id == AuditLog.data_location_id)
                    .join(Site)
                    .where(Site.short_name == site, AuditLog.new_status == "DELETED")
                )
            )
            for site in ("ccat", "us")
        }

    # every run: launched by a sensor, a schedule, the backfill or the manual launch; none failed.
    # The daemon keeps running the schedules, so a cleanup may have started meanwhile: read the
    # runs once none is queued or running.
    all_runs = wait_until(
        lambda: (listed := runs(gql)) and _finished(listed) and listed,
        timeout=FINAL_TIMEOUT,
        what="every run to finish",
        interval=3,
    )
    by_id = {r["runId"]: r for r in all_runs}
    failed = [(r["jobName"], r["runId"]) for r in all_runs if r["status"] != "SUCCESS"]
    assert not failed, (
        f"runs that did not succeed: {failed}\n"
        + "\n".join(run_errors(gql, run_id) for _, run_id in failed)
        + f"\n{deployment.logs()}"
    )
    daemon_runs = [
        r
        for r in all_runs
        if "dagster/backfill" not in r["tags"] and "ccat/trigger" not in r["tags"]
    ]
    origin = {
        r["runId"]: r["tags"].get("dagster/sensor_name") or r["tags"].get("dagster/schedule_name")
        for r in daemon_runs
    }
    assert all(origin.values()), "the pipeline ran from sensors and schedules only"
    assert {r["tags"]["dagster/code_location"] for r in daemon_runs} == set(SITES)

    # the telescope site was cleaned by its schedule, by the deletion rules: bytes gone too
    assert deleters_at["ccat"]
    assert all(origin.get(run_id) == "ccat_cleanup_schedule" for run_id in deleters_at["ccat"])
    buffer = root / "ccat" / "buffer"
    assert not [p for p in buffer.rglob("*") if p.is_file()], "telescope buffer emptied"
    assert not any(f.path.exists() for f in files), "raw files deleted at the source"

    # the manual cleanup: one us_cleanup run from `dagster job launch`; the us buffer is empty,
    # the us LTA untouched
    [manual] = manual_runs
    assert manual["jobName"] == "us_cleanup"
    assert manual["tags"]["dagster/code_location"] == "us"
    assert deleters_at["us"] == {manual["runId"]}
    assert _all(copy_statuses(url, "us", LocationType.BUFFER), PhysicalCopyStatus.DELETED)
    lta_us = copy_statuses(url, "us", LocationType.LONG_TERM_ARCHIVE)
    assert _all(lta_us, PhysicalCopyStatus.PRESENT)

    # the backfill: one run per partition, each with a passed live lta_presence check
    assert backfilled["status"] in ("COMPLETED", "COMPLETED_SUCCESS"), backfilled
    assert sorted(backfilled["partitionNames"]) == sorted(chosen)
    assert sorted(r["tags"]["dagster/partition"] for r in backfilled["runs"]) == sorted(chosen)
    checked = {}
    for run in backfilled["runs"]:
        for event in run_events(gql, run["runId"])["eventConnection"]["events"]:
            if event["__typename"] != "AssetCheckEvaluationEvent":
                continue
            evaluation = event["evaluation"]
            # the asset's other checks (location_available) run in the same backfill
            if evaluation["checkName"] == "lta_presence":
                checked[evaluation["partition"]] = evaluation["success"]
    assert checked == dict.fromkeys(chosen, True), "a passed live lta_presence check per partition"

    # ---- the run limit per site of dagster.yaml (tag_concurrency_limits on ccat/site) held,
    # also while the backfill queued more runs of one site than the limit
    limit = run_tag_limits(running.dagster_yaml)["ccat/site"]
    for site in SITES:
        spans = [
            (r["startTime"], r["endTime"]) for r in all_runs if r["tags"].get("ccat/site") == site
        ]
        assert max_concurrent(spans) <= limit, f"more than {limit} runs of {site} at once"
    us_runs = [r for r in all_runs if r["tags"].get("ccat/site") == "us"]
    waiting_or_running = max_concurrent((r["creationTime"], r["endTime"]) for r in us_runs)
    assert waiting_or_running > limit, "the backfill put more us runs in the queue than the limit"
    assert all(by_id[r["runId"]]["tags"].get("ccat/site") == "us" for r in backfilled["runs"])

    # ---- a run that fails is told to the people on call, through both channels, once
    assert not alert_webhook.bodies, f"no incident so far: {alert_webhook.bodies}"
    broken = dagster_job_launch(
        running.env,
        REPO,
        workspace=running.workspace,
        location="ccat",
        job="ccat_cleanup",
        run_config={"ops": {"ccat_cleanup_lta_presence": {"config": {"location": "nowhere"}}}},
        tags={"ccat/trigger": "deployment-test-alert"},
    )
    assert broken.returncode == 0, broken.stderr[-3000:]
    [alert] = wait_until(
        lambda: [b for b in alert_webhook.bodies if b.get("kind") == "run_failed"],
        timeout=FINAL_TIMEOUT,
        what="the run_failed alert at the webhook receiver",
        interval=2,
        describe=lambda: deployment.logs(1500),
    )
    assert alert["where"] == "ccat_cleanup@ccat", alert
    assert alert["state"] == "open", alert
    assert "nowhere" in alert["text"], alert  # what went wrong, in the message itself
    wait_until(
        lambda: [m for m in alert_smtp.mails if m["Subject"].startswith("[ccat] ALERT run_failed")],
        timeout=60,
        what="the run_failed alert by e-mail",
    )
    time.sleep(15)  # three alert ticks: the incident is not sent again
    assert len([b for b in alert_webhook.bodies if b.get("kind") == "run_failed"]) == 1

    # ---- cross-site lineage: through GraphQL ...
    nodes = {tuple(n["assetKey"]["path"]): n for n in gql(ASSET_NODES_QUERY)["assetNodes"]}
    owner = {k: n["repository"]["location"]["name"] for k, n in nodes.items()}
    for site in LTA_SITES:
        parents = {
            tuple(d["path"])
            for d in nodes[(site, "buffer", "data_transfer_package")]["dependencyKeys"]
        }
        assert ("ccat", "telescope_buffer", "data_transfer_package") in parents
        key, chain = (site, "lta", "raw_data_package"), []
        while key:  # from this LTA up to the raw files at the telescope
            chain.append(key)
            deps = [tuple(d["path"]) for d in nodes[key]["dependencyKeys"]]
            key = deps[0] if deps else None
        assert chain[-1] == ("ccat", "primecam_raw_data", "raw_data_files"), chain
        assert [owner[k] for k in chain] == [site] * 3 + ["ccat"] * 3

    # ---- the UI tells the truth: every partitioned asset shows as materialized exactly what
    # the catalogue has at its location (eventually: a scheduled cleanup may be under way)
    partitioned = [list(k) for k, n in nodes.items() if n["isPartitioned"]]
    assert len(partitioned) == 2 + 3 * len(LTA_SITES), partitioned  # no PROCESSING here

    def ui_vs_catalogue() -> dict[str, tuple[set[str], set[str]]]:
        return {
            "/".join(path): (shown, held)
            for path in partitioned
            if (shown := shown_materialized(gql, path)) != (held := _held(url, *path))
        }

    wait_until(
        lambda: not ui_vs_catalogue(),
        timeout=FINAL_TIMEOUT,
        what="the UI's materialized partitions to match the catalogue",
        interval=5,
        describe=lambda: str(ui_vs_catalogue()),
    )
    telescope_packages = ["ccat", "telescope_buffer", "raw_data_package"]
    assert shown_materialized(gql, telescope_packages) == set(), "deleted copies are not green"
    for site in LTA_SITES:
        assert shown_materialized(gql, [site, "lta", "raw_data_package"]) == set(package_names)
    # the deletion shows on the asset: rule, time, live LTA evidence, run
    deleted = partition_observations(gql, telescope_packages, package_names)
    assert set(deleted) == set(package_names)
    assert all({"status", "reason", "ended_at", "evidence", "run"} <= d for d in deleted.values())

    # ... and drawn by the UI in headless Chromium
    assert gql(SET_NUX_SEEN)["setNuxSeen"]
    upstream = f"{gql.base_url}/assets/us/lta/raw_data_package?view=lineage&lineageScope=upstream"
    dom = chromium_dom(chromium, f"{upstream}&lineageDepth=6")
    drawn = rendered_asset_nodes(dom)
    assert "raw_data_files" in drawn, drawn
    assert len(drawn) == 6, drawn
    assert rendered_group_labels(dom, SITES) == {"ccat", "us"}
    telescope_asset = f"{gql.base_url}/assets/ccat/telescope_buffer/raw_data_package"
    for name, page in [
        ("asset-lineage-us-lta-upstream.png", f"{upstream}&lineageDepth=6"),
        ("global-asset-lineage.png", f"{gql.base_url}/asset-groups"),
        ("us-lta-partitions.png", f"{gql.base_url}/assets/us/lta/raw_data_package?view=partitions"),
        (
            "telescope-buffer-deletion.png",
            f"{telescope_asset}?view=events&partition={package_names[0]}",
        ),
    ]:
        shot = ARTIFACTS / name
        shot.unlink(missing_ok=True)
        browser = chromium_screenshot(chromium, page, shot)
        assert browser.returncode == 0, browser.stderr[-2000:]
        assert shot.stat().st_size > 30_000, f"{shot} is a rendered page"
    lap("UI checked")

    # ---- tear down: every process group stopped, nothing left behind
    killed = deployment.stop()
    wait_until(
        lambda: not processes_with_env("DAGSTER_HOME", str(running.home)),
        timeout=30,
        what="every deployment process to exit",
        describe=lambda: str(processes_with_env("DAGSTER_HOME", str(running.home))),
    )
    wait_until(
        lambda: set(sshd_server.connection_pids()) <= ssh_before,
        timeout=30,
        what="the SSH connections of the runs to close",
    )
    assert not killed, f"needed SIGKILL: {killed}"
    lap("torn down")
    print(f"deployment test: {len(all_runs)} runs; seconds since start: {timings}")
