"""Run liveness: which in-flight Dagster runs have no live process any more, and failing them.

A run executed by ``ccat run-until-idle`` carries the identity of the process that owns it as
tags (host, boot id, PID namespace, pid and the pid's start time, so a reused pid is not taken
for the old process). ``dead_runs`` returns the in-flight runs whose owner is on this machine and
gone, plus daemon-launched runs whose worker the instance's run launcher reports dead where the
launcher offers that check (the DefaultRunLauncher does not: its code server fails a run whose
worker process exited by itself, and Dagster's run monitoring times out runs that never start).
A run owned by a process on another machine or in another PID namespace is never judged from
here. ``fail_dead_runs`` marks dead runs failed through the instance, so the sensors stop counting
their items as busy. Linux only (``/proc``); elsewhere nothing is ever judged dead.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter

#: run tags naming the process that executes a run (set by the runner at launch)
OWNER_HOST_TAG = "ccat/owner_host"
OWNER_BOOT_TAG = "ccat/owner_boot_id"
OWNER_PIDNS_TAG = "ccat/owner_pid_namespace"
OWNER_PID_TAG = "ccat/owner_pid"
OWNER_START_TAG = "ccat/owner_pid_start"

#: statuses of a run that should have a live process (QUEUED runs wait in the daemon's queue
#: and have none yet by design)
LIVE_STATUSES = [
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]

_PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessIdentity:
    """A process as seen from its machine: pid + start time (clock ticks since boot) are unique
    within one boot and one PID namespace."""

    host: str
    boot_id: str
    pid_namespace: str
    pid: int
    start_ticks: int

    def tags(self) -> dict[str, str]:
        return {
            OWNER_HOST_TAG: self.host,
            OWNER_BOOT_TAG: self.boot_id,
            OWNER_PIDNS_TAG: self.pid_namespace,
            OWNER_PID_TAG: str(self.pid),
            OWNER_START_TAG: str(self.start_ticks),
        }

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> ProcessIdentity | None:
        try:
            return cls(
                host=tags[OWNER_HOST_TAG],
                boot_id=tags[OWNER_BOOT_TAG],
                pid_namespace=tags[OWNER_PIDNS_TAG],
                pid=int(tags[OWNER_PID_TAG]),
                start_ticks=int(tags[OWNER_START_TAG]),
            )
        except (KeyError, ValueError):
            return None

    def describe(self) -> str:
        return f"process {self.pid} on {self.host}"


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (which may hold spaces and ')')."""
    raw = _read(_PROC / str(pid) / "stat")
    if not raw or ")" not in raw:
        return None
    return raw.rsplit(")", 1)[1].split()


def _ended(fields: list[str] | None) -> bool:
    """The process whose stat ``fields`` these are is gone or has ended (a zombie, killed and
    not yet reaped by its parent, has)."""
    return fields is None or fields[0] in ("Z", "X")


def process_running(pid: int) -> bool:
    """Process ``pid`` exists here and has not ended (a zombie counts as ended)."""
    return not _ended(_stat_fields(pid))


def process_identity(pid: int | None = None) -> ProcessIdentity | None:
    """The identity of ``pid`` (default: this process), None where /proc is not available."""
    pid = os.getpid() if pid is None else pid
    fields = _stat_fields(pid)
    boot_id = _read(_PROC / "sys" / "kernel" / "random" / "boot_id")
    try:
        pid_namespace = os.readlink(_PROC / "self" / "ns" / "pid")
    except OSError:
        pid_namespace = ""
    if fields is None or not boot_id or not pid_namespace:
        return None
    # fields[0] is the state (field 3 of stat), so the start time (field 22) is fields[19]
    return ProcessIdentity(socket.gethostname(), boot_id, pid_namespace, pid, int(fields[19]))


def owner_tags() -> dict[str, str]:
    """Tags naming this process as the owner of a run it executes ({} where /proc is missing)."""
    identity = process_identity()
    return identity.tags() if identity else {}


def owner_alive(owner: ProcessIdentity) -> bool | None:
    """True/False when ``owner`` can be judged from this process, None when it cannot (another
    machine, boot or PID namespace). A zombie (killed, not yet reaped) counts as gone."""
    here = process_identity()
    if here is None or (owner.host, owner.boot_id, owner.pid_namespace) != (
        here.host,
        here.boot_id,
        here.pid_namespace,
    ):
        return None
    fields = _stat_fields(owner.pid)
    if fields is None or _ended(fields):
        return False
    return int(fields[19]) == owner.start_ticks


@dataclass(frozen=True)
class DeadRun:
    run: DagsterRun
    reason: str

    @property
    def run_id(self) -> str:
        return self.run.run_id


def _launcher_says_dead(instance: DagsterInstance, run: DagsterRun) -> str | None:
    launcher = instance.run_launcher
    if run.status != DagsterRunStatus.STARTED or not launcher.supports_check_run_worker_health:
        return None
    health = launcher.check_run_worker_health(run)
    if health.status.name in ("FAILED", "NOT_FOUND"):
        return f"the run launcher reports its worker {health.status.name}: {health.msg or ''}"
    return None


def dead_runs(instance: DagsterInstance) -> list[DeadRun]:
    """In-flight runs of ``instance`` whose process is gone (as far as can be judged here)."""
    found: list[DeadRun] = []
    for run in instance.get_runs(filters=RunsFilter(statuses=LIVE_STATUSES)):
        owner = ProcessIdentity.from_tags(run.tags)
        if owner is not None:
            if owner_alive(owner) is False:
                found.append(
                    DeadRun(run, f"its owner {owner.describe()} no longer exists (killed?)")
                )
            continue
        reason = _launcher_says_dead(instance, run)
        if reason:
            found.append(DeadRun(run, reason))
    return found


def fail_dead_runs(instance: DagsterInstance, *, by: str = "ccat") -> list[DeadRun]:
    """Mark every dead run failed (re-read first: it may have finished meanwhile). Returns them."""
    failed: list[DeadRun] = []
    for dead in dead_runs(instance):
        current = instance.get_run_by_id(dead.run_id)
        if current is None or current.is_finished:
            continue
        instance.report_run_failed(
            current,
            f"{dead.reason}; marked failed by {by} so that its work is picked up again",
        )
        failed.append(dead)
    return failed


def oldest_live_run_start(instance: DagsterInstance) -> float | None:
    """Start time (epoch seconds) of the oldest run that may still be writing (its creation
    time if it has not started yet), None if none. QUEUED runs have written nothing yet."""
    starts = [
        record.start_time or record.create_timestamp.timestamp()
        for record in instance.get_run_records(filters=RunsFilter(statuses=LIVE_STATUSES))
    ]
    return min(starts) if starts else None


def temporaries_cutoff(instance: DagsterInstance, *, margin_seconds: float) -> float:
    """Temporaries last written before this time (epoch seconds) belong to no live run: the
    start of the oldest in-flight run (or now), minus ``margin_seconds`` for clock skew between
    this machine and the storages."""
    oldest = oldest_live_run_start(instance)
    now = time.time()
    return min(oldest, now) - margin_seconds if oldest is not None else now - margin_seconds
