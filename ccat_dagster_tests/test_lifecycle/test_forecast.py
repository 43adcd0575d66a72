"""The disk-pressure forecast on synthetic sample series with known answers (linear fill, fill
with periodic cleanups, flat, noisy, too few samples), and from samples in the ops DB over the
policy's window (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from ccat_dagster.lifecycle.capacity.buffer_policy import record_disk_usage
from ccat_dagster.lifecycle.capacity.forecast import (
    fill_rate,
    forecast,
    forecast_locations,
    pressure_alert,
)
from ccat_ops_db.models import PolicySetting
from ccat_ops_db.policy import Policy

LEVELS = {"warning": 70.0, "critical": 85.0, "full": 100.0}
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def series(percent, *, every_minutes: float = 60.0) -> pd.DataFrame:
    times = [T0 + timedelta(minutes=every_minutes * i) for i in range(len(percent))]
    return pd.DataFrame({"measured_at": pd.to_datetime(times, utc=True), "percent": percent})


def test_linear_fill():
    samples = series([10.0 + 1.0 * h for h in range(24)])  # 1 %/h, ends at 33 %
    ahead = forecast("ccat/telescope_buffer", samples, LEVELS)
    assert ahead.fill_rate_percent_per_hour == pytest.approx(1.0)
    assert ahead.used_percent == pytest.approx(33.0)
    assert ahead.hours_to == pytest.approx({"warning": 37.0, "critical": 52.0, "full": 67.0})
    assert ahead.shown("critical") == "2.2 d"
    assert ahead.shown("warning") == "37.0 h"


def test_fill_with_periodic_cleanups_ignores_the_drops():
    # 2 %/h; every 6 hours a cleanup frees 10 points
    percent, level = [], 40.0
    for h in range(48):
        if h and h % 6 == 0:
            level -= 10.0
        percent.append(level)
        level += 2.0
    ahead = forecast("x", series(percent), LEVELS)
    assert ahead.fill_rate_percent_per_hour == pytest.approx(2.0)
    last = percent[-1]
    assert ahead.hours_to["critical"] == pytest.approx((85.0 - last) / 2.0)


def test_flat_usage_never_reaches_a_level():
    ahead = forecast("x", series([50.0] * 30), LEVELS)
    assert ahead.fill_rate_percent_per_hour == pytest.approx(0.0)
    assert ahead.hours_to == {"warning": None, "critical": None, "full": None}
    assert ahead.shown("full") == "-"


def test_noisy_fill_is_estimated_closely():
    rng = np.random.default_rng(7)
    minutes = np.arange(0, 24 * 60, 5.0)  # a sample every 5 minutes for a day
    percent = 20.0 + 0.5 * minutes / 60 + rng.normal(0, 0.2, len(minutes))
    percent[100] += 8.0  # one odd reading
    rate = fill_rate(series(list(percent), every_minutes=5.0))
    assert rate == pytest.approx(0.5, rel=0.03)


def test_too_few_samples_say_so_and_a_reached_level_is_zero():
    ahead = forecast("x", series([90.0, 91.0]), LEVELS)
    assert ahead.fill_rate_percent_per_hour is None
    assert ahead.hours_to == {"warning": 0.0, "critical": 0.0, "full": None}
    assert (ahead.shown("critical"), ahead.shown("full")) == ("reached", "?")
    assert forecast("x", series([]), LEVELS).samples == 0


def test_forecast_from_the_ops_db_over_the_window_and_the_alert(session, topo):
    buffer = topo.source_buffer
    now = datetime.now(UTC)
    # long ago (outside the 24 h window): a fast fill that must not count
    for i in range(10):
        record_disk_usage(
            session,
            buffer,
            used_bytes=10 * i,
            total_bytes=1000,
            measured_at=now - timedelta(hours=60 - i),
        )
    # the last 10 hours: 3 %/h up to 60 %
    for i in range(11):
        record_disk_usage(
            session,
            buffer,
            used_bytes=300 + 30 * i,
            total_bytes=1000,
            measured_at=now - timedelta(hours=10 - i),
        )
    session.commit()

    [ahead] = forecast_locations(session, [buffer], now=now)
    assert ahead.samples == 11
    assert ahead.fill_rate_percent_per_hour == pytest.approx(3.0)
    assert ahead.hours_to["critical"] == pytest.approx(25.0 / 3.0)
    policy = Policy()
    message = pressure_alert(ahead, policy)
    assert message is not None
    assert "ccat/telescope_buffer reaches its critical level in 8.3 h" in message

    session.add(PolicySetting(key="disk_forecast_alert_hours", value=4))
    session.commit()
    [ahead] = forecast_locations(session, [buffer], now=now)
    assert pressure_alert(ahead, Policy(disk_forecast_alert_hours=4)) is None


def test_disk_monitor_prints_the_forecast(session, topo):
    """``ccat disk-monitor`` measures now and shows the fill rate and the time to each level."""
    from typer.testing import CliRunner

    from ccat_dagster.cli import app

    buffer = topo.source_buffer
    now = datetime.now(UTC)
    for i in range(5):
        record_disk_usage(
            session,
            buffer,
            used_bytes=100 + i,
            total_bytes=1000,
            measured_at=now - timedelta(hours=5 - i),
        )
    session.commit()
    result = CliRunner().invoke(
        app, ["disk-monitor", "--location-name", "ccat/telescope_buffer"], env={"COLUMNS": "160"}
    )
    assert result.exit_code == 0, result.output
    assert "TO CRITICAL" in result.output
    assert "fill rate over the last 24 h" in result.output
