"""``ccat`` commands forked from a process that has imported the CLI, Dagster and the sites' code
once: a command starts in milliseconds instead of the second or two of imports (more on a busy
machine), and is still a process of its own. The fault harness's zygote and the documentation
test's command server (``ccat_server``) fork their commands this way."""

from __future__ import annotations

import importlib
import sys
import threading

#: what the commands import on their way: the sites' code, pandas, dagster-aws, the tests'
#: Dagster storages, the migrations
PRELOAD = (
    "ccat_dagster.cli",
    "ccat_dagster.runner",
    "ccat_dagster.defs.definitions",
    "ccat_dagster.defs.s3_resource",
    "ccat_dagster.storage.ssh",
    "ccat_dagster_tests.dagster_instance",
    "ccat_ops_db.migrate",
    "pandas",
)


def preload() -> None:
    """Import ``PRELOAD`` and read botocore's S3 model, before forking anything. The warm-up
    client has credentials of its own, so that nothing looks for any (boto3's chain would end by
    asking an instance metadata address). Raises ``RuntimeError`` when the preload left a thread
    running: a process that forks must be single-threaded (a child would inherit locks held by
    threads it does not have)."""
    for module in PRELOAD:
        importlib.import_module(module)
    from ccat_dagster.storage.s3 import boto3_session

    boto3_session().client(
        "s3", region_name="us-east-1", aws_access_key_id="preload", aws_secret_access_key="preload"
    )
    if threading.active_count() != 1:
        names = ", ".join(thread.name for thread in threading.enumerate())
        raise RuntimeError(f"the preload left threads running ({names}); forking is unsafe")


def run_ccat(args: list[str]) -> int:
    """Run ``ccat ARGS`` in this (forked) process; its exit status (1 for a crash)."""
    code = 0
    try:
        from ccat_dagster.cli import app

        sys.argv = ["ccat", *args]
        app(prog_name="ccat")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - a crash of the command is its exit status 1
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return code
