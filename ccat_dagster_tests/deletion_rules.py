"""The deletion matrix row by row, under the names of docs/lifecycle.md, for tests and the bench.

The product asks the rules through :func:`ccat_dagster.lifecycle.deletion.rules.find_deletable`
with a rule name (the cleanup runs every rule in ``RULE_ORDER``); the rows are documented on the
rules themselves. Tests and ``bench/bench_deletion.py`` name one row at a time, and ask about
one package at one location (``can_delete_*``: the per-copy decision the bench compares the
set-based plan with), so those forms live here, each one call of the same rule.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.deletion.rules import (
    RULE_DTP_LTA_BUFFER,
    RULE_DTP_SOURCE_BUFFER,
    RULE_RDF_DELETION_POSSIBLE,
    RULE_RDF_PROCESSING,
    RULE_RDF_STAGED,
    RULE_RDP_LTA_BUFFER,
    RULE_RDP_SOURCE_BUFFER,
    DeletableCopy,
    RuleContext,
    find_deletable,
)
from ccat_ops_db.models import DataLocation, DataTransferPackage, RawDataPackage

Location = DataLocation | int | None


def find_deletable_raw_data_packages_at_source_buffers(
    session: Session, *, location: Location = None, ctx: RuleContext | None = None
) -> list[DeletableCopy]:
    """RawDataPackage copies at a BUFFER of a SOURCE site (RULE_RDP_SOURCE_BUFFER)."""
    return find_deletable(session, RULE_RDP_SOURCE_BUFFER, location=location, ctx=ctx)


def find_deletable_raw_data_packages_at_lta_buffers(
    session: Session, *, location: Location = None, ctx: RuleContext | None = None
) -> list[DeletableCopy]:
    """RawDataPackage copies at a BUFFER of an LTA site (RULE_RDP_LTA_BUFFER)."""
    return find_deletable(session, RULE_RDP_LTA_BUFFER, location=location, ctx=ctx)


def find_deletable_data_transfer_packages_at_source_buffers(
    session: Session, *, location: Location = None, ctx: RuleContext | None = None
) -> list[DeletableCopy]:
    """DataTransferPackage copies at a BUFFER of a SOURCE site (RULE_DTP_SOURCE_BUFFER)."""
    return find_deletable(session, RULE_DTP_SOURCE_BUFFER, location=location, ctx=ctx)


def find_deletable_data_transfer_packages_at_lta_buffers(
    session: Session, *, location: Location = None, ctx: RuleContext | None = None
) -> list[DeletableCopy]:
    """DataTransferPackage copies at a BUFFER of an LTA site (RULE_DTP_LTA_BUFFER)."""
    return find_deletable(session, RULE_DTP_LTA_BUFFER, location=location, ctx=ctx)


def process_deletion_possible_raw_data_files(
    session: Session, *, location: Location = None, ctx: RuleContext | None = None
) -> list[DeletableCopy]:
    """DELETION_POSSIBLE RawDataFile copies at SOURCE/BUFFER (RULE_RDF_DELETION_POSSIBLE)."""
    return find_deletable(session, RULE_RDF_DELETION_POSSIBLE, location=location, ctx=ctx)


def find_deletable_processing_raw_data_files(
    session: Session, *, location: Location = None, ctx: RuleContext | None = None
) -> list[DeletableCopy]:
    """RawDataFile copies at PROCESSING, package not STAGED there (RULE_RDF_PROCESSING)."""
    return find_deletable(session, RULE_RDF_PROCESSING, location=location, ctx=ctx)


def find_deletable_staged_raw_data_files_by_location(
    session: Session, *, location: Location = None, ctx: RuleContext | None = None
) -> list[DeletableCopy]:
    """RawDataFile copies at PROCESSING of a package STAGED there (RULE_RDF_STAGED)."""
    return find_deletable(session, RULE_RDF_STAGED, location=location, ctx=ctx)


def can_delete_raw_data_package_from_source_buffer(
    session: Session, raw_data_package: RawDataPackage, source_location: DataLocation
) -> bool:
    """One package at one source-site buffer (RULE_RDP_SOURCE_BUFFER)."""
    return bool(
        find_deletable(
            session,
            RULE_RDP_SOURCE_BUFFER,
            location=source_location,
            entity_id=raw_data_package.id,
        )
    )


def can_delete_raw_data_package_from_lta_buffer(
    session: Session, raw_data_package: RawDataPackage, lta_buffer_location: DataLocation
) -> bool:
    """One package at one LTA-site buffer (RULE_RDP_LTA_BUFFER)."""
    return bool(
        find_deletable(
            session,
            RULE_RDP_LTA_BUFFER,
            location=lta_buffer_location,
            entity_id=raw_data_package.id,
        )
    )


def can_delete_data_transfer_package_from_source_buffer(
    session: Session, package: DataTransferPackage, source_buffer: DataLocation
) -> bool:
    """One bundle at one source-site buffer (RULE_DTP_SOURCE_BUFFER)."""
    return bool(
        find_deletable(
            session, RULE_DTP_SOURCE_BUFFER, location=source_buffer, entity_id=package.id
        )
    )


def can_delete_data_transfer_package_from_lta_buffer(
    session: Session, package: DataTransferPackage, lta_buffer: DataLocation
) -> bool:
    """One bundle at one LTA-site buffer (RULE_DTP_LTA_BUFFER)."""
    return bool(
        find_deletable(session, RULE_DTP_LTA_BUFFER, location=lta_buffer, entity_id=package.id)
    )
