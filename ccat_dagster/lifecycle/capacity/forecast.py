"""Disk-pressure forecast: from the disk-usage samples of a location, when it reaches its
warning and critical levels and when it is full, if it keeps filling as it does.

The fill rate is a robust trend over the policy's window (``disk_forecast_window_hours``):
the series is cut where a cleanup freed space (a drop larger than the noise), and the rate is
the median of the slopes across each piece (each sample against the one half a piece later),
so cleanups, single odd samples and measurement noise do not move it. The forecast says what
happens if no cleanup comes: the question an operator has when the cleanup is failing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.common.policy import get_policy
from ccat_ops_db.models import DataLocation, DiskUsageSample, as_utc, utcnow
from ccat_ops_db.policy import Policy

if TYPE_CHECKING:
    import pandas as pd

# pandas and numpy (a quarter of a second) are imported where a forecast is computed, not with
# the module: every code server, run worker and CLI process imports this module through the
# alert conditions, and most never forecast (test_defs/test_import_cost.py checks that the
# site's code loads without them).

#: a fill slower than this (percent of the disk per hour) is "not filling"
MIN_RATE = 1e-6
#: a drop is a cleanup when larger than this many robust standard deviations of the steps...
DROP_SIGMAS = 5.0
#: ...and than this many percentage points
MIN_DROP_PERCENT = 0.5
MIN_SAMPLES = 3


@dataclass(frozen=True)
class DiskForecast:
    """Where a location's usage goes. ``hours_to`` maps warning / critical / full to the hours
    from the last sample until that level (0: reached already; None: not filling, or too few
    samples to say)."""

    location: str
    samples: int
    used_percent: float | None = None
    fill_rate_percent_per_hour: float | None = None
    hours_to: dict[str, float | None] = field(default_factory=dict)

    def shown(self, level: str) -> str:
        hours = self.hours_to.get(level)
        if hours is None:
            return "-" if self.fill_rate_percent_per_hour is not None else "?"
        if hours == 0:
            return "reached"
        return f"{hours / 24:.1f} d" if hours >= 48 else f"{hours:.1f} h"


def fill_rate(samples: pd.DataFrame) -> float | None:
    """The robust fill rate (percent per hour) of ``samples`` (columns ``measured_at``, a UTC
    timestamp, and ``percent``), cleanup drops ignored; None with fewer than 3 samples."""
    import numpy as np
    import pandas as pd

    frame = samples.dropna().sort_values("measured_at").drop_duplicates("measured_at")
    if len(frame) < MIN_SAMPLES:
        return None
    start = frame["measured_at"].iloc[0]
    hours = ((frame["measured_at"] - start) / pd.Timedelta(hours=1)).to_numpy(dtype=float)
    percent = frame["percent"].to_numpy(dtype=float)
    steps = np.diff(percent)
    deviation = 1.4826 * float(np.median(np.abs(steps - np.median(steps))))
    drop = max(MIN_DROP_PERCENT, DROP_SIGMAS * deviation)
    cuts = np.flatnonzero(steps < -drop) + 1  # each piece starts after a cleanup
    slopes: list[np.ndarray] = []
    for piece in np.split(np.arange(len(percent)), cuts):
        if len(piece) < 2:
            continue
        lag = max(1, len(piece) // 2)
        t, p = hours[piece], percent[piece]
        span = t[lag:] - t[:-lag]
        ok = span > 0
        slopes.append((p[lag:][ok] - p[:-lag][ok]) / span[ok])
    rates = np.concatenate(slopes) if slopes else np.array([])
    return float(np.median(rates)) if len(rates) else None


def forecast(name: str, samples: pd.DataFrame, levels: dict[str, float]) -> DiskForecast:
    """The forecast of one location from its samples, for ``levels`` (name -> percent)."""
    if samples.empty:
        return DiskForecast(name, 0)
    last = float(samples.sort_values("measured_at")["percent"].iloc[-1])
    rate = fill_rate(samples)
    hours_to: dict[str, float | None] = {}
    for level, threshold in levels.items():
        if last >= threshold:
            hours_to[level] = 0.0
        elif rate is None or rate < MIN_RATE:
            hours_to[level] = None
        else:
            hours_to[level] = (threshold - last) / rate
    return DiskForecast(name, len(samples), last, rate, hours_to)


def levels_of(policy: Policy) -> dict[str, float]:
    thresholds = policy.buffer_thresholds_percent
    return {"warning": thresholds.warning, "critical": thresholds.critical, "full": 100.0}


def load_samples(
    session: Session, location_ids: Sequence[int], since: datetime
) -> dict[int, pd.DataFrame]:
    """The samples of each location since ``since``, oldest first (one query for all)."""
    import pandas as pd

    rows = session.execute(
        sa.select(
            DiskUsageSample.data_location_id, DiskUsageSample.measured_at, DiskUsageSample.percent
        )
        .where(
            DiskUsageSample.data_location_id.in_(location_ids),
            DiskUsageSample.measured_at >= since,
        )
        .order_by(DiskUsageSample.measured_at)
    ).all()
    frame = pd.DataFrame(
        {
            "location_id": [i for i, _, _ in rows],
            "measured_at": pd.to_datetime([as_utc(t) for _, t, _ in rows], utc=True),
            "percent": [p for _, _, p in rows],
        }
    )
    empty = frame.iloc[0:0][["measured_at", "percent"]]
    groups = {i: g[["measured_at", "percent"]] for i, g in frame.groupby("location_id")}
    return {i: groups.get(i, empty) for i in location_ids}


def forecast_locations(
    session: Session,
    locations: Iterable[DataLocation],
    *,
    policy: Policy | None = None,
    now: datetime | None = None,
) -> list[DiskForecast]:
    """The forecast of each location over the policy's window ending ``now``."""
    policy = policy or get_policy(session)
    since = (now or utcnow()) - timedelta(hours=policy.disk_forecast_window_hours)
    locations = list(locations)
    samples = load_samples(session, [loc.id for loc in locations], since)
    levels = levels_of(policy)
    return [forecast(loc.qualified_name, samples[loc.id], levels) for loc in locations]


def pressure_alert(item: DiskForecast, policy: Policy) -> str | None:
    """The warning to give when the location reaches its critical level within the policy's
    ``disk_forecast_alert_hours`` (and is not there yet); None otherwise."""
    hours = item.hours_to.get("critical")
    if hours is None or hours == 0 or hours > policy.disk_forecast_alert_hours:
        return None
    return (
        f"{item.location} reaches its critical level in {item.shown('critical')} at the "
        f"present fill rate ({item.fill_rate_percent_per_hour:.2f}%/h, now "
        f"{item.used_percent:.1f}%): make room or check that its cleanup runs"
    )
