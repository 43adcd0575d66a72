import os
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = [
    "ccat_dagster_tests.fixtures.databases",
    "ccat_dagster_tests.fixtures.sshd",
    "ccat_dagster_tests.fixtures.s3server",
    "ccat_dagster_tests.fixtures.alert_receivers",
    "ccat_dagster_tests.fixtures.netns",
]

#: test files that start whole deployments or fault harnesses (several processes each): under
#: pytest-xdist they are one unit of work, so two of them never load the machine at once
HEAVY_FILES = frozenset(
    {
        "test_faults.py",
        "test_deployment.py",
        "test_deployment_dead_runs.py",
        "test_multihost.py",
        "test_compose.py",
    }
)

#: `make test` runs the deployment tests after the rest, two at a time (``--dist loadfile``):
#: since their run workers start warm (ccat_dagster/run_workers.py) they wait far more than they
#: compute (a quarter of the two cores). Two fixed units of about the same length (2026-12-03,
#: alone: 287 + 49 s and 264 + 118 s), so neither worker ends up with both long ones.
DEPLOYMENT_PAIRS = {
    "test_deployment.py": "deployments: single host",
    "test_deployment_dead_runs.py": "deployments: single host",
    "test_multihost.py": "deployments: hosts and containers",
    "test_compose.py": "deployments: hosts and containers",
}


def pytest_xdist_make_scheduler(config, log):
    """``make test`` runs on pytest-xdist workers: each test file is one unit of work (its
    tests run in order on one worker, as they would alone), the heavy files together one.
    With ``--dist loadfile`` each file is a unit of its own but for the deployment tests, which
    run in their two pairs (DEPLOYMENT_PAIRS)."""
    from xdist.scheduler import LoadScopeScheduling

    side_by_side = config.getoption("dist") == "loadfile"

    class _FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = _file_of(nodeid)
            name = Path(path).name
            if side_by_side:
                return DEPLOYMENT_PAIRS.get(name, path)
            return "heavy" if name in HEAVY_FILES else path

    # the collection's order (longest first, below), not xdist's "most tests first", which put
    # the one-test fault harness (~7 minutes) last: the whole suite waited for it alone
    config.option.loadscopereorder = False
    return _FileScheduling(config, log)


def _file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Longest first, so that the short files fill the gaps at the end: the heavy files, then
    every file with a test marked slow, then the rest, each file's tests in their own order."""
    rank: dict[str, int] = {}
    for item in items:
        file = _file_of(item.nodeid)
        own = 0 if Path(file).name in HEAVY_FILES else 1 if item.get_closest_marker("slow") else 2
        rank[file] = min(rank.get(file, 2), own)
    items.sort(key=lambda item: rank[_file_of(item.nodeid)])


@pytest.fixture(autouse=True)
def _dagster_home_restored() -> Iterator[None]:
    """Each test leaves ``DAGSTER_HOME`` as it found it. Code that opens the default instance
    exports it (as ``ccat`` does for the processes it starts), and on a pytest-xdist worker a
    later test (e.g. one running the ``dagster`` CLI) would otherwise inherit a deleted
    temporary home."""
    before = os.environ.get("DAGSTER_HOME")
    yield
    if before is None:
        os.environ.pop("DAGSTER_HOME", None)
    else:
        os.environ["DAGSTER_HOME"] = before
