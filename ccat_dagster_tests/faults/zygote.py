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

import json
import os
import select
import sys

from ccat_dagster_tests.forked_ccat import preload, run_ccat


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
    os._exit(run_ccat(request["args"]))


def _write_rc(path: str, status: int) -> None:
    code = os.waitstatus_to_exitcode(status)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as out:
        out.write(str(code))
    os.replace(tmp, path)


def serve() -> None:
    try:
        preload()
    except RuntimeError as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
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
