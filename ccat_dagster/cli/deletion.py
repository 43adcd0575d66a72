"""``ccat deletion-plan``: what a cleanup would delete now and why, what is blocked, and the
deletions that failed for good; as tables or as the JSON document of ``--json``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from ccat_dagster.cli._common import ops_session
from ccat_dagster.cli._json import emit, json_option
from ccat_dagster.cli._tables import show, table

if TYPE_CHECKING:
    from ccat_dagster.lifecycle.deletion.plan import DeletionPlan


def plan_document(plan: DeletionPlan, where: str | None) -> dict[str, Any]:
    """The plan as the JSON document of ``ccat deletion-plan --json`` (docs/operations.md)."""
    return {
        "at": plan.now,
        "location": where,
        "deletable_by_rule": dict(sorted(plan.count_by_rule.items())),
        "bytes_to_free_by_location": dict(sorted(plan.bytes_by_location.items())),
        "blocked_by_rule": {
            rule: dict(sorted(reasons.items()))
            for rule, reasons in sorted(plan.blocked_by_rule.items())
        },
        "staged_packages_to_close": len(plan.staged_packages_to_close),
        "permanent_failures": [
            {
                "copy_id": copy_id,
                "location": plan.location_names.get(loc_id, str(loc_id)),
                "copy_type": copy_type.value,
                "attempts": retries,
                "reason": reason,
            }
            for copy_id, loc_id, copy_type, retries, reason in plan.permanent_failures
        ],
    }


def plan_parts(plan: DeletionPlan, where: str | None) -> list[Any]:
    """The plan as text and tables: what goes, where bytes are freed, what waits and why."""
    doc = plan_document(plan, where)
    parts: list[Any] = [
        f"deletion plan at {plan.now:%Y-%m-%d %H:%M:%S}Z" + (f" for {where}" if where else "")
    ]
    if not plan.deletable and not plan.blocked:
        parts.append("nothing to delete and nothing waiting")
    if doc["deletable_by_rule"]:
        deletable = table("RULE", "COPIES", title="deletable now", right=("COPIES",))
        for rule, n in doc["deletable_by_rule"].items():
            deletable.add_row(rule, str(n))
        freed = table("LOCATION", "BYTES", title="bytes to free", right=("BYTES",))
        for name, nbytes in doc["bytes_to_free_by_location"].items():
            freed.add_row(name, f"{nbytes:,}")
        parts += [deletable, freed]
    if plan.staged_packages_to_close:
        parts.append(f"STAGED package copies to close: {len(plan.staged_packages_to_close)}")
    if doc["blocked_by_rule"]:
        blocked = table("RULE", "WHY IT WAITS", "COPIES", title="blocked", right=("COPIES",))
        for rule, reasons in doc["blocked_by_rule"].items():
            for i, (reason, n) in enumerate(reasons.items()):
                blocked.add_row(rule if i == 0 else "", reason, str(n))
        parts.append(blocked)
    if plan.permanent_failures:
        failures = table(
            "COPY",
            "TYPE",
            "LOCATION",
            "ATTEMPTS",
            "REASON",
            title="PERMANENT FAILURES (deletion failed max_retries times)",
            right=("COPY", "ATTEMPTS"),
        )
        for f in doc["permanent_failures"]:
            failures.add_row(
                str(f["copy_id"]),
                f["copy_type"],
                f["location"],
                str(f["attempts"]),
                f["reason"] or "",
            )
        # The hint as a line of its own: a table title wraps to the table's width.
        parts += [
            failures,
            "fix the cause, then `ccat retry` (or `ccat retry --location LOC`) gives them their "
            "retries back",
        ]
    return parts


def deletion_plan_command(
    location: str = typer.Option(
        None, "--location", "-l", help="Only this location (site/name or a unique name)."
    ),
    as_json: bool = json_option(),
) -> None:
    """What would be deleted now and why, what is blocked and by which rule, bytes per location.

    Changes nothing.
    """
    from ccat_dagster.lifecycle.common.locations import resolve_location
    from ccat_dagster.lifecycle.deletion.plan import plan_deletions

    with ops_session() as session:
        loc = resolve_location(session, location) if location else None
        plan = plan_deletions(session, location=loc)
        where = loc.qualified_name if loc else None
        session.rollback()
    if as_json:
        emit(plan_document(plan, where))
    else:
        show(*plan_parts(plan, where))


def register(app: typer.Typer) -> None:
    app.command("deletion-plan")(deletion_plan_command)
