from pathlib import Path

pytest_plugins = [
    "ccat_dagster_tests.fixtures.databases",
    "ccat_dagster_tests.fixtures.sshd",
    "ccat_dagster_tests.fixtures.s3server",
]

#: test files that start whole deployments or fault harnesses (several processes each): under
#: pytest-xdist they are one unit of work, so two of them never load the machine at once
HEAVY_FILES = frozenset({"test_faults.py", "test_deployment.py", "test_deployment_dead_runs.py"})


def pytest_xdist_make_scheduler(config, log):
    """``make test`` runs on pytest-xdist workers: each test file is one unit of work (its
    tests run in order on one worker, as they would alone), the heavy files together one."""
    from xdist.scheduler import LoadScopeScheduling

    class _FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "heavy" if Path(path).name in HEAVY_FILES else path

    return _FileScheduling(config, log)
