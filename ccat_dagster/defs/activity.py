"""Sensors skip a site or location the ops DB no longer has active (``lifecycle.common.activity``).

A sensor is built from the topology as it was when its code location loaded, and keeps ticking
until the code location is reloaded; the tick asks the ops DB first and skips, with a log line
that says why and what to do, instead of starting work at a location switched off since.
"""

from __future__ import annotations

from dagster import SensorEvaluationContext, SkipReason
from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.common.activity import why_inactive

RELOAD_HINT = "reload the code locations (`ccat topology reload`) to drop this sensor"


def skip_if_inactive(
    context: SensorEvaluationContext, session: Session, site: str, location: str | None = None
) -> SkipReason | None:
    """A SkipReason (logged) when ``site`` or its ``location`` is no longer active, else None."""
    why = why_inactive(session, site, location)
    if why is None:
        return None
    message = f"skipped: {why}; {RELOAD_HINT}"
    context.log.warning(message)
    return SkipReason(message)
