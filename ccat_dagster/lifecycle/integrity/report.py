"""What ``ccat verify`` found: typed violations (kind, the invariant it breaks, where, what to do)
and counters of what was read, as one report that renders as a short text or as JSON.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

# --------------------------------------------------------------------------- kinds

NO_GOOD_COPY = "no_good_copy"
LTA_COPY_NOT_PRESENT = "lta_copy_not_present"
OBJECT_MISSING = "object_missing"
SIZE_MISMATCH = "size_mismatch"
CHECKSUM_MISMATCH = "checksum_mismatch"
LTA_COPY_DELETED = "lta_copy_deleted"
DELETION_WITHOUT_AUDIT = "deletion_without_audit"
DELETION_WITHOUT_LTA_EVIDENCE = "deletion_without_lta_evidence"
UNREADABLE = "unreadable"
STALE_TEMPORARY = "stale_temporary"
DEAD_RUN = "dead_run"


@dataclass(frozen=True)
class Kind:
    name: str
    #: the clause of the invariant (docs/operations.md, "Verifying the archive")
    check: str
    title: str
    action: str


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind(
            NO_GOOD_COPY,
            "a",
            "a raw data file has no copy whose bytes match its checksum",
            "restore the file at its SOURCE from the instrument's own copy and run `ccat retry`; "
            "if it is gone for good, declare it lost (`ccat files declare-lost`) so the rest of "
            "its obs unit is archived",
        ),
        Kind(
            LTA_COPY_NOT_PRESENT,
            "b",
            "an ARCHIVED package has no PRESENT copy in an active long-term archive",
            "let the pipeline re-archive it from a good copy (`ccat run-until-idle`, then "
            "`ccat status`); a FAILED archive transfer needs `ccat retry --package NAME` after "
            "the cause is fixed",
        ),
        Kind(
            OBJECT_MISSING,
            "e",
            "the catalogue says the copy is there, the storage has no such object",
            "check the location (mount, bucket, prefix, permissions); if the object is really "
            "gone the copy must be made again from a good copy before anything that relies on "
            "it is deleted",
        ),
        Kind(
            SIZE_MISMATCH,
            "e",
            "the object under its final name has another size than recorded (partial or replaced)",
            "do not use this copy; make it again from a good copy (for an archive copy: "
            "re-archive the package)",
        ),
        Kind(
            CHECKSUM_MISMATCH,
            "e",
            "the bytes read back do not match the recorded checksum",
            "do not use this copy; make it again from a good copy (for an archive copy: "
            "re-archive the package) and check the storage for more damage",
        ),
        Kind(
            LTA_COPY_DELETED,
            "c",
            "a long-term archive copy was deleted or put up for deletion",
            "long-term archive copies are never deleted by automation: find the run in the "
            "audit log, check the object, and re-archive the package if it is gone",
        ),
        Kind(
            DELETION_WITHOUT_AUDIT,
            "d",
            "a DELETED copy has no audit record naming the rule that deleted it",
            "find out who deleted it (storage logs); make sure the data still has a good copy",
        ),
        Kind(
            DELETION_WITHOUT_LTA_EVIDENCE,
            "d",
            "the last copy outside the long-term archives was deleted without a passing live "
            "archive check in its audit record",
            "check now that the package's archive copies are good (`ccat verify --location "
            "<lta>`); if not, restore the data from any remaining copy",
        ),
        Kind(
            UNREADABLE,
            "e",
            "the storage could not be read, so the copy was not checked",
            "make the location reachable (mount, network, credentials, SSH host key) and run "
            "`ccat verify` again",
        ),
        Kind(
            STALE_TEMPORARY,
            "f",
            "a temporary file older than any run is left at a location",
            "nothing writes it any more: remove it after checking no run is active",
        ),
        Kind(
            DEAD_RUN,
            "g",
            "a run is STARTED but its process is gone",
            "mark the run failed (the daemon's run monitoring or `ccat run-until-idle` does "
            "this) so its work is picked up again",
        ),
    )
}

# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class Violation:
    """One broken invariant, for one object at one location."""

    kind: str
    location: str | None  # "site/name"
    object: str  # e.g. "RawDataPackage ccat.obs_0001...", "RawDataFile obs_0001/scan_1.dat"
    key: str | None  # the object key at the location
    detail: str
    copy_id: int | None = None
    #: the clause broken ("a".."g"); default the kind's (a bad archive copy is also "b")
    check: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown violation kind {self.kind!r}")
        if not self.check:
            object.__setattr__(self, "check", KINDS[self.kind].check)

    @property
    def action(self) -> str:
        return KINDS[self.kind].action

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "action": self.action}

    def line(self) -> str:
        where = f" at {self.location}" if self.location else ""
        return f"[{self.kind}] {self.object}{where}: {self.detail}"


@dataclass
class Counters:
    """What was looked at. ``copies_checked`` were stat'ed (existence and size);
    ``copies_read`` of them were read in full and checksummed; the others were left out by
    sampling (``copies_skipped_by_sampling``) or could not be checked."""

    locations: int = 0
    copies_checked: int = 0
    copies_read: int = 0
    bytes_read: int = 0
    copies_skipped_by_sampling: int = 0
    copies_not_checked: int = 0
    #: copies changed by the pipeline while they were checked (not judged)
    copies_changed_meanwhile: int = 0
    #: BAD/LOST copies the system already knows about (not violations by themselves)
    copies_known_unusable: int = 0
    files_checked: int = 0
    #: a copy holding the file was read and matched
    files_proven: int = 0
    #: only copies of the right size that were not read (sampling, or outside the scope)
    files_unproven: int = 0
    #: declared lost by an operator (not violations)
    files_declared_lost: int = 0
    archived_packages: int = 0
    lta_copies_expected: int = 0
    deleted_copies: int = 0
    deletion_records: int = 0


@dataclass
class VerifyReport:
    """The result of :func:`ccat_dagster.lifecycle.integrity.verify_catalogue`."""

    started_at: datetime
    locations: list[str]
    scoped: bool
    sample: float
    seed: int
    finished_at: datetime | None = None
    violations: list[Violation] = field(default_factory=list)
    counters: Counters = field(default_factory=Counters)
    #: parts of the invariant this run did not check, and why
    not_checked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def by_kind(self) -> dict[str, int]:
        return dict(sorted(Counter(v.kind for v in self.violations).items()))

    def add(self, violation: Violation) -> None:
        self.violations.append(violation)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "scope": {
                "locations": self.locations,
                "scoped": self.scoped,
                "sample": self.sample,
                "seed": self.seed,
            },
            "counters": asdict(self.counters),
            "not_checked": self.not_checked,
            "violations_by_kind": self.by_kind,
            "violations": [v.as_dict() for v in self.violations],
        }

    def render(self, *, limit: int = 50) -> str:
        c = self.counters
        scope = "every location" if not self.scoped else ", ".join(self.locations)
        sample = "" if self.sample >= 1 else f", sample {self.sample:g} (seed {self.seed})"
        lines = [
            f"ccat verify: {scope}{sample}",
            f"  copies: {c.copies_checked} checked, {c.copies_read} read "
            f"({c.bytes_read:,} bytes), {c.copies_skipped_by_sampling} not read (sampling), "
            f"{c.copies_not_checked} not checked, {c.copies_known_unusable} known BAD/LOST",
            f"  raw data files: {c.files_checked} checked, {c.files_proven} proven by a read, "
            f"{c.files_unproven} not read, {c.files_declared_lost} declared lost",
            f"  archived packages: {c.archived_packages} "
            f"({c.lta_copies_expected} archive copies expected)",
            f"  deleted copies: {c.deleted_copies} ({c.deletion_records} deletion records)",
        ]
        lines += [f"  not checked: {reason}" for reason in self.not_checked]
        if self.ok:
            lines.append("OK: no violation")
            return "\n".join(lines)
        kinds = ", ".join(f"{k}={n}" for k, n in self.by_kind.items())
        lines.append(f"VIOLATIONS: {len(self.violations)} ({kinds})")
        lines += [f"  {v.line()}" for v in self.violations[:limit]]
        if len(self.violations) > limit:
            lines.append(f"  ... and {len(self.violations) - limit} more (--json lists all)")
        lines.append("what to do:")
        lines += [f"  {k}: {KINDS[k].action}" for k in self.by_kind]
        return "\n".join(lines)
