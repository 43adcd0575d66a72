"""``--json`` output of the ``ccat`` commands: one JSON document on stdout, for scripts and
monitoring.

The documents are stable (docs/operations.md, "Scripts and monitoring"): keys are only ever
added, never renamed or removed; timestamps are ISO 8601 in UTC; sizes are bytes; statuses and
types are the values the ops DB stores (as in the tables). Nothing else goes to stdout with
``--json`` (no table, no markup, no progress bar: progress is on stderr and only on a
terminal), so ``ccat status --json | jq`` always parses.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from datetime import UTC, datetime
from pathlib import PurePath
from typing import Any

import typer


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        # naive timestamps of the ops DB are UTC
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, PurePath):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(document: Any) -> str:
    return json.dumps(document, indent=2, default=_default, ensure_ascii=False)


def emit(document: Any) -> None:
    """Print ``document`` as JSON on stdout."""
    typer.echo(dumps(document))


def json_option() -> Any:
    """The ``--json`` flag every inspecting command shares."""
    return typer.Option(
        False,
        "--json",
        help="Print one JSON document instead of tables (stable keys: docs/operations.md).",
    )
