"""Running one schedule: file data, run the steps with their faults, heal, run to idle, check."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from ccat_dagster_tests.faults import inject
from ccat_dagster_tests.faults.infra import Infrastructure
from ccat_dagster_tests.faults.launcher import Command
from ccat_dagster_tests.faults.scan import scan_for_loss
from ccat_dagster_tests.faults.schedule import KILL_STAGES, Fault, Schedule, Step
from ccat_dagster_tests.faults.world import RETENTION_MINUTES, World, create_world, destroy_world
from ccat_ops_db.models import PackageState, RawDataPackage
from ccat_ops_db.session import get_engine, session_scope

STEP_TIMEOUT = 180.0
FINAL_TIMEOUT = 420.0
FINAL_ATTEMPTS = 3
POLL = 0.02
CLOCK_JUMP = timedelta(minutes=2 * RETENTION_MINUTES)


@dataclass
class ScheduleResult:
    seed: int
    description: str
    injected: Counter = field(default_factory=Counter)
    not_reached: Counter = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    files_lost: list[str] = field(default_factory=list)
    bytes_lost: int = 0
    #: sha256 of files no system could keep (the only copy corrupted before any archive copy
    #: existed), and their names
    unsurvivable: list[str] = field(default_factory=list)
    unsurvivable_names: list[str] = field(default_factory=list)
    #: what ccat verify reported about those files (expected: the loss is reported, not hidden)
    reported_by_design: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    final_codes: list[int] = field(default_factory=list)
    step_timeouts: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.violations or self.bytes_lost)

    def as_dict(self) -> dict:
        return {k: dict(v) if isinstance(v, Counter) else v for k, v in vars(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> ScheduleResult:
        result = cls(**data)
        result.injected, result.not_reached = Counter(result.injected), Counter(result.not_reached)
        return result


class _StepRun:
    """One step: a run-until-idle (and maybe a twin) with the step's faults applied on time."""

    def __init__(self, world: World, step: Step, rng: random.Random, result: ScheduleResult):
        self.world, self.step, self.rng, self.result = world, step, rng, result
        self.infra: Infrastructure = world.infra
        self.log = world.root / "commands.log"
        self.commands: list[Command] = []
        self.heals: list[tuple[float, str]] = []
        self.killed = False
        self.main: Command | None = None  # the step's run-until-idle (a twin is another command)

    def start_command(self) -> Command:
        command = self.infra.zygote.start(["run-until-idle"], self.world.env(), self.log)
        self.commands.append(command)
        return command

    def mark(self, kind: str, what: str | None) -> None:
        if what is None:
            self.result.not_reached[kind] += 1
        else:
            self.result.injected[kind] += 1
            self.result.notes.append(f"{kind}: {what}")

    # -- faults applied at their moment ------------------------------------------------------
    def apply(self, fault: Fault, now: float) -> bool:
        """Apply ``fault``; False when it must wait (its target does not exist yet)."""
        infra, world, kind = self.infra, self.world, fault.kind
        if kind in ("s3_down", "s3_5xx"):
            infra.s3.set_mode("down" if kind == "s3_down" else "5xx")
            self.heals.append((now + fault.duration, "s3"))
        elif kind == "flip_in_transit":
            infra.s3.set_mode("flip")
            self.heals.append((float("inf"), "flip"))
            return True  # counted at the end of the step, if an upload was flipped
        elif kind == "sshd_down":
            infra.sshd.stop_daemon()
            self.heals.append((now + fault.duration, "sshd"))
        elif kind == "ssh_drop":
            self.mark(kind, f"{infra.sshd.kill_connections()} connections cut")
            return True
        elif kind == "buffer_full":
            infra.disk.fill()
            self.heals.append((now + fault.duration, "disk"))
        elif kind == "pg_restart":
            infra.postgres.restart()
            get_engine(world.url).dispose()
        elif kind == "twin_cleanup":
            self.start_command()
        elif kind in inject.AT_REST:
            return self._at_rest(kind)
        elif kind in ("retention_with_bad_lta", "corrupt_source_before_archive"):
            return True  # applied around the step, not during it
        elif kind.startswith("kill_"):
            return self._kill(kind)
        else:
            raise ValueError(f"unknown fault kind {kind}")
        if not kind.startswith(("flip", "kill")):
            self.mark(kind, f"at {now:.1f}s")
        return True

    def _at_rest(self, kind: str) -> bool:
        done = inject.AT_REST[kind](self.world, self.rng)
        if done is None:
            return False
        self.mark(kind, done)
        return True

    def _kill(self, kind: str) -> bool:
        main = self.main
        assert main is not None
        if kind == "kill_anytime":
            job = ", ".join(inject.started_jobs(self.world.dagster_home)) or "no run"
        else:
            job = inject.matching_job(self.world.dagster_home, KILL_STAGES[kind])
            if job is None:
                return False
            time.sleep(self.rng.uniform(0.0, 0.3))
        main.kill()
        self.killed = True
        self.mark(kind, f"during {job}")
        return True

    def heal(self, what: str) -> None:
        if what == "s3":
            self.infra.s3.set_mode("pass")
        elif what == "sshd":
            self.infra.sshd.start_daemon()
        elif what == "disk":
            self.infra.disk.drain()
        elif what == "flip":
            self.infra.s3.set_mode("pass")  # disarmed if no upload came by

    # -- the step ------------------------------------------------------------------------------
    def _poll(self, pending: list[Fault]) -> bool:
        """Apply ``pending`` faults when due and heal outages when over, until the step's
        commands ended; then heal what is left. False when the step timed out."""
        started, finished = time.monotonic(), True
        while True:
            now = time.monotonic() - started
            for fault in list(pending):
                if fault.at <= now and not self.killed and self.apply(fault, now):
                    pending.remove(fault)
            for due, what in [h for h in self.heals if h[0] <= now]:
                self.heals.remove((due, what))
                self.heal(what)
            if all(not c.running() for c in self.commands):
                break
            if now > STEP_TIMEOUT:
                self.result.step_timeouts += 1
                for command in self.commands:
                    command.kill()
                finished = False
                break
            time.sleep(POLL)
        for _due, what in self.heals:
            self.heal(what)
        self.heals.clear()
        return finished

    def run(self) -> None:
        world, result = self.world, self.result
        flips_before = self.infra.s3.flips()
        for fault in self.step.faults:
            if fault.kind == "corrupt_source_before_archive":
                corrupted = inject.corrupt_source(world, self.rng)
                self.mark(fault.kind, corrupted and corrupted[0])
                if corrupted:
                    result.unsurvivable.append(corrupted[1])
                    result.unsurvivable_names.append(Path(corrupted[0]).name)
        pending = sorted(self.step.faults, key=lambda f: f.at)
        self.main = self.start_command()
        started = time.monotonic()
        if self._poll(pending) and not self.killed and any(f.kind in KILL_STAGES for f in pending):
            # the step ended before a run of the kill's stage came (an outage held the pipeline
            # back, e.g. sshd down when the transfers started): it goes on, healed, until that
            # run comes and is killed or the pipeline is idle
            self.main = self.start_command()
            self._poll(pending)
        if any(f.kind == "flip_in_transit" for f in self.step.faults):
            flipped = self.infra.s3.flips() - flips_before
            self.mark("flip_in_transit", f"{flipped} upload(s)" if flipped else None)
        for fault in pending:  # at-rest faults: once their target exists
            if fault.kind in inject.AT_REST:
                now = time.monotonic() - started
                if not self.apply(fault, now) and not (self.settle() and self.apply(fault, now)):
                    self.mark(fault.kind, None)
            elif fault.kind.startswith("kill_"):
                self.mark(fault.kind, None)
        for fault in self.step.faults:
            if fault.kind == "retention_with_bad_lta":
                flipped = inject.flip_lta(world, self.rng)
                if flipped is None and self.settle():
                    flipped = inject.flip_lta(world, self.rng)
                self.mark(fault.kind, flipped)
                world.move_clock(CLOCK_JUMP)

    def settle(self) -> bool:
        """Run to idle without faults (the target of an at-rest fault does not exist yet, e.g.
        nothing was archived before the step was killed); True when it ended idle."""
        log = self.world.root / "settle.log"
        code = self.infra.zygote.run(["run-until-idle"], self.world.env(), log, FINAL_TIMEOUT)
        return code in (0, 1)


def _final_run(world: World, result: ScheduleResult) -> str:
    """Heal the infrastructure, then run to idle (a blocked or failed invocation is run again:
    blocking lasts one invocation); the last output."""
    world.infra.heal()
    get_engine(world.url).dispose()
    world.move_reverification_clock()
    output = ""
    for attempt in range(FINAL_ATTEMPTS):
        log = world.root / f"final-{attempt}.log"
        code = world.infra.zygote.run(["run-until-idle"], world.env(), log, FINAL_TIMEOUT)
        result.final_codes.append(code)
        output = log.read_text(errors="replace")
        if code == 0:
            break
    return output


def _verify(world: World, result: ScheduleResult) -> None:
    log = world.root / "verify.log"
    code = world.infra.zygote.run(["verify", "--json"], world.env(), log, FINAL_TIMEOUT)
    text = log.read_text(errors="replace")
    start = text.find('{\n  "ok"')
    if start < 0:
        result.violations.append(f"ccat verify did not report (exit {code}): {text[-2000:]}")
        return
    report, _ = json.JSONDecoder().raw_decode(text[start:])
    for v in report["violations"]:
        line = f"[{v['kind']}] {v['object']} at {v['location']}: {v['detail']}"
        if any(name in v["object"] for name in result.unsurvivable_names):
            result.reported_by_design.append(line)
        else:
            result.violations.append(line)
    if result.unsurvivable_names and not result.reported_by_design:
        result.violations.append(
            f"ccat verify did not report the files corrupted by design: {result.unsurvivable_names}"
        )
    if code == 0 and result.reported_by_design:
        result.violations.append("ccat verify exited 0 although it reported violations")
    if code != 0 and not report["violations"]:
        result.violations.append(f"ccat verify exited {code} without violations")


def _stuck(world: World, result: ScheduleResult, output: str) -> None:
    with session_scope(world.url) as session:
        for package in session.scalars(select(RawDataPackage)):
            if package.state != PackageState.ARCHIVED:
                reason = package.failure_reason or "no failure recorded"
                result.stuck.append(f"{package.relative_path}: {package.state.value} ({reason})")
    blocked = [line.strip() for line in output.splitlines() if "kept failing" in line]
    result.stuck.extend(blocked)


def run_schedule(infra: Infrastructure, schedule: Schedule, workdir: Path, *, keep=False):
    """Run ``schedule`` in a fresh world; its :class:`ScheduleResult`."""
    rng = random.Random(schedule.seed ^ 0x5EED)
    result = ScheduleResult(schedule.seed, schedule.describe())
    started = time.monotonic()
    world = create_world(infra, schedule.seed, workdir)
    failed = True
    try:
        world.file(schedule.obs_units, schedule.files_per_unit)
        for step in schedule.steps:
            if step.file_obs_units:
                world.file(step.file_obs_units, schedule.files_per_unit)
            _StepRun(world, step, rng, result).run()
        output = _final_run(world, result)
        _verify(world, result)
        loss = scan_for_loss(world, excused=set(result.unsurvivable))
        result.files_lost = [o.name for o in loss.lost]
        result.bytes_lost = loss.bytes_lost
        _stuck(world, result, output)
        failed = result.failed
    finally:
        result.seconds = time.monotonic() - started
        infra.heal()
        destroy_world(world, keep_files=keep or failed)
    return result
