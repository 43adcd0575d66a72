"""The scrub's rate limit: reads are throttled per archive, a run's batch stays within rate x
lta_reverify_run_minutes (oldest check first), and a rate too low to re-read the archive within
the interval is an alert. Real files, both ops-DB backends."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import select

from ccat_dagster.lifecycle.alerts.conditions import site_conditions
from ccat_dagster.lifecycle.alerts.model import AlertKind
from ccat_dagster.lifecycle.archive.reverification import (
    copies_due_for_reverification,
    next_reverification_batch,
    reverify_lta_copy,
)
from ccat_dagster.lifecycle.archive.scrub_rate import scrub_coverage
from ccat_dagster.lifecycle.common.policy import get_policy
from ccat_dagster_tests import factories as f
from ccat_ops_db.models import PolicySetting, RawDataPackagePhysicalCopy, utcnow
from ccat_ops_db.policy import validate_policy


def _archived(session, topo, n: int):
    """``n`` archived packages at cologne/lta, verified long ago, the first the oldest."""
    out = []
    for i in range(n):
        pkg, _ = f.archived_package(topo, f"scrub_pkg_{i}")
        copy = session.scalar(
            select(RawDataPackagePhysicalCopy).where(
                RawDataPackagePhysicalCopy.raw_data_package_id == pkg.id,
                RawDataPackagePhysicalCopy.data_location_id == topo.lta("cologne").id,
            )
        )
        copy.verified_at = utcnow() - timedelta(days=60 - i)
        out.append((pkg, copy))
    session.commit()
    return out


def _set(session, **policy) -> None:
    for key, value in policy.items():
        row = session.get(PolicySetting, key)
        if row is None:
            session.add(PolicySetting(key=key, value=value))
        else:
            row.value = value
    session.commit()


def test_a_run_reads_at_most_rate_times_run_minutes_oldest_first(session, topo):
    copies = _archived(session, topo, 4)
    site, lta = topo.sites["cologne"], topo.lta("cologne")
    every = [(p.id, lta.id) for p, _ in copies]
    assert next_reverification_batch(session, site) == every  # unlimited by default
    size = copies[0][1].size
    assert size
    assert all(c.size == size for _, c in copies)
    # two copies' bytes per one-minute run (60 s x rate)
    _set(session, lta_reverify_bytes_per_second=(2 * size) // 60 + 1, lta_reverify_run_minutes=1)
    assert next_reverification_batch(session, site) == every[:2]
    assert copies_due_for_reverification(session, site) == every  # all still due, later runs
    # a budget below one copy still reads the oldest one (a run always makes progress)
    _set(session, lta_reverify_bytes_per_second=1)
    assert next_reverification_batch(session, site) == every[:1]
    # the per-location override wins over the default
    _set(session, lta_reverify_bytes_per_second_by_location={"cologne/lta": 0})
    assert next_reverification_batch(session, site) == every
    _set(session, lta_reverify_bytes_per_second_by_location={"cologne/lta": 1})
    assert next_reverification_batch(session, site) == every[:1]


def test_the_read_is_throttled_to_the_archives_rate(session, topo):
    [(pkg, copy)] = _archived(session, topo, 1)
    lta = topo.lta("cologne")
    rate = 400
    _set(session, lta_reverify_bytes_per_second_by_location={"cologne/lta": rate})
    start = time.monotonic()
    evidence = reverify_lta_copy(session, pkg, lta, f.local_storage_for(lta), run_id="scrub")
    took = time.monotonic() - start
    assert evidence.ok
    assert evidence.checksum_source == "computed"
    assert took >= 0.9 * copy.size / rate, (took, copy.size)


def test_a_rate_that_cannot_reread_the_archive_in_time_is_an_alert(session, topo):
    copies = _archived(session, topo, 2)
    total = sum(c.size for _, c in copies)
    assert all(c.kind != AlertKind.FIXITY_BEHIND for c in site_conditions(session, "cologne"))
    # one byte per second over a one-minute interval: 60 bytes, less than the archive holds
    _set(session, lta_reverify_bytes_per_second=1, lta_reverify_interval_minutes=1)
    [coverage] = scrub_coverage(session, "cologne")
    assert coverage.archived_bytes == total
    assert not coverage.keeps_up
    assert coverage.rate_needed == -(-total // 60)
    behind = [c for c in site_conditions(session, "cologne") if c.kind == AlertKind.FIXITY_BEHIND]
    assert [c.where for c in behind] == ["cologne/lta"]
    assert "lta_reverify_bytes_per_second" in behind[0].what
    # a rate that keeps up: no alert
    _set(session, lta_reverify_bytes_per_second=total)
    assert all(c.kind != AlertKind.FIXITY_BEHIND for c in site_conditions(session, "cologne"))


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"cologne/lta": -1}, "whole number >= 0"),
        ({"lta": 5}, "site/location"),
        ([5], "mapping"),
    ],
)
def test_per_location_rates_are_validated(value, problem):
    _policy, problems = validate_policy({"lta_reverify_bytes_per_second_by_location": value})
    assert problems
    assert problem in problems[0], problems


def test_policy_defaults_leave_the_scrub_unlimited(session):
    policy = get_policy(session)
    assert policy.lta_reverify_bytes_per_second == 0
    assert policy.lta_reverify_rate("cologne/lta") == 0
    assert policy.restore_drill_sample_size == 3
