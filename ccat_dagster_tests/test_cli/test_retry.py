"""``ccat retry`` gives permanently failed deletions their retries back: it only resets them
(audited, counted per location), and the next cleanup deletes them by the rules."""

from __future__ import annotations

import json

from sqlalchemy import select
from typer.testing import CliRunner

from ccat_dagster.cli import app
from ccat_dagster.lifecycle.deletion import rules as d
from ccat_dagster.lifecycle.deletion.retry import REASON
from ccat_dagster_tests import factories as f
from ccat_ops_db.models import AuditLog, PhysicalCopy, PhysicalCopyStatus, PolicySetting

S = PhysicalCopyStatus
runner = CliRunner()


def _copy(session, copy_id: int) -> PhysicalCopy:
    session.expire_all()
    return session.get_one(PhysicalCopy, copy_id)


def _permanent_failures() -> list[dict]:
    result = runner.invoke(app, ["deletion-plan", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["permanent_failures"]


def test_retry_resets_permanent_deletion_failures_and_the_cleanup_deletes_them(session, tmp_path):
    topo = f.make_topology(session, tmp_path, lta_sites=("cologne",))
    session.add(PolicySetting(key="max_retries", value=2))
    _, dtp = f.archived_package(topo)
    session.commit()
    buffer = topo.source_buffer
    # A directory where the bundle's file was: the storage refuses to delete it, twice.
    path = f.object_path(buffer, dtp.relative_path)
    path.unlink()
    path.mkdir()
    f.cleanup_cycle(session, run_id="a")
    f.cleanup_cycle(session, run_id="b")
    [failure] = _permanent_failures()
    copy_id = failure["copy_id"]
    assert failure["location"] == buffer.qualified_name
    assert failure["attempts"] == 2

    shown = runner.invoke(app, ["deletion-plan"])
    assert "PERMANENT FAILURES" in shown.stdout
    assert "fix the cause, then `ccat retry`" in shown.stdout
    row = next(
        line.split() for line in shown.stdout.splitlines() if line.split()[:1] == [str(copy_id)]
    )
    assert row[1:4] == ["data_transfer_package", buffer.qualified_name, "2"]

    path.rmdir()  # the operator fixed the cause; the cleanup alone does not try again
    f.cleanup_cycle(session, run_id="c")
    assert _copy(session, copy_id).status == S.DELETION_FAILED

    elsewhere = runner.invoke(app, ["retry", "--location", "cologne/buffer"])
    assert elsewhere.exit_code == 1
    assert "nothing to retry at cologne/buffer" in elsewhere.stderr

    result = runner.invoke(app, ["retry"])
    assert result.exit_code == 0, result.output
    assert f"failed deletions reset at {buffer.qualified_name}: 1" in result.stdout
    # Reset, not deleted: same status, retries back, the bytes' fate left to the rules.
    copy = _copy(session, copy_id)
    assert (copy.status, copy.retry_count) == (S.DELETION_FAILED, 0)
    [audit] = session.scalars(
        select(AuditLog).where(AuditLog.entity_id == copy_id, AuditLog.reason == REASON)
    ).all()
    assert audit.entity_type == "physical_copy"
    assert audit.data_location_id == buffer.id
    assert (audit.old_status, audit.new_status) == (
        S.DELETION_FAILED.value,
        S.DELETION_FAILED.value,
    )
    assert audit.evidence["attempts"] == 2
    assert "not a regular file" in audit.evidence["failure_reason"]
    assert _permanent_failures() == []

    report = f.cleanup_cycle(session, run_id="d")
    assert _copy(session, copy_id).status == S.DELETED
    assert report.deleted_by_rule[d.RULE_DTP_SOURCE_BUFFER] == 1

    again = runner.invoke(app, ["retry"])
    assert again.exit_code == 1
    assert "nothing to retry" in again.stderr
