"""docker/compose.yaml started for real: the images built, the whole stack up, a package ingested
at the telescope's SOURCE volume and archived, everything torn down.

The engine, the base images and the host-network override come from docker/test/engine.sh and
ccat_dagster_tests/fixtures/compose.py (docker/README.md, "Testing the compose file"). The
production file is used as it is, except for what a bridge-less engine and compose v1 need: host
networking, the test's ports, and a topology with a quick bundling policy and without the S3
archive. The project's own commands run unchanged: ``ops-db-init`` (ops-DB migration, Dagster
instance migration, topology apply), the three code servers, the daemon and the webserver.

No skip: when the engine cannot be started or the images cannot be built, the test fails.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from ccat_dagster_tests.deployment_support import (
    START_SENSOR,
    GraphQLClient,
    GraphQLError,
    loaded_locations,
    wait_until,
)
from ccat_dagster_tests.fixtures.compose import (
    PORTS,
    SITES,
    WORK,
    ComposeProject,
    compose_cli,
    engine_answers,
    engine_sh,
    project_leftovers,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2700)]

UP_TIMEOUT = 300
ARCHIVE_TIMEOUT = 600  # a bound: ~4 min on a loaded 2-core machine
SOURCE = "/srv/ccat-data/ccat/primecam_raw_data"
N_OBS_UNITS, MODULES, FILES_PER_UNIT = 2, ("pcam_280ghz", "pcam_350ghz"), 3

DAEMON_HEALTH = """
{ instance { daemonHealth { allDaemonStatuses {
    daemonType required healthy lastHeartbeatTime
} } } }
"""

# Run as the image's user (ccat, uid 10001) in the telescope's code server: the instrument writes
# its files and, last, the marker the SOURCE's ingest key waits for.
INSTRUMENT = f"""
import json
from pathlib import Path
from ccat_dagster.simulate import simulate_instrument
files = simulate_instrument(
    Path({SOURCE!r}), n_obs_units={N_OBS_UNITS}, modules={MODULES!r},
    files_per_unit={FILES_PER_UNIT}, min_size=1_000, max_size=60_000, seed=15, marker=".complete",
)
print(json.dumps(len(files)))
"""


# The daemon evaluates sensors one after another: only the sensors that move data from the SOURCE
# into the archive run, so that a round of them takes seconds (alerts, probes, monitors,
# staging, scrubs and the schedules stay off; other tests cover them).
NOT_ON_THE_WAY_TO_THE_ARCHIVE = (
    "alert",
    "probe",
    "buffer_monitor",
    "release_claims",
    "staging",
    "reverification",
    "restore_drill",
)


def _start_pipeline_sensors(gql: GraphQLClient, locations: dict[str, Any]) -> list[str]:
    started = []
    for location, entry in locations.items():
        for repo in entry["locationOrLoadError"]["repositories"]:
            for sensor in repo["sensors"]:
                name = sensor["name"]
                if any(word in name for word in NOT_ON_THE_WAY_TO_THE_ARCHIVE):
                    continue
                selector = {
                    "repositoryLocationName": location,
                    "repositoryName": repo["name"],
                    "sensorName": name,
                }
                state = gql(START_SENSOR, {"selector": selector})["startSensor"]
                if state["__typename"] != "Sensor" or state["sensorState"]["status"] != "RUNNING":
                    raise GraphQLError(f"could not start sensor {name}: {state}")
                started.append(name)
    return started


def _status(project: ComposeProject) -> dict[str, Any]:
    out = project.run("exec", "-T", "ccat-code-server", "ccat", "status", "--json", timeout=120)
    return json.loads(out.stdout)


def _all_archived(project: ComposeProject, n_files: int) -> dict[str, Any] | None:
    status = _status(project)
    by_state = status["packages_by_state"]
    if status["files"]["count"] == n_files and by_state and set(by_state) == {"ARCHIVED"}:
        return status
    return None


def _daemons_healthy(gql: GraphQLClient) -> list[dict[str, Any]] | None:
    statuses = gql(DAEMON_HEALTH)["instance"]["daemonHealth"]["allDaemonStatuses"]
    required = [s for s in statuses if s["required"]]
    if required and all(s["healthy"] and s["lastHeartbeatTime"] for s in required):
        return statuses
    return None


def _processes_under(path: Path) -> list[str]:
    """Processes whose command line names ``path`` (the test engine's dockerd and containerd)
    or a containerd shim (a container still alive)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmdline or "containerd-shim" in cmdline:
            found.append(f"{proc.name}: {cmdline.strip()}")
    return found


def test_compose_stack_ingests_and_archives_a_package(tmp_path):
    timings: dict[str, float] = {}
    mark = time.monotonic()

    def lap(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        timings[name] = round(now - mark, 1)
        mark = now

    started_engine = not engine_answers()
    engine_sh("up")  # Debian's engine and docker-compose, dockerd, the base images
    lap("engine and base images")
    project = ComposeProject(tmp_path / "compose", compose_cli())
    gql = GraphQLClient(PORTS["webserver"], host="127.0.0.1")
    try:
        project.run("down", "-v", "--remove-orphans", "-t", "5", check=False)
        # the `build:` of compose.yaml (an image that is in no registry)
        project.run("build", timeout=1800)
        lap("image build")
        # waits for postgres healthy, ops-db-init done, the code servers healthy
        project.run("up", "-d", timeout=UP_TIMEOUT + 300)
        wait_until(gql.is_up, timeout=UP_TIMEOUT, what="the webserver", interval=2)
        lap("up")
        # every location LOADED and without a load error (the race on the instance schema left
        # one LOADED with a PythonError); a load error raises at once
        locations = wait_until(
            lambda: loaded_locations(gql, SITES),
            timeout=UP_TIMEOUT,
            what="every code location loaded",
            interval=2,
        )
        for site in SITES:
            loaded = locations[site]["locationOrLoadError"]
            assert loaded["__typename"] == "RepositoryLocation", (site, loaded)
        daemons = wait_until(
            lambda: _daemons_healthy(gql),
            timeout=UP_TIMEOUT,
            what="the daemon's heartbeats",
            interval=3,
            describe=lambda: json.dumps(gql(DAEMON_HEALTH)),
        )
        assert daemons
        lap("locations loaded, daemon heartbeats")

        # the instrument writes into the SOURCE volume as the image's user
        written = project.run("exec", "-T", "ccat-code-server", "python", "-c", INSTRUMENT)
        n_files = json.loads(written.stdout.strip().splitlines()[-1])
        assert n_files == N_OBS_UNITS * len(MODULES) * FILES_PER_UNIT
        started = _start_pipeline_sensors(gql, locations)
        assert "ccat_primecam_raw_data_ingest_sensor" in started, started
        status = wait_until(
            lambda: _all_archived(project, n_files),
            timeout=ARCHIVE_TIMEOUT,
            what="every package ARCHIVED",
            interval=5,
            describe=lambda: (
                json.dumps(_status(project), indent=1)
                + project.run("logs", "--tail", "60", check=False).stdout[-8000:]
            ),
        )
        lap("ingest to ARCHIVED")
        assert status["packages_by_state"]["ARCHIVED"] >= N_OBS_UNITS * len(MODULES)
        copies = {(c["location"], c["status"]) for c in status["copies"]}
        assert any(location == "us/lta" for location, _ in copies), status["copies"]
    finally:
        project.run("down", "-v", "--remove-orphans", "-t", "10", timeout=300, check=False)
        leftovers = project_leftovers()
        if started_engine:
            engine_sh("stop", timeout=120)
        lap("down")
        print(f"compose test timings (s): {timings}")
    assert not any(leftovers.values()), f"left behind by the compose project: {leftovers}"
    if started_engine:
        left = _processes_under(WORK)
        assert not left, f"processes left behind: {left}"
