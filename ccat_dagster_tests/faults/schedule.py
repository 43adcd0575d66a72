"""Fault kinds and seeded, reproducible schedules of them.

A schedule files a little raw data, then runs ``ccat run-until-idle`` a few times (the *steps*),
each with faults injected while it works; then the infrastructure is healed (not the data), the
pipeline is run to idle and ``ccat verify`` is run. The same seed gives the same schedule.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

#: kill -9 of ``ccat run-until-idle`` while a run of this stage is executing; the pattern matches
#: the job name (``{site}_{stage}``)
KILL_STAGES: dict[str, str] = {
    "kill_package": r"raw_data_package",
    "kill_bundle": r"data_transfer_package",
    "kill_transfer": r"_data_transfer$",
    "kill_unpack": r"unpack",
    "kill_archive": r"long_term_archive",
    "kill_delete": r"cleanup|delet",
}

#: what each kind does (the report's legend)
KINDS: dict[str, str] = {
    **{k: f"kill -9 of run-until-idle mid {k.removeprefix('kill_')} run" for k in KILL_STAGES},
    "kill_anytime": "kill -9 of run-until-idle at a random moment",
    "flip_buffer": "a byte flipped at rest in a file of a buffer",
    "flip_lta_disk": "a byte flipped at rest in a package of the disk long-term archive",
    "flip_lta_s3": "a byte flipped at rest in an object of the S3 long-term archive",
    "flip_in_transit": "a byte flipped in the body of an upload to S3, on the wire",
    "s3_down": "the S3 endpoint refuses connections for a while",
    "s3_5xx": "the S3 endpoint answers 503 to every request for a while",
    "ssh_drop": "every SSH connection to the telescope host is cut",
    "sshd_down": "the telescope's sshd is down for a while",
    "buffer_full": "the telescope buffer disk is full for a while",
    "pg_restart": "the ops database (PostgreSQL) restarts mid-run",
    "twin_cleanup": "a second run-until-idle at the same time (two cleanups, twin planners)",
    "retention_with_bad_lta": "an archive copy goes bad, then the retention period elapses "
    "(clock moved)",
    "corrupt_source_before_archive": "a SOURCE file corrupted before any archive copy exists "
    "(not survivable by design: reported, not counted as loss)",
    "remove_buffer": "a file of a buffer removed at rest",
    "remove_lta_disk": "a package removed at rest from the disk long-term archive",
    "remove_lta_s3": "an object removed at rest from the S3 long-term archive",
}

#: faults no system can survive: the only copy is corrupted before an archive copy exists
UNSURVIVABLE = frozenset({"corrupt_source_before_archive"})

#: kinds armed from the step's start, since they wait for their target anyway (a run of their
#: stage, an upload): on a fast machine a stage's runs or the uploads can all be over before a
#: moment drawn up to 5 s in, and the fault never happened. The moment within a run stays random.
WAIT_FOR_TARGET = frozenset({*KILL_STAGES, "flip_in_transit"})

#: at most one archive copy corrupted or removed at rest per schedule: with two archives, one
#: good copy always remains (both archive copies of a package spoiled at once is a double fault
#: outside the promise)
LTA_DAMAGE = frozenset(
    {"flip_lta_disk", "flip_lta_s3", "remove_lta_disk", "remove_lta_s3", "retention_with_bad_lta"}
)

SURVIVABLE = tuple(k for k in KINDS if k not in UNSURVIVABLE)


@dataclass
class Fault:
    kind: str
    #: seconds after the step's run-until-idle started
    at: float
    #: how long an outage lasts (healed at the step's end at the latest)
    duration: float = 0.0


@dataclass
class Step:
    #: obs units filed before this step (new raw data arriving)
    file_obs_units: int
    faults: list[Fault] = field(default_factory=list)


@dataclass
class Schedule:
    seed: int
    obs_units: int
    files_per_unit: int
    steps: list[Step]

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Schedule:
        steps = [
            Step(s["file_obs_units"], [Fault(**f) for f in s["faults"]]) for s in data["steps"]
        ]
        return cls(data["seed"], data["obs_units"], data["files_per_unit"], steps)

    @property
    def kinds(self) -> list[str]:
        return [f.kind for step in self.steps for f in step.faults]

    def describe(self) -> str:
        parts = []
        for i, step in enumerate(self.steps):
            faults = ", ".join(f"{f.kind}@{f.at:.1f}s" for f in step.faults) or "none"
            filed = f" (+{step.file_obs_units} obs units)" if step.file_obs_units else ""
            parts.append(f"step {i + 1}{filed}: {faults}")
        return (
            f"seed {self.seed}: {self.obs_units} obs units x {self.files_per_unit}; "
            + "; ".join(parts)
        )


def _fault(rng: random.Random, kind: str) -> Fault:
    at, duration = round(rng.uniform(0.0, 5.0), 2), round(rng.uniform(1.0, 8.0), 2)
    if kind in WAIT_FOR_TARGET:
        at = 0.0
    return Fault(kind, at=at, duration=duration)


def make_schedule(
    seed: int, *, forced: str | None = None, steps: int | None = None, unsurvivable_rate=0.02
) -> Schedule:
    """The schedule of ``seed``; ``forced`` puts that kind into the first step."""
    rng = random.Random(seed)
    n_steps = steps if steps is not None else rng.randint(1, 3)
    lta_damaged = forced in LTA_DAMAGE
    plan: list[Step] = []
    for index in range(n_steps):
        faults: list[Fault] = []
        if index == 0 and forced:
            faults.append(_fault(rng, forced))
        for _ in range(rng.randint(0 if faults else 1, 2 - len(faults))):
            kind = rng.choice(SURVIVABLE)
            if kind in LTA_DAMAGE:
                if lta_damaged:
                    continue
                lta_damaged = True
            faults.append(_fault(rng, kind))
        if index == 0 and not forced and rng.random() < unsurvivable_rate:
            faults.append(_fault(rng, "corrupt_source_before_archive"))
        # at most one kill per step: the kill ends the step
        kills = [f for f in faults if f.kind.startswith("kill_")]
        faults = [f for f in faults if not f.kind.startswith("kill_")] + kills[:1]
        plan.append(Step(file_obs_units=rng.choice((0, 0, 1)) if index else 0, faults=faults))
    return Schedule(
        seed=seed, obs_units=rng.randint(1, 2), files_per_unit=rng.randint(1, 2), steps=plan
    )


def fixed_schedules() -> list[Schedule]:
    """The fixed set of ``make test``: every kind at least once, one step each, 25 or more."""
    kinds = list(KINDS)
    count = max(25, len(kinds))
    return [make_schedule(1000 + i, forced=kinds[i % len(kinds)], steps=1) for i in range(count)]
