pytest_plugins = [
    "ccat_dagster_tests.fixtures.databases",
    "ccat_dagster_tests.fixtures.sshd",
    "ccat_dagster_tests.fixtures.s3server",
]
