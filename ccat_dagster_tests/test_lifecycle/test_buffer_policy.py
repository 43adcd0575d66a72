"""Buffer pressure: levels from the policy thresholds, durable samples, the latest status per
location, and the per-site escalation that relaxes again when pressure falls."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from ccat_dagster.lifecycle.capacity.buffer_policy import (
    BufferLevel,
    buffer_action,
    buffer_level,
    decide_buffer_actions,
    latest_buffer_status,
    latest_buffer_statuses,
    record_disk_usage,
    should_delete_based_on_buffer_status,
)
from ccat_dagster.lifecycle.common.policy import BufferThresholds, Policy
from ccat_dagster_tests import factories as f
from ccat_ops_db.models import DiskUsageSample, LocationType, PolicySetting, utcnow

POLICY = Policy()


@pytest.mark.parametrize(
    ("percent", "level"),
    [
        (0, BufferLevel.NORMAL),
        (69.9, BufferLevel.NORMAL),
        (70, BufferLevel.WARNING),
        (84.9, BufferLevel.WARNING),
        (85, BufferLevel.CRITICAL),
        (95, BufferLevel.EMERGENCY),
        (100, BufferLevel.EMERGENCY),
    ],
)
def test_level_from_seed_thresholds(percent, level):
    assert buffer_level(percent, POLICY) is level


def test_levels_are_ordered():
    assert BufferLevel.NORMAL < BufferLevel.WARNING < BufferLevel.CRITICAL < BufferLevel.EMERGENCY


def test_custom_thresholds_apply():
    policy = Policy(
        buffer_thresholds_percent=BufferThresholds(warning=50, critical=60, emergency=70)
    )
    assert buffer_level(65, policy) is BufferLevel.CRITICAL


def test_escalation_per_level():
    normal = buffer_action(BufferLevel.NORMAL, POLICY, site="ccat")
    assert (normal.max_parallel_transfers, normal.run_cleanup_now, normal.pause_packaging) == (
        5,
        False,
        False,
    )
    assert normal.alert is None
    warning = buffer_action(BufferLevel.WARNING, POLICY, site="ccat")
    assert warning.max_parallel_transfers == 5
    assert "WARNING" in warning.alert
    critical = buffer_action(BufferLevel.CRITICAL, POLICY, site="ccat")
    assert (critical.max_parallel_transfers, critical.run_cleanup_now) == (1, True)
    assert not critical.pause_packaging
    emergency = buffer_action(BufferLevel.EMERGENCY, POLICY, site="ccat")
    assert emergency.pause_packaging
    assert emergency.run_cleanup_now
    # the pressure cleanup: none below CRITICAL, every 5 min at CRITICAL, every 1 at EMERGENCY
    assert (normal.cleanup_interval_minutes, warning.cleanup_interval_minutes) == (None, None)
    assert (critical.cleanup_interval_minutes, emergency.cleanup_interval_minutes) == (5, 1)
    assert "cleanup every 5 min" in critical.alert
    assert "cleanup every 1 min" in emergency.alert
    assert "EMERGENCY" in emergency.alert
    assert "ccat" in emergency.alert


def test_should_delete_only_at_source_and_buffer_under_critical_pressure(session, tmp_path):
    topo = f.make_topology(session, tmp_path)
    critical = record_disk_usage(session, topo.source_buffer, used_bytes=90, total_bytes=100)
    warning = record_disk_usage(session, topo.source, used_bytes=75, total_bytes=100)
    assert should_delete_based_on_buffer_status(topo.source_buffer, critical)
    assert not should_delete_based_on_buffer_status(topo.source, warning)
    assert not should_delete_based_on_buffer_status(topo.source, None)
    assert not should_delete_based_on_buffer_status(LocationType.PROCESSING, critical)


def test_latest_sample_wins_and_is_durable(session, tmp_path):
    topo = f.make_topology(session, tmp_path)
    buf = topo.source_buffer
    record_disk_usage(
        session, buf, used_bytes=96, total_bytes=100, measured_at=utcnow() - timedelta(hours=1)
    )
    record_disk_usage(session, buf, used_bytes=40, total_bytes=100)
    session.commit()
    status = latest_buffer_status(session, buf)
    assert status.level is BufferLevel.NORMAL
    assert status.percent == pytest.approx(40)
    assert session.query(DiskUsageSample).count() == 2
    assert latest_buffer_status(session, topo.source) is None
    assert set(latest_buffer_statuses(session)) == {buf.id}


def test_level_recomputed_with_thresholds_in_force(session, tmp_path):
    topo = f.make_topology(session, tmp_path)
    record_disk_usage(session, topo.source_buffer, used_bytes=80, total_bytes=100)
    session.add(
        PolicySetting(
            key="buffer_thresholds_percent", value={"warning": 50, "critical": 75, "emergency": 90}
        )
    )
    session.commit()
    assert latest_buffer_status(session, topo.source_buffer).level is BufferLevel.CRITICAL


def test_bad_sample_is_refused_with_the_location_named(session, tmp_path):
    topo = f.make_topology(session, tmp_path)
    with pytest.raises(ValueError, match="telescope_buffer"):
        record_disk_usage(session, topo.source_buffer, used_bytes=1, total_bytes=0)


def test_site_actions_follow_worst_buffer_and_relax_when_pressure_falls(session, tmp_path):
    topo = f.make_topology(session, tmp_path, lta_sites=("cologne", "us"))
    record_disk_usage(session, topo.source_buffer, used_bytes=97, total_bytes=100)
    record_disk_usage(session, topo.buffer("cologne"), used_bytes=72, total_bytes=100)
    # An LTA location's usage does not drive a site's buffer actions.
    record_disk_usage(session, topo.lta("us"), used_bytes=99, total_bytes=100)
    session.commit()
    actions = decide_buffer_actions(session)
    assert actions["ccat"].level is BufferLevel.EMERGENCY
    assert actions["ccat"].pause_packaging
    assert actions["ccat"].max_parallel_transfers == 1
    assert "telescope_buffer" in actions["ccat"].alert
    assert actions["cologne"].level is BufferLevel.WARNING
    assert actions["us"].level is BufferLevel.NORMAL
    assert actions["us"].max_parallel_transfers == 5
    record_disk_usage(session, topo.source_buffer, used_bytes=30, total_bytes=100)
    session.commit()
    relaxed = decide_buffer_actions(session)["ccat"]
    assert relaxed.level is BufferLevel.NORMAL
    assert (relaxed.max_parallel_transfers, relaxed.pause_packaging, relaxed.run_cleanup_now) == (
        5,
        False,
        False,
    )


def test_emergency_must_not_clean_less_often_than_critical():
    with pytest.raises(ValidationError, match="must not exceed critical_cleanup_interval"):
        Policy(critical_cleanup_interval_minutes=2, emergency_cleanup_interval_minutes=3)
    relaxed = Policy(critical_cleanup_interval_minutes=10, emergency_cleanup_interval_minutes=10)
    assert buffer_action(BufferLevel.EMERGENCY, relaxed, site="x").cleanup_interval_minutes == 10
