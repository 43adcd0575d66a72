"""The harness's side of the fork server (``zygote``): start ``ccat`` commands, kill them, wait."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ccat_dagster_tests.faults import REPO_ROOT


@dataclass
class Command:
    """A ``ccat`` command started by the zygote."""

    pid: int
    rc_file: Path
    log: Path

    def returncode(self) -> int | None:
        try:
            return int(self.rc_file.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def running(self) -> bool:
        return self.returncode() is None

    def kill(self) -> None:
        """SIGKILL the command and everything it started (its session)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self.wait(30)

    def wait(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.returncode()
            if code is not None:
                return code
            time.sleep(0.02)
        return None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Zygote:
    """One fork server process; ``start`` forks a ``ccat`` command from it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.counter = 0
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ccat_dagster_tests.faults.zygote"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
            cwd=REPO_ROOT,
        )
        hello = json.loads(self.process.stdout.readline() or "{}")
        if "ready" not in hello:
            raise RuntimeError(f"the fork server did not start: {hello}")

    def start(self, args: list[str], env: dict[str, str], log: Path) -> Command:
        self.counter += 1
        rc_file = self.workdir / f"cmd-{self.counter}.rc"
        rc_file.unlink(missing_ok=True)
        request = {"args": args, "env": env, "log": str(log), "rc": str(rc_file), "cwd": "/"}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        reply = json.loads(self.process.stdout.readline())
        return Command(reply["pid"], rc_file, log)

    def run(self, args: list[str], env: dict[str, str], log: Path, timeout: float) -> int:
        """Start a command and wait for it; killed (and -9 returned) after ``timeout``."""
        command = self.start(args, env, log)
        code = command.wait(timeout)
        if code is None:
            command.kill()
            return -9
        return code

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
