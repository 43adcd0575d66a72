"""A Dagster deployment as real processes, for the deployment test: one ``dagster code-server``
per site, ``dagster-daemon run`` and ``dagster-webserver`` on a PostgreSQL Dagster instance,
a workspace.yaml that reaches the code servers over gRPC, a small GraphQL client for the
webserver, headless Chromium screenshots, and a teardown that stops every process group it
started and reports anything left behind (found by the DAGSTER_HOME in a process's environment).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

HOST = "127.0.0.1"
REPOSITORY = "__repository__"  # the repository name of a Definitions object
BIN = Path(sys.executable).parent  # dagster, dagster-daemon, dagster-webserver of this venv
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 1.0,
    describe: Callable[[], str] | None = None,
) -> T:
    """Poll ``probe`` until it returns something truthy; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            detail = f"\n{describe()}" if describe else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


# --------------------------------------------------------------------------- configuration


def write_workspace(path: Path, code_server_ports: dict[str, int]) -> Path:
    """workspace.yaml with one ``grpc_server`` entry per site (location name = site)."""
    entries = [
        {"grpc_server": {"host": HOST, "port": port, "location_name": site}}
        for site, port in code_server_ports.items()
    ]
    path.write_text(yaml.safe_dump({"load_from": entries}, sort_keys=False))
    return path


def write_postgres_instance(home: Path, dagster_pg_url: str) -> Path:
    """``home/dagster.yaml`` as production writes it (``ccat_dagster.instance``), on PostgreSQL,
    with the storage schema created once here: several processes creating it at the same time on
    an empty database would race."""

    from ccat_dagster.instance import write_instance_config
    from ccat_dagster.runner import open_instance

    previous = os.environ.get("DAGSTER_PG_URL")
    os.environ["DAGSTER_PG_URL"] = dagster_pg_url
    try:
        config = write_instance_config(home)
        assert "postgres" in config.read_text(), f"{config} is not the PostgreSQL instance config"
        with open_instance(home) as instance:
            instance.get_runs_count()
    finally:
        if previous is None:
            os.environ.pop("DAGSTER_PG_URL", None)
        else:
            os.environ["DAGSTER_PG_URL"] = previous
    return config


def run_tag_limits(dagster_yaml: Path) -> dict[str, int]:
    """tag key -> run limit per unique value, from ``concurrency.runs.tag_concurrency_limits``."""
    config = yaml.safe_load(dagster_yaml.read_text()) or {}
    limits = (config.get("concurrency") or {}).get("runs", {}).get("tag_concurrency_limits", [])
    return {
        item["key"]: int(item["limit"])
        for item in limits
        if isinstance(item.get("value"), dict) and item["value"].get("applyLimitPerUniqueValue")
    }


def postgres_url_for_dagster(sqlalchemy_url: str) -> str:
    """The URL dagster-postgres hands to SQLAlchemy: the driver must be explicit, since
    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, which is not installed."""
    scheme, rest = sqlalchemy_url.split("://", 1)
    return f"{scheme.split('+', 1)[0]}+psycopg2://{rest}"


# --------------------------------------------------------------------------- processes


@dataclass
class ManagedProcess:
    name: str
    argv: list[str]
    popen: subprocess.Popen
    log_path: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""


@dataclass
class Deployment:
    """The processes of one deployment; every one is the leader of its own process group, so
    stopping it also stops what it spawned (the code servers' run workers)."""

    root: Path
    env: dict[str, str]
    log_dir: Path
    processes: list[ManagedProcess] = field(default_factory=list)
    webserver_port: int | None = None

    def start(
        self, name: str, argv: list[str], *, extra_env: dict[str, str] | None = None
    ) -> ManagedProcess:
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                argv,
                cwd=self.root,
                env={**self.env, **(extra_env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        process = ManagedProcess(name, argv, popen, log_path)
        self.processes.append(process)
        return process

    def start_code_server(
        self,
        site: str,
        port: int,
        *,
        module: str = "ccat_dagster.sites.site",
        extra_env: dict[str, str] | None = None,
    ) -> ManagedProcess:
        """As docker/compose.yaml starts it: the one site module, the site chosen by CCAT_SITE
        (``module``: another module serving it, e.g. a bench's baseline)."""
        return self.start(
            f"code-server-{site}",
            [
                str(BIN / "dagster"),
                "code-server",
                "start",
                "-m",
                module,
                "-h",
                HOST,
                "-p",
                str(port),
                "--location-name",
                site,
            ],
            extra_env={"CCAT_SITE": site, **(extra_env or {})},
        )

    def start_daemon(self, workspace: Path) -> ManagedProcess:
        return self.start("daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)])

    def start_webserver(self, workspace: Path, port: int) -> ManagedProcess:
        self.webserver_port = port
        return self.start(
            "webserver",
            [str(BIN / "dagster-webserver"), "-w", str(workspace), "-h", HOST, "-p", str(port)],
        )

    def check_alive(self) -> None:
        """Raise, with its log, if a process of the deployment has exited."""
        for process in self.processes:
            if not process.alive():
                raise RuntimeError(
                    f"{process.name} exited with status {process.popen.returncode}; "
                    f"last log lines:\n{process.log_tail()}"
                )

    def logs(self, chars: int = 3000) -> str:
        return "\n".join(f"--- {p.name}:\n{p.log_tail(chars)}" for p in self.processes)

    def stop(self, timeout: float = 90.0) -> list[str]:
        """Stop as an operator would: SIGTERM the webserver and the daemon (the code servers'
        clients) and wait for them, then the code servers, then SIGKILL what is left. A code
        server waits for the RPCs still open to it (up to Dagster's gRPC grace period, 60 s)
        before it exits, so its clients go first. Returns the names of the processes that had
        to be killed."""
        clients = [p for p in self.processes if not p.name.startswith("code-server")]
        servers = [p for p in self.processes if p.name.startswith("code-server")]
        killed = self._terminate(clients, timeout)
        for server in servers:
            _shutdown_code_server(server)
        killed += self._terminate(servers, timeout)
        # children that outlived their leader (run workers) are still in the group
        for process in self.processes:
            _signal_group(process.popen.pid, signal.SIGKILL)
        return killed

    @staticmethod
    def _terminate(processes: list[ManagedProcess], timeout: float) -> list[str]:
        """SIGTERM every process group of ``processes`` at once, wait up to ``timeout`` for
        them all, SIGKILL the ones still running; returns their names."""
        killed: list[str] = []
        for process in processes:
            _signal_group(process.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in processes:
            try:
                process.popen.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                killed.append(process.name)
                _signal_group(process.popen.pid, signal.SIGKILL)
                process.popen.wait(timeout=10)
        return killed


def _shutdown_code_server(process: ManagedProcess) -> None:
    """Ask a ``dagster code-server start`` to stop through its ShutdownServer call, as Dagster's
    own tooling does: its proxy process holds SIGTERM back (an idle one was seen alive 80 s after
    it, its main thread still in gRPC's wait_for_termination), while the call stops it in
    seconds. A server that does not answer is left to SIGTERM and SIGKILL."""
    from dagster._grpc.client import DagsterGrpcClient  # noqa: TID251 (test harness only)

    if not process.alive():
        return
    port = int(process.argv[process.argv.index("-p") + 1])
    try:
        DagsterGrpcClient(port=port, host=HOST).shutdown_server(timeout=15)
    except Exception:  # noqa: BLE001 (a dead or hung server: the signals follow)
        return


def code_server_ready(port: int, host: str = HOST) -> bool:
    """True once the code server on ``port`` reports SERVING to Dagster's public health check
    (``dagster api grpc-health-check``; no private Dagster module)."""
    check = [sys.executable, "-m", "dagster", "api", "grpc-health-check"]
    result = subprocess.run(
        [*check, "--port", str(port), "--host", host], capture_output=True, timeout=60
    )
    return result.returncode == 0


def _signal_group(pgid: int, sig: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def processes_with_env(name: str, value: str) -> list[tuple[int, str]]:
    """(pid, command line) of every process of this user whose environment has name=value."""
    needle = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            if needle in environ:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                found.append((int(entry.name), cmdline.strip()))
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
    return found


# --------------------------------------------------------------------------- GraphQL


class GraphQLError(RuntimeError):
    pass


@dataclass
class GraphQLClient:
    """POST queries to ``http://host:port/graphql``; errors raise GraphQLError with the query."""

    port: int
    host: str = HOST

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def is_up(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/server_info", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def __call__(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(
            f"{self.base_url}/graphql",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            payload = json.loads(response.read())
        if payload.get("errors"):
            raise GraphQLError(f"{payload['errors']}\nquery: {query}\nvariables: {variables}")
        return payload["data"]


WORKSPACE_QUERY = """
query Workspace {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on PythonError { message }
          ... on RepositoryLocation {
            repositories { name sensors { name } schedules { name } }
          }
        }
      }
    }
    ... on PythonError { message }
  }
}
"""

START_SENSOR = """
mutation StartSensor($selector: SensorSelector!) {
  startSensor(sensorSelector: $selector) {
    __typename
    ... on Sensor { name sensorState { status } }
    ... on PythonError { message }
    ... on SensorNotFoundError { message }
  }
}
"""

START_SCHEDULE = """
mutation StartSchedule($selector: ScheduleSelector!) {
  startSchedule(scheduleSelector: $selector) {
    __typename
    ... on ScheduleStateResult { scheduleState { name status } }
    ... on PythonError { message }
    ... on ScheduleNotFoundError { message }
  }
}
"""

RUNS_QUERY = """
query Runs($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    __typename
    ... on Runs {
      results {
        runId jobName status creationTime startTime endTime
        tags { key value }
      }
    }
    ... on PythonError { message }
  }
}
"""

LAUNCH_BACKFILL = """
mutation Backfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on PartitionKeysNotFoundError { message }
    ... on InvalidSubsetError { message }
    ... on UnauthorizedError { message }
  }
}
"""

BACKFILL_QUERY = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill {
      id status numPartitions partitionNames
      assetSelection { path }
      runs { runId status tags { key value } }
    }
    ... on PythonError { message }
    ... on BackfillNotFoundError { message }
  }
}
"""

# What the UI's "Skip" on its first-visit community dialog sends; the dialog would hide the graph.
SET_NUX_SEEN = "mutation { setNuxSeen }"

ASSET_NODES_QUERY = """
query AssetNodes {
  assetNodes {
    assetKey { path }
    groupName
    isMaterializable
    isPartitioned
    repository { location { name } }
    dependencyKeys { path }
    dependedByKeys { path }
  }
}
"""

ASSET_PARTITIONS_QUERY = """
query AssetPartitions($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    __typename
    ... on AssetNode {
      partitionKeys
      partitionStats { numMaterialized numPartitions }
      assetPartitionStatuses { ... on DefaultPartitionStatuses { materializedPartitions } }
    }
  }
}
"""


def shown_materialized(gql: GraphQLClient, path: list[str]) -> set[str]:
    """The partitions the UI shows as materialized: the status list, cut to the asset's keys as
    the partition bar and the counts do (both must agree)."""
    node = gql(ASSET_PARTITIONS_QUERY, {"key": {"path": path}})["assetNodeOrError"]
    keys = set(node["partitionKeys"])
    shown = set(node["assetPartitionStatuses"]["materializedPartitions"]) & keys
    if node["partitionStats"]["numMaterialized"] != len(shown):
        raise AssertionError(f"{path}: the UI counts {node['partitionStats']} but lists {shown}")
    return shown


ASSET_OBSERVATIONS_QUERY = """
query AssetObservations($key: AssetKeyInput!, $partitions: [String!]) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode {
      assetObservations(partitions: $partitions, limit: 1000) {
        partition
        runId
        metadataEntries { label __typename }
      }
    }
  }
}
"""


def partition_observations(
    gql: GraphQLClient, path: list[str], partitions: list[str]
) -> dict[str, set[str]]:
    """partition -> the metadata labels of its observations (what the asset's Events show)."""
    node = gql(ASSET_OBSERVATIONS_QUERY, {"key": {"path": path}, "partitions": partitions})
    found: dict[str, set[str]] = {}
    for obs in node["assetNodeOrError"]["assetObservations"]:
        found.setdefault(obs["partition"], set()).update(e["label"] for e in obs["metadataEntries"])
    return found


RUN_EVENTS_QUERY = """
query RunEvents($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run {
      status
      eventConnection(limit: 1000) {
        events {
          __typename
          ... on MessageEvent { message level stepKey }
          ... on ErrorEvent { error { message stack causes { message stack } } }
          ... on MaterializationEvent { assetKey { path } partition }
          ... on AssetCheckEvaluationEvent {
            evaluation { checkName success partition assetKey { path } }
          }
        }
      }
    }
  }
}
"""


def workspace_locations(gql: GraphQLClient) -> dict[str, dict[str, Any]]:
    data = gql(WORKSPACE_QUERY)["workspaceOrError"]
    if data["__typename"] != "Workspace":
        raise GraphQLError(f"workspace did not load: {data.get('message')}")
    return {entry["name"]: entry for entry in data["locationEntries"]}


def loaded_locations(gql: GraphQLClient, expected: Iterable[str]) -> dict[str, Any] | None:
    """The workspace's locations once every expected one is LOADED without an error, else None.
    A location that loaded with an error raises: waiting would not help."""
    try:
        locations = workspace_locations(gql)
    except (urllib.error.URLError, OSError):
        return None
    for name in expected:
        entry = locations.get(name)
        if entry is None or entry["loadStatus"] != "LOADED":
            return None
        loaded = entry["locationOrLoadError"]
        if loaded is None:
            return None
        if loaded["__typename"] != "RepositoryLocation":
            if "UNAVAILABLE" in (loaded.get("message") or ""):
                return None  # the code server is not serving yet
            raise GraphQLError(f"code location {name} failed to load: {loaded.get('message')}")
    return locations


def start_all_instigators(
    gql: GraphQLClient,
    locations: dict[str, Any],
    *,
    skip_schedules: Iterable[str] = (),
) -> list[str]:
    """Turn on every sensor and schedule of every location through the GraphQL mutations the UI
    uses; returns the names started."""
    skip = set(skip_schedules)
    started = []
    for location, entry in locations.items():
        for repo in entry["locationOrLoadError"]["repositories"]:
            base = {"repositoryLocationName": location, "repositoryName": repo["name"]}
            for sensor in repo["sensors"]:
                result = gql(START_SENSOR, {"selector": {**base, "sensorName": sensor["name"]}})
                state = result["startSensor"]
                if state["__typename"] != "Sensor" or state["sensorState"]["status"] != "RUNNING":
                    raise GraphQLError(f"could not start sensor {sensor['name']}: {state}")
                started.append(sensor["name"])
            for schedule in repo["schedules"]:
                if schedule["name"] in skip:
                    continue
                selector = {**base, "scheduleName": schedule["name"]}
                state = gql(START_SCHEDULE, {"selector": selector})["startSchedule"]
                if state["__typename"] != "ScheduleStateResult":
                    raise GraphQLError(f"could not start schedule {schedule['name']}: {state}")
                started.append(schedule["name"])
    return started


def runs(gql: GraphQLClient, **run_filter: Any) -> list[dict[str, Any]]:
    """Runs matching a RunsFilter (e.g. ``tags=[{"key": k, "value": v}]``), tags as a dict."""
    data = gql(RUNS_QUERY, {"filter": run_filter or None})["runsOrError"]
    if data["__typename"] != "Runs":
        raise GraphQLError(f"runsOrError: {data}")
    for run in data["results"]:
        run["tags"] = {t["key"]: t["value"] for t in run["tags"]}
    return data["results"]


def launch_asset_backfill(
    gql: GraphQLClient,
    asset_path: list[str],
    partitions: list[str],
    *,
    tags: dict[str, str] | None = None,
    title: str | None = None,
) -> str:
    params = {
        "assetSelection": [{"path": asset_path}],
        "partitionNames": partitions,
        "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()],
        "title": title,
    }
    result = gql(LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
    if result["__typename"] != "LaunchBackfillSuccess":
        raise GraphQLError(f"backfill of {'/'.join(asset_path)} was refused: {result}")
    return result["backfillId"]


def backfill(gql: GraphQLClient, backfill_id: str) -> dict[str, Any]:
    data = gql(BACKFILL_QUERY, {"id": backfill_id})["partitionBackfillOrError"]
    if data["__typename"] != "PartitionBackfill":
        raise GraphQLError(f"backfill {backfill_id}: {data}")
    for run in data["runs"]:
        run["tags"] = {t["key"]: t["value"] for t in run["tags"]}
    return data


def run_events(gql: GraphQLClient, run_id: str) -> dict[str, Any]:
    """The run's status and events: messages, errors, materializations, check evaluations."""
    return gql(RUN_EVENTS_QUERY, {"runId": run_id})["runOrError"]


def run_errors(gql: GraphQLClient, run_id: str) -> str:
    """What went wrong in a run, as its event log says: every ERROR-level event and every error
    with its stack and causes. Put first in a failing assertion so that a truncated CI log
    still shows the cause, not only the tail of the processes' logs."""
    data = run_events(gql, run_id)
    if data["__typename"] != "Run":
        return f"run {run_id}: {data}"
    lines = [f"run {run_id} ({data['status']}):"]
    for event in data["eventConnection"]["events"]:
        error = event.get("error")
        if event.get("level") != "ERROR" and not error:
            continue
        lines.append(
            f"  [{event['__typename']} {event.get('stepKey') or ''}] {event.get('message')}"
        )
        for part in (error, *error["causes"]) if error else ():
            lines.append(f"    {part['message']}{''.join(part['stack'][-6:])}")
    return "\n".join(lines)


def max_concurrent(intervals: Iterable[tuple[float, float]]) -> int:
    """The largest number of [start, end) intervals that overlap at one instant."""
    points = []
    for start, end in intervals:
        points += [(start, 1), (end, -1)]
    best = current = 0
    for _, step in sorted(points, key=lambda p: (p[0], p[1])):  # ends before starts
        current += step
        best = max(best, current)
    return best


# --------------------------------------------------------------------------- CLI


def dagster_job_launch(
    env: dict[str, str],
    cwd: Path,
    *,
    workspace: Path,
    location: str,
    job: str,
    run_config: dict[str, Any],
    tags: dict[str, str],
    timeout: float = 180,
) -> subprocess.CompletedProcess:
    """``dagster job launch`` (enqueues the run; the daemon dequeues and launches it)."""
    return subprocess.run(
        [
            str(BIN / "dagster"),
            "job",
            "launch",
            "-w",
            str(workspace),
            "-l",
            location,
            "-j",
            job,
            "--config-json",
            json.dumps(run_config),
            "--tags",
            json.dumps(tags),
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --------------------------------------------------------------------------- browser


def find_chromium() -> str | None:
    for name in CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _chromium(chromium: str, url: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
    """Load ``url`` in headless Chromium with a fresh profile and no background networking; the
    virtual-time budget lets the page's own requests finish before the output is taken."""
    profile = tempfile.mkdtemp(prefix="ccat-chromium-")
    try:
        return subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                f"--user-data-dir={profile}",
                "--window-size=1600,1000",
                "--virtual-time-budget=20000",
                *args,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=True,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def chromium_screenshot(
    chromium: str, url: str, path: Path, *, timeout: float = 120
) -> subprocess.CompletedProcess:
    """A PNG screenshot (1600x1000) of ``url`` once it has rendered."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return _chromium(chromium, url, f"--screenshot={path}", timeout=timeout)


def chromium_dom(chromium: str, url: str, *, timeout: float = 120) -> str:
    """The DOM of ``url`` after its scripts ran (what the user sees, as HTML)."""
    result = _chromium(chromium, url, "--dump-dom", timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"chromium could not load {url}: {result.stderr[-2000:]}")
    return result.stdout


def rendered_asset_nodes(dom: str) -> list[str]:
    """Names on the asset nodes the UI drew in its graph (long names are elided with "…")."""
    return re.findall(r'class="AssetNode_assetName[^"]*">([^<]*)<', dom)


def rendered_group_labels(dom: str, names: Iterable[str]) -> set[str]:
    """Which of ``names`` label a group box in the drawn graph."""
    return {name for name in names if re.search(rf">{re.escape(name)}</div>", dom)}
