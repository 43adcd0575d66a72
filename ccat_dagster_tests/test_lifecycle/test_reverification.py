"""The scrub: archive copies are read back once per interval; a copy whose bytes rotted at rest
is marked BAD and its package sent back to the archive stage (both ops-DB backends, real files)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from ccat_dagster.lifecycle.archive import stage as archive_stage
from ccat_dagster.lifecycle.archive.reverification import (
    copies_due_for_reverification,
    reverify_lta_copy,
)
from ccat_dagster.storage.errors import LocationUnavailableError
from ccat_dagster_tests import factories as f
from ccat_ops_db.models import (
    AuditLog,
    PhysicalCopyStatus,
    PolicySetting,
    RawDataPackagePhysicalCopy,
    utcnow,
)

S = PhysicalCopyStatus


def _archived(session, topo):
    pkg, _dtp = f.archived_package(topo)
    copy = session.scalar(
        select(RawDataPackagePhysicalCopy).where(
            RawDataPackagePhysicalCopy.raw_data_package_id == pkg.id,
            RawDataPackagePhysicalCopy.data_location_id == topo.lta("cologne").id,
        )
    )
    session.commit()
    return pkg, copy


def _age(session, copy, minutes: float) -> None:
    copy.verified_at = utcnow() - timedelta(minutes=minutes)
    session.commit()


def test_only_copies_older_than_the_interval_are_due(session, topo):
    pkg, copy = _archived(session, topo)
    site = topo.sites["cologne"]
    assert copies_due_for_reverification(session, site) == []
    _age(session, copy, 43_200 + 1)  # the default interval: 30 days
    assert copies_due_for_reverification(session, site) == [(pkg.id, topo.lta("cologne").id)]
    session.add(PolicySetting(key="lta_reverify_interval_minutes", value=60))
    _age(session, copy, 30)
    assert copies_due_for_reverification(session, site) == []
    _age(session, copy, 61)
    assert copies_due_for_reverification(session, site) == [(pkg.id, topo.lta("cologne").id)]
    assert copies_due_for_reverification(session, topo.sites["ccat"]) == []


def test_a_good_copy_is_stamped_and_no_longer_due(session, topo):
    pkg, copy = _archived(session, topo)
    _age(session, copy, 50_000)
    lta = topo.lta("cologne")
    evidence = reverify_lta_copy(session, pkg, lta, f.local_storage_for(lta), run_id="scrub")
    session.rollback()  # what it recorded is committed: a run's session is not committed after
    assert evidence.ok
    assert evidence.checksum_source == "computed"
    assert copy.status == S.PRESENT
    assert utcnow() - copy.verified_at < timedelta(minutes=1)
    assert copies_due_for_reverification(session, topo.sites["cologne"]) == []


def test_bytes_rotted_at_rest_mark_the_copy_bad_and_re_archive(session, topo):
    pkg, copy = _archived(session, topo)
    _age(session, copy, 50_000)
    lta = topo.lta("cologne")
    path = f.object_path(lta, pkg.relative_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))

    evidence = reverify_lta_copy(session, pkg, lta, f.local_storage_for(lta), run_id="scrub")
    session.rollback()  # what it recorded is committed: a run's session is not committed after
    assert not evidence.ok
    assert evidence.definite_failure
    assert "checksum mismatch" in evidence.detail
    assert copy.status == S.BAD
    record = session.scalars(
        select(AuditLog).where(
            AuditLog.entity_type == "physical_copy", AuditLog.entity_id == copy.id
        )
    ).all()[-1]
    assert record.new_status == S.BAD.value
    assert record.evidence["checksum_source"] == "computed"
    # the archive stage takes the package again, from the good buffer copy
    candidates = archive_stage.archive_candidates(session, topo.sites["cologne"])
    assert [(p.id, lta_.id) for p, _source, lta_ in candidates] == [(pkg.id, lta.id)]


def test_an_archive_that_does_not_answer_changes_nothing(session, topo, tmp_path):
    pkg, copy = _archived(session, topo)
    _age(session, copy, 50_000)
    lta = topo.lta("cologne")
    root = f.object_path(lta, "")
    root.rename(tmp_path / "unmounted")
    with pytest.raises(LocationUnavailableError):
        reverify_lta_copy(session, pkg, lta, f.local_storage_for(lta), run_id="scrub")
    session.rollback()
    assert copy.status == S.PRESENT
    assert copies_due_for_reverification(session, topo.sites["cologne"]) != []
