"""A fork server for ``ccat`` commands: imports the CLI (Dagster and all) once, then forks a
child per command, so a schedule's many ``ccat run-until-idle`` start in milliseconds instead of
seconds, and each is a process of its own that can be killed with SIGKILL.

Protocol on stdin/stdout, one JSON object per line: the harness sends
``{"args": [...], "env": {...}, "cwd": ..., "log": path, "rc": path}``; the zygote answers
``{"pid": N}``. The child starts a session of its own (``os.killpg(pid, SIGKILL)`` takes it and
anything it started), replaces its environment, sends stdout and stderr to ``log`` and runs the
command. The zygote reaps its children and writes each exit status (negative: killed by that
signal) to its ``rc`` file. It must stay single-threaded: it forks.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import sys
import threading


def _child(request: dict) -> None:
    os.setsid()
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request.get("cwd") or "/")
    fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    # line by line, so the log of a command killed with SIGKILL ends where it died
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    code = 0
    try:
        from ccat_dagster.cli import app

        sys.argv = ["ccat", *request["args"]]
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
    os._exit(code)


def _write_rc(path: str, status: int) -> None:
    code = os.waitstatus_to_exitcode(status)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as out:
        out.write(str(code))
    os.replace(tmp, path)


#: what the commands import on their way
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


def _preload() -> None:
    """Import what the commands import on their way (the sites' code, pandas, dagster-aws, the
    harness's Dagster storages, the migrations) and read botocore's S3 model: once here instead of
    in every child. The warm-up client has credentials of its own, so that nothing looks for any
    (boto3's chain would end by asking an instance metadata address)."""
    for module in PRELOAD:
        importlib.import_module(module)
    from ccat_dagster.storage.s3 import boto3_session

    boto3_session().client(
        "s3", region_name="us-east-1", aws_access_key_id="zygote", aws_secret_access_key="zygote"
    )


def serve() -> None:
    _preload()

    if threading.active_count() != 1:
        print(json.dumps({"error": "zygote has threads; forking is unsafe"}), flush=True)
        sys.exit(1)
    rc_files: dict[int, str] = {}
    print(json.dumps({"ready": os.getpid()}), flush=True)
    stdin = sys.stdin.buffer
    while True:
        ready, _, _ = select.select([stdin], [], [], 0.05)
        while rc_files:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            if pid in rc_files:
                _write_rc(rc_files.pop(pid), status)
        if not ready:
            continue
        line = stdin.readline()
        if not line:
            return
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        rc_files[pid] = request["rc"]
        print(json.dumps({"pid": pid}), flush=True)


if __name__ == "__main__":
    serve()
