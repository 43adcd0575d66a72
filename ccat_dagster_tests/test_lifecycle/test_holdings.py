"""Which copies a location holds, as the UI's partitions mirror them: a deleted copy is ended
with the rule, time and evidence of its deletion; a planned one, or one waiting for deletion,
is not."""

from __future__ import annotations

from ccat_dagster.lifecycle.integrity.holdings import ended_copies
from ccat_dagster_tests import factories as f
from ccat_ops_db.models import CopyType, PhysicalCopyStatus, RawDataPackagePhysicalCopy

S = PhysicalCopyStatus


def _names(ended) -> set[str]:
    return {e.name for e in ended}


def test_only_copies_that_no_longer_hold_their_data_are_ended(session, topo):
    _deleted, _ = f.archived_package(topo, "deleted")
    failed, _ = f.archived_package(topo, "failed_deletion")
    bad, _ = f.archived_package(topo, "bad")
    kept, _ = f.archived_package(topo, "kept")
    buffer = topo.source_buffer
    session.commit()

    report = f.cleanup_cycle(session)  # deletes the archived packages' buffer copies
    assert report.deleted
    for pkg, status in ((failed, S.DELETION_FAILED), (bad, S.BAD), (kept, S.PRESENT)):
        copy = (
            session.query(RawDataPackagePhysicalCopy)
            .filter_by(raw_data_package_id=pkg.id, data_location_id=buffer.id)
            .one()
        )
        copy.status = status
    session.commit()

    names = ["deleted", "failed_deletion", "bad", "kept", "planned_not_written"]
    ended = {e.name: e for e in ended_copies(session, buffer.id, CopyType.RAW_DATA_PACKAGE, names)}
    assert set(ended) == {"deleted", "bad"}
    gone = ended["deleted"]
    assert gone.status == S.DELETED
    assert gone.reason  # the rule that deleted it
    assert gone.evidence
    assert "lta" in str(gone.evidence)
    assert gone.run_id == "run-1"
    assert gone.ended_at is not None
    assert ended["bad"].status == S.BAD
    # the archive still holds every one of them
    lta = topo.lta("cologne")
    assert not ended_copies(session, lta.id, CopyType.RAW_DATA_PACKAGE, names)
