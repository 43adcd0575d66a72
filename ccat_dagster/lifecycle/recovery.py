"""Give FAILED work another chance after an operator fixed the cause (``ccat retry``).

A permanent failure (FAILED after ``max_retries``) stops the pipeline for that package on
purpose: someone has to look. Once the cause is fixed (the source file restored, a host key
added, credentials corrected), the failed operations go back to PENDING with their retry counts
reset, the packages' states follow, and every change is audited. Nothing is deleted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.common.progress import set_status
from ccat_dagster.lifecycle.ingest.raw_data_packages import has_files_to_package
from ccat_ops_db.models import (
    DataTransferPackage,
    LongTermArchiveTransfer,
    PackageState,
    RawDataPackage,
    Status,
)


class RetryError(LookupError):
    """Unknown package names, or nothing selected."""


@dataclass
class RetrySummary:
    packages: list[str] = field(default_factory=list)
    bundles: list[str] = field(default_factory=list)
    transfers: int = 0
    archive_transfers: int = 0

    def lines(self) -> list[str]:
        return [
            f"packages reset: {len(self.packages)} {', '.join(self.packages[:20])}".rstrip(),
            f"data transfer packages reset: {len(self.bundles)}",
            f"data transfers reset: {self.transfers}",
            f"long-term archive transfers reset: {self.archive_transfers}",
        ]


def _packages(session: Session, names: Sequence[str]) -> list[RawDataPackage]:
    if names:
        found = list(session.scalars(select(RawDataPackage).where(RawDataPackage.name.in_(names))))
        missing = sorted(set(names) - {p.name for p in found})
        if missing:
            raise RetryError(f"unknown raw data package(s): {', '.join(missing)}")
        return found
    return list(
        session.scalars(
            select(RawDataPackage).where(
                or_(
                    RawDataPackage.state == PackageState.FAILED,
                    RawDataPackage.status == Status.FAILED,
                ),
                # closed with nothing to archive (every file declared lost): no retry can help
                has_files_to_package(),
            )
        )
    )


def _reset(session: Session, operation, entity_type: str, reason: str, run_id, attr="status"):
    if getattr(operation, attr) == Status.FAILED:
        set_status(
            session,
            operation,
            Status.PENDING,
            entity_type=entity_type,
            reason=reason,
            run_id=run_id,
            attr=attr,
        )
        return True
    return False


def retry_failed(
    session: Session,
    *,
    package_names: Sequence[str] = (),
    run_id: str | None = None,
) -> RetrySummary:
    """Reset the FAILED operations of the named packages (default: every failed package)."""
    summary = RetrySummary()
    reason = "reset by an operator (ccat retry)"
    for package in _packages(session, package_names):
        if _reset(session, package, "raw_data_package", reason, run_id):
            package.retry_count = 0
        bundle: DataTransferPackage | None = package.data_transfer_package
        if bundle is not None and _reset(session, bundle, "data_transfer_package", reason, run_id):
            bundle.retry_count = 0
            summary.bundles.append(bundle.name)
        transfers = bundle.data_transfers if bundle is not None else []
        for transfer in transfers:
            changed = _reset(session, transfer, "data_transfer", reason, run_id)
            changed |= _reset(session, transfer, "data_transfer", reason, run_id, "unpack_status")
            if changed:
                transfer.retry_count = transfer.unpack_retry_count = 0
                summary.transfers += 1
        for lta in session.scalars(
            select(LongTermArchiveTransfer).where(
                LongTermArchiveTransfer.raw_data_package_id == package.id
            )
        ):
            if _reset(session, lta, "long_term_archive_transfer", reason, run_id):
                lta.retry_count = 0
                summary.archive_transfers += 1
        if package.state == PackageState.FAILED:
            state = PackageState.TRANSFERRING if bundle is not None else PackageState.WAITING
            set_status(
                session,
                package,
                state,
                entity_type="raw_data_package",
                reason=reason,
                run_id=run_id,
                attr="state",
            )
        package.failure_reason = None
        summary.packages.append(package.name)
    if not summary.packages:
        raise RetryError("no FAILED raw data package to retry")
    session.commit()
    return summary


__all__ = ["RetryError", "RetrySummary", "retry_failed"]
