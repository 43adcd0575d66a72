"""``ccat status`` and the end of ``ccat demo``: the per-stage summary as text and tables, and
as the JSON document of ``ccat status --json``."""

from __future__ import annotations

from typing import Any

from ccat_dagster.cli._tables import render, show, table
from ccat_dagster.lifecycle.summary import PipelineSummary

#: archive copies that failed a live check listed one by one (the rest counted)
_LISTED = 50


def _kv(d: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(d.items())) or "none"


def _bytes(n: int | None) -> str:
    value = float(n or 0)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1000
    return f"{value:.1f} TB"


def summary_parts(s: PipelineSummary) -> list[Any]:
    """The summary as a sequence of text blocks and tables."""
    parts: list[Any] = [
        "\n".join(
            [
                f"raw data files filed: {s.files[0]} ({_bytes(s.files[1])})",
                "raw data packages by state: " + _kv(s.packages_by_state),
                "raw data packages by packaging status: " + _kv(s.packages_by_status),
                "data transfer packages by status: " + _kv(s.bundles_by_status),
                "long-term archive transfers: " + _kv(s.archive_transfers),
            ]
        )
    ]
    transfers = table(
        "ROUTE",
        "DESTINATION",
        "STATUS",
        "UNPACK",
        "TRANSFERS",
        title="data transfers",
        right=("TRANSFERS",),
    )
    for route, destination, status, unpack, n in s.transfers:
        transfers.add_row(route, destination, status, unpack, str(n))
    copies = table(
        "LOCATION",
        "KIND",
        "STATUS",
        "COPIES",
        "BYTES",
        title="physical copies",
        right=("COPIES", "BYTES"),
    )
    for (location, kind, status), (n, size) in sorted(s.copies.items()):
        copies.add_row(location, kind, status, str(n), _bytes(size))
    parts += [transfers, copies]
    if s.unusable_lta_copies:
        lines = [
            f"ARCHIVE COPIES FAILED A LIVE CHECK: {len(s.unusable_lta_copies)} (kept out of "
            "every decision; re-archived from a good copy by the archive stage, repair pending):"
        ]
        lines += [
            f"  {package} at {location}: {status} - {reason or 'no detail'}"
            for package, location, status, reason in s.unusable_lta_copies[:_LISTED]
        ]
        if len(s.unusable_lta_copies) > _LISTED:
            lines.append(f"  ... and {len(s.unusable_lta_copies) - _LISTED} more")
        parts.append("\n".join(lines))
    if s.unavailable:
        unavailable = table(
            "LOCATION", "STATE", title=f"locations unavailable: {len(s.unavailable)}"
        )
        for u in s.unavailable:
            unavailable.add_row(u.location, u.describe())
        parts.append(unavailable)
    else:
        parts.append("locations unavailable: none")
    if s.ingest_findings:
        lines = [
            f"FILES AT A SOURCE NOT FILED BY ITS INGEST SENSOR: {len(s.ingest_findings)} (rename "
            "or move each, then write its directory's marker again; a new version is looked at "
            "again):"
        ]
        lines += [
            f"  {location} {path}: {kind}" + (f" - {message}" if message != path else "")
            for location, kind, path, message in s.ingest_findings[:_LISTED]
        ]
        if len(s.ingest_findings) > _LISTED:
            lines.append(f"  ... and {len(s.ingest_findings) - _LISTED} more")
        parts.append("\n".join(lines))
    if s.lost_files:
        lines = ["packages with raw data files declared lost (`ccat files declare-lost`):"]
        lines += [
            f"  {package} ({unit_module}): {lost} of {total} files lost, {detail}"
            for package, unit_module, lost, total, detail in s.lost_files
        ]
        parts.append("\n".join(lines))
    return parts


def render_summary(s: PipelineSummary) -> str:
    """The summary as plain text (what ``ccat status`` prints when piped)."""
    return render(*summary_parts(s))


def show_summary(s: PipelineSummary) -> None:
    show(*summary_parts(s))


def summary_document(s: PipelineSummary) -> dict[str, Any]:
    """The summary as the JSON document of ``ccat status --json`` (keys: docs/operations.md)."""
    return {
        "files": {"count": s.files[0], "bytes": s.files[1]},
        "packages_by_state": dict(sorted(s.packages_by_state.items())),
        "packages_by_status": dict(sorted(s.packages_by_status.items())),
        "bundles_by_status": dict(sorted(s.bundles_by_status.items())),
        "transfers": [
            {
                "route": route,
                "destination": dest,
                "status": status,
                "unpack_status": unpack,
                "count": n,
            }
            for route, dest, status, unpack, n in s.transfers
        ],
        "archive_transfers": dict(sorted(s.archive_transfers.items())),
        "copies": [
            {"location": location, "kind": kind, "status": status, "count": n, "bytes": size or 0}
            for (location, kind, status), (n, size) in sorted(s.copies.items())
        ],
        "unusable_archive_copies": [
            {"package": package, "location": location, "status": status, "reason": reason}
            for package, location, status, reason in s.unusable_lta_copies
        ],
        "unavailable_locations": [
            {
                "location": u.location,
                "location_type": u.location_type,
                "observer": u.observer,
                "since": u.since,
                "reason": u.reason,
                "consecutive_failures": u.consecutive_failures,
                "last_probe_at": u.last_probe_at,
                "next_probe_at": u.next_probe_at,
            }
            for u in s.unavailable
        ],
        "ingest_findings": [
            {"location": location, "kind": kind, "path": path, "message": message}
            for location, kind, path, message in s.ingest_findings
        ],
        "lost_files": [
            {
                "package": package,
                "obs_unit_module": unit_module,
                "lost": lost,
                "total": total,
                "detail": detail,
            }
            for package, unit_module, lost, total, detail in s.lost_files
        ],
    }
