"""One ops-DB state per alert kind, and the change that clears it (built with the test
factories). Each scenario returns the site whose alert sensor reports it, the kinds it opens and
the ``now`` to evaluate at (later than the wall clock where a condition needs time to pass)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from ccat_dagster.lifecycle.alerts.model import AlertKind
from ccat_dagster.lifecycle.capacity.availability import mark_available, mark_unavailable
from ccat_dagster.lifecycle.capacity.buffer_policy import record_disk_usage
from ccat_dagster_tests import factories as f
from ccat_ops_db.models import (
    PackageState,
    PhysicalCopyStatus,
    RawDataPackagePhysicalCopy,
    Status,
    utcnow,
)
from ccat_ops_db.policy import POLICY_DEFAULTS


@dataclass
class Scenario:
    site: str
    kinds: set[AlertKind]
    now: datetime
    clear: Callable[[], None]


def packages_failed(topo: f.Topology) -> Scenario:
    pkg = f.file_raw_data_package(topo)
    pkg.status, pkg.state, pkg.failure_reason = Status.FAILED, PackageState.FAILED, "checksum"

    def clear() -> None:
        pkg.status, pkg.state = Status.COMPLETED, PackageState.WAITING

    return Scenario("ccat", {AlertKind.PACKAGES_FAILED}, utcnow(), clear)


def lta_presence_failed(topo: f.Topology) -> Scenario:
    pkg, _ = f.archived_package(topo)
    copy = (
        topo.session.query(RawDataPackagePhysicalCopy)
        .filter_by(raw_data_package_id=pkg.id, data_location_id=topo.lta("cologne").id)
        .one()
    )
    copy.status = PhysicalCopyStatus.LOST

    def clear() -> None:  # the archive stage repaired it
        copy.status = PhysicalCopyStatus.PRESENT

    return Scenario("cologne", {AlertKind.LTA_PRESENCE_FAILED}, utcnow(), clear)


def _buffer_at(percent: int) -> Callable[[f.Topology], Scenario]:
    def scenario(topo: f.Topology) -> Scenario:
        buffer = topo.buffer("cologne")
        record_disk_usage(topo.session, buffer, used_bytes=percent, total_bytes=100)

        def clear() -> None:
            record_disk_usage(topo.session, buffer, used_bytes=50, total_bytes=100)

        kinds = {AlertKind.BUFFER_CRITICAL}
        if percent >= 95:
            kinds.add(AlertKind.BUFFER_EMERGENCY)
        return Scenario("cologne", kinds, utcnow(), clear)

    return scenario


buffer_critical = _buffer_at(90)
buffer_emergency = _buffer_at(97)


def location_unavailable(topo: f.Topology) -> Scenario:
    lta = topo.lta("cologne")
    mark_unavailable(topo.session, lta, observer="ccat", reason="host unreachable")

    def clear() -> None:
        mark_available(topo.session, lta, observer="ccat")

    minutes = POLICY_DEFAULTS["alert_location_unavailable_minutes"] + 1
    return Scenario(
        "ccat", {AlertKind.LOCATION_UNAVAILABLE}, utcnow() + timedelta(minutes=minutes), clear
    )


def pipeline_stalled(topo: f.Topology) -> Scenario:
    pkg = f.file_raw_data_package(topo)
    pkg.status = Status.PENDING

    def clear() -> None:
        pkg.status = Status.COMPLETED

    minutes = POLICY_DEFAULTS["alert_stall_minutes"] + 1
    return Scenario(
        "ccat", {AlertKind.PIPELINE_STALLED}, utcnow() + timedelta(minutes=minutes), clear
    )


def disk_forecast(topo: f.Topology) -> Scenario:
    """Filling 10 %/h at 70 %: critical (85 %) in 1.5 h, within the 12 h of the policy."""
    buffer, now = topo.buffer("cologne"), utcnow()
    for hours_ago, percent in ((2, 50), (1, 60), (0, 70)):
        record_disk_usage(
            topo.session,
            buffer,
            used_bytes=percent,
            total_bytes=100,
            measured_at=now - timedelta(hours=hours_ago),
        )

    def clear() -> None:  # a cleanup freed space and the fill stopped
        for minutes in range(1, 9):
            record_disk_usage(
                topo.session,
                buffer,
                used_bytes=30,
                total_bytes=100,
                measured_at=now + timedelta(minutes=minutes),
            )

    return Scenario("cologne", {AlertKind.DISK_FORECAST}, now, clear)


SCENARIOS: dict[str, Callable[[f.Topology], Scenario]] = {
    "packages_failed": packages_failed,
    "lta_presence_failed": lta_presence_failed,
    "buffer_critical": buffer_critical,
    "buffer_emergency": buffer_emergency,
    "location_unavailable": location_unavailable,
    "pipeline_stalled": pipeline_stalled,
    "disk_forecast": disk_forecast,
}
