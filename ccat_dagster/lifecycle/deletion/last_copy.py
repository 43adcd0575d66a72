"""The gate every deletion passes: before the last copy of some data outside the long-term
archives goes, the archive copies that hold it are re-verified live.

A copy "holds" RawDataPackages: a package copy holds its package, a raw-file copy the file's
package, a transfer-package copy every package bundled in it. A copy is the last one outside the
archives for a package when no other PRESENT package tar of it is left outside the archives (the
claimed copies of this and concurrent cycles are no longer PRESENT, so two cycles never both count
on each other). Source-buffer package copies and DELETION_POSSIBLE raw files are always checked:
they are where the data came from. Each package needing it is checked once per batch, in every
active archive that the catalogue says holds it; one failed check keeps every claimed copy of that
package. A check that examined the object and found it missing or different marks the archive copy
LOST or BAD and sends it to repair (:mod:`ccat_dagster.lifecycle.archive.repair`); a check that
could not examine it (the archive did not answer) only keeps the data. The evidence (each check, and
whether the copy was the last one) goes into the audit row of every deletion.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.archive.repair import record_lta_check
from ccat_dagster.lifecycle.archive.verification import LtaEvidence, VerifyLtaCopy
from ccat_dagster.lifecycle.common.chunks import chunks
from ccat_dagster.lifecycle.deletion.rules import (
    RULE_RDF_DELETION_POSSIBLE,
    RULE_RDP_SOURCE_BUFFER,
    DeletableCopy,
    dl_t,
    pc_t,
)
from ccat_dagster.storage.errors import LocationUnavailableError
from ccat_ops_db.models import (
    CopyType,
    DataLocation,
    LocationType,
    PhysicalCopyStatus,
    RawDataPackage,
    table_of,
)

S = PhysicalCopyStatus
RULE_LTA_VERIFICATION_FAILED = "lta_verification_failed"
#: rules whose copies are the origin of the data: their archive copies are checked every time
ALWAYS_VERIFIED = frozenset({RULE_RDP_SOURCE_BUFFER, RULE_RDF_DELETION_POSSIBLE})

rdp_t = table_of(RawDataPackage)


@dataclass
class LtaCheck:
    """One live check of one archive copy, for the record and the UI."""

    package: RawDataPackage
    lta: DataLocation
    evidence: LtaEvidence


@dataclass
class GateResult:
    """What may be deleted now, the audit evidence per copy id, and what is kept and why."""

    proceed: list[DeletableCopy]
    evidence: dict[int, dict[str, Any]]
    held: dict[int, list[int]] = field(default_factory=dict)  # copy id -> package ids
    #: packages kept only because an archive did not answer (a wait, not an incident)
    waiting: set[int] = field(default_factory=set)
    #: the location errors behind those waits (the caller marks the locations unavailable)
    unavailable: list[LocationUnavailableError] = field(default_factory=list)
    kept: dict[int, str] = field(default_factory=dict)  # package id -> reason
    refused: list[DeletableCopy] = field(default_factory=list)
    checks: list[LtaCheck] = field(default_factory=list)


def packages_held(session: Session, copies: Sequence[DeletableCopy]) -> dict[int, list[int]]:
    """copy id -> ids of the RawDataPackages whose data that copy holds."""
    held: dict[int, list[int]] = {}
    bundles: dict[int, list[int]] = {}
    for c in copies:
        if c.copy_type == CopyType.RAW_DATA_PACKAGE:
            held[c.copy_id] = [c.entity_id]
        elif c.copy_type == CopyType.RAW_DATA_FILE:
            held[c.copy_id] = [c.raw_data_package_id] if c.raw_data_package_id else []
        else:
            bundles.setdefault(c.entity_id, []).append(c.copy_id)
    members: dict[int, list[int]] = {}
    for chunk in chunks(list(bundles)):
        for package_id, bundle_id in session.execute(
            sa.select(rdp_t.c.id, rdp_t.c.data_transfer_package_id).where(
                rdp_t.c.data_transfer_package_id.in_(chunk)
            )
        ):
            members.setdefault(bundle_id, []).append(package_id)
    for bundle_id, copy_ids in bundles.items():
        for copy_id in copy_ids:
            held[copy_id] = sorted(members.get(bundle_id, []))
    return held


def packages_with_other_tars(session: Session, package_ids: Sequence[int]) -> set[int]:
    """Packages that keep a PRESENT tar outside the archives besides the copies being deleted."""
    keep: set[int] = set()
    for chunk in chunks(list(package_ids)):
        keep.update(
            session.scalars(
                sa.select(pc_t.c.raw_data_package_id)
                .join(dl_t, dl_t.c.id == pc_t.c.data_location_id)
                .where(
                    pc_t.c.type == CopyType.RAW_DATA_PACKAGE,
                    pc_t.c.raw_data_package_id.in_(chunk),
                    pc_t.c.status == S.PRESENT,
                    dl_t.c.location_type != LocationType.LONG_TERM_ARCHIVE,
                )
                .distinct()
            )
        )
    return keep


def flagged_packages(session: Session, package_ids: Sequence[int]) -> set[int]:
    """Packages whose archive copy failed a live check before: checked again before ANY of
    their copies goes, until a check passes (the catalogue is not trusted meanwhile)."""
    flagged: set[int] = set()
    for chunk in chunks(list(package_ids)):
        flagged.update(
            session.scalars(
                sa.select(rdp_t.c.id).where(
                    rdp_t.c.id.in_(chunk),
                    rdp_t.c.failure_reason.like(f"{RULE_LTA_VERIFICATION_FAILED}%"),
                )
            )
        )
    return flagged


def clear_flags(session: Session, package_ids: Sequence[int]) -> None:
    """A live check passed again: the package is no longer flagged."""
    for chunk in chunks(list(package_ids)):
        session.execute(
            sa.update(rdp_t)
            .where(
                rdp_t.c.id.in_(chunk),
                rdp_t.c.failure_reason.like(f"{RULE_LTA_VERIFICATION_FAILED}%"),
            )
            .values(failure_reason=None)
        )


def active_lta_copies(session: Session, package_ids: Sequence[int]) -> dict[int, list[int]]:
    """package id -> ids of the active LTA locations holding a PRESENT copy of it."""
    out: dict[int, list[int]] = {}
    for chunk in chunks(list(package_ids)):
        rows = session.execute(
            sa.select(pc_t.c.raw_data_package_id, pc_t.c.data_location_id)
            .join(dl_t, dl_t.c.id == pc_t.c.data_location_id)
            .where(
                pc_t.c.type == CopyType.RAW_DATA_PACKAGE,
                pc_t.c.raw_data_package_id.in_(chunk),
                pc_t.c.status == S.PRESENT,
                dl_t.c.location_type == LocationType.LONG_TERM_ARCHIVE,
                dl_t.c.active == sa.true(),
            )
            .order_by(pc_t.c.data_location_id)
        )
        for package_id, location_id in rows:
            out.setdefault(package_id, []).append(location_id)
    return out


def _check_package(
    package: RawDataPackage,
    ltas: Sequence[DataLocation],
    verify: VerifyLtaCopy,
    names: dict[int, str],
    unavailable: list[LocationUnavailableError],
) -> tuple[list[LtaCheck], str | None]:
    """Check every archive copy of one package; the reason it must be kept, if any. Location
    errors are appended to ``unavailable``."""
    if not ltas:
        return [], "the catalogue has no PRESENT copy in an active LONG_TERM_ARCHIVE any more"
    checks: list[LtaCheck] = []
    problem = None
    for lta in ltas:
        try:
            evidence = verify(package, lta)
        except Exception as exc:  # noqa: BLE001 - an archive that does not answer keeps data
            if isinstance(exc, LocationUnavailableError):
                unavailable.append(exc)
            evidence = LtaEvidence.cannot_verify(package, lta, exc)
        checks.append(LtaCheck(package, lta, evidence))
        if not evidence.ok:
            problem = (
                f"the LTA copy at {names[lta.id]} is not what the catalogue says: "
                f"{evidence.detail or 'missing'}"
                if evidence.examined
                else f"live check of the LTA copy at {names[lta.id]} failed: "
                f"{evidence.detail.removeprefix('cannot verify: ')}"
            )
    return checks, problem


def gate_deletions(
    session: Session,
    claimed: Sequence[DeletableCopy],
    *,
    verify: VerifyLtaCopy,
    location: Callable[[int], DataLocation],
    names: dict[int, str],
    run_id: str,
) -> GateResult:
    """Decide which claimed copies may go now (see the module docstring). Archive copies found
    bad are marked through :func:`record_lta_check`; the caller releases ``refused`` copies,
    commits, and records ``evidence`` with each deletion."""
    held = packages_held(session, claimed)
    all_packages = sorted({p for ids in held.values() for p in ids})
    others = packages_with_other_tars(session, all_packages)
    flagged = flagged_packages(session, all_packages)
    last = {c.copy_id: any(p not in others for p in held[c.copy_id]) for c in claimed}
    need = sorted(
        {
            p
            for c in claimed
            for p in held[c.copy_id]
            if c.rule in ALWAYS_VERIFIED or p not in others or p in flagged
        }
    )
    result = GateResult(proceed=[], evidence={}, held=held)
    lta_of = active_lta_copies(session, need)
    packages = {
        p.id: p
        for chunk in chunks(need)
        for p in session.scalars(sa.select(RawDataPackage).where(RawDataPackage.id.in_(chunk)))
    }
    checks_of: dict[int, list[dict[str, Any]]] = {}
    for package_id in need:
        ltas = [location(loc_id) for loc_id in lta_of.get(package_id, [])]
        before = len(result.unavailable)
        checks, problem = _check_package(
            packages[package_id], ltas, verify, names, result.unavailable
        )
        result.checks += checks
        if (
            problem
            and len(result.unavailable) > before
            and all(c.evidence.ok or not c.evidence.examined for c in checks)
        ):
            result.waiting.add(package_id)
        checks_of[package_id] = [c.evidence.as_dict() for c in checks]
        for check in checks:
            record_lta_check(session, check.package, check.lta, check.evidence, run_id=run_id)
        if problem:
            result.kept[package_id] = problem
    clear_flags(session, sorted(flagged - set(result.kept)))
    for c in claimed:
        verified = [p for p in held[c.copy_id] if p in checks_of]
        evidence: dict[str, Any] = {"last_copy_outside_lta": last[c.copy_id]}
        if verified:
            evidence["lta_verification"] = [e for p in verified for e in checks_of[p]]
        result.evidence[c.copy_id] = evidence
        if any(p in result.kept for p in held[c.copy_id]):
            result.refused.append(c)
        else:
            result.proceed.append(c)
    return result
