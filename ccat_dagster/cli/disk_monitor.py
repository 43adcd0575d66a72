"""``ccat disk-monitor``: measure disk usage now, record it, and show the levels and the
forecast; as a table or as the JSON document of ``--json``."""

from __future__ import annotations

from typing import Any

import typer

from ccat_dagster.cli._common import OperatorError, ops_session
from ccat_dagster.cli._json import emit, json_option
from ccat_dagster.cli._tables import show, table, tracked


def disk_monitor_command(
    all_: bool = typer.Option(False, "--all", help="Every active disk location."),
    location_name: str = typer.Option(None, "--location-name", help="One location."),
    site: str = typer.Option(None, "--site", help="Every active disk location of a site."),
    local_site: str = typer.Option(
        None, "--from-site", help="Measure as this site's code server would (local vs SSH)."
    ),
    as_json: bool = json_option(),
) -> None:
    """Measure disk usage now (locally, or over SSH for remote hosts), record it, show levels."""
    from sqlalchemy import select

    from ccat_dagster.lifecycle.capacity.buffer_policy import record_disk_usage
    from ccat_dagster.lifecycle.capacity.forecast import forecast_locations, pressure_alert
    from ccat_dagster.lifecycle.common.locations import resolve_location
    from ccat_dagster.lifecycle.common.policy import get_policy
    from ccat_dagster.storage.factory import StorageRegistry
    from ccat_ops_db.models import DataLocation, DiskDataLocation, Site

    if sum(bool(x) for x in (all_, location_name, site)) != 1:
        raise OperatorError("give exactly one of --all, --location-name NAME, --site SITE")
    with ops_session() as session, StorageRegistry(local_site=local_site) as storages:
        if location_name:
            locations = [resolve_location(session, location_name)]
        else:
            query = select(DataLocation).where(DataLocation.active.is_(True))
            if site:
                query = query.join(Site).where(Site.short_name == site)
            locations = list(session.scalars(query))
        disks = [loc for loc in locations if isinstance(loc, DiskDataLocation)]
        if not disks:
            raise OperatorError(
                f"no active disk location {'at site ' + repr(site) if site else 'matches'}; "
                "`ccat list-locations` shows the sites and their locations"
            )
        usage_table = table(
            "LOCATION",
            "USED",
            "LEVEL",
            "USED GB",
            "TOTAL GB",
            "FILL %/h",
            "TO WARNING",
            "TO CRITICAL",
            "TO FULL",
            right=("USED", "USED GB", "TOTAL GB", "FILL %/h"),
        )
        measured = []
        for loc in tracked(disks, "measuring disk usage"):
            usage = storages.get(loc).disk_usage()
            status = record_disk_usage(
                session, loc, used_bytes=usage.used_bytes, total_bytes=usage.total_bytes
            )
            measured.append((loc, usage, status))
        session.commit()
        policy = get_policy(session)
        forecasts = forecast_locations(session, [loc for loc, _, _ in measured], policy=policy)
        alerts = []
        documents: list[dict[str, Any]] = []
        for (loc, usage, status), ahead in zip(measured, forecasts, strict=True):
            rate = ahead.fill_rate_percent_per_hour
            usage_table.add_row(
                f"{loc.site.short_name}/{loc.name}",
                f"{status.percent:.1f}%",
                status.level.name,
                f"{usage.used_bytes / 1e9:,.1f}",
                f"{usage.total_bytes / 1e9:,.1f}",
                "?" if rate is None else f"{rate:.3f}",
                ahead.shown("warning"),
                ahead.shown("critical"),
                ahead.shown("full"),
            )
            alert = pressure_alert(ahead, policy)
            if alert:
                alerts.append(alert)
            documents.append(
                {
                    "location": f"{loc.site.short_name}/{loc.name}",
                    "measured_at": status.measured_at,
                    "used_bytes": usage.used_bytes,
                    "total_bytes": usage.total_bytes,
                    "used_percent": round(status.percent, 3),
                    "level": status.level.name,
                    "samples": ahead.samples,
                    "fill_rate_percent_per_hour": rate,
                    "hours_to": {
                        level: ahead.hours_to.get(level)
                        for level in ("warning", "critical", "full")
                    },
                    "alert": alert,
                }
            )
        if as_json:
            emit(
                {
                    "forecast_window_hours": policy.disk_forecast_window_hours,
                    "locations": documents,
                }
            )
            return
        show(usage_table)
        typer.echo(
            f"forecast: fill rate over the last {policy.disk_forecast_window_hours} h of "
            "samples, cleanups ignored ('?': fewer than 3 samples, '-': not filling)"
        )
        for alert in alerts:
            typer.echo(f"WARNING: {alert}")


def register(app: typer.Typer) -> None:
    app.command("disk-monitor")(disk_monitor_command)
