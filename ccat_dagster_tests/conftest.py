pytest_plugins = [
    "ccat_dagster_tests.fixtures.databases",
]
