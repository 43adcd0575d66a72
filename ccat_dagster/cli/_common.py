"""What every ``ccat`` command shares: operator-error handling and the ops-database schema check.

An operator error (bad topology, unknown location, bad path, unreachable database) is printed
as ``Error: <message>`` on stderr with exit code 1 and no traceback; ``CCAT_DEBUG=1`` shows the
traceback. Modules of other command groups add their own error classes with
:func:`register_operator_error`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from typer.core import TyperGroup

from ccat_dagster.lifecycle.common.locations import LocationError
from ccat_dagster.lifecycle.ingest.filing import FilingError
from ccat_ops_db.config import ops_db_url
from ccat_ops_db.topology import TopologyError


class SchemaError(RuntimeError):
    """The ops database schema is missing or at another revision than this code needs."""


OPERATOR_ERRORS: list[type[BaseException]] = [
    TopologyError,
    LocationError,
    FilingError,
    SchemaError,
]


def register_operator_error(cls: type[BaseException]) -> type[BaseException]:
    """Make ``cls`` an operator error of every ``ccat`` command (usable as a class decorator)."""
    if cls not in OPERATOR_ERRORS:
        OPERATOR_ERRORS.append(cls)
    return cls


def shown_url(url: str) -> str:
    """The URL with any password hidden, for messages."""
    return make_url(url).render_as_string(hide_password=True)


def operator_error_message(exc: BaseException) -> str | None:
    """The one-line message of an operator error (or an unusable ops database), else None."""
    if isinstance(exc, tuple(OPERATOR_ERRORS)):
        return str(exc)
    if isinstance(exc, OperationalError):
        return (
            f"cannot use the ops database at {shown_url(ops_db_url())}: "
            f"{str(exc.orig).strip()}; "
            "check CCAT_OPS_DB_URL and that the database server is running"
        )
    return None


class CcatGroup(TyperGroup):
    """The top-level group: turns operator errors into a message and exit code 1."""

    def invoke(self, ctx: typer.Context) -> Any:
        # Exit, Abort and usage errors are no operator errors (message None): they pass through.
        try:
            return super().invoke(ctx)
        except Exception as exc:
            if os.environ.get("CCAT_DEBUG"):
                raise
            message = operator_error_message(exc)
            if message is None:
                raise
            typer.echo(f"Error: {message}", err=True)
            ctx.exit(1)


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    from ccat_ops_db.migrate import alembic_config

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    if head is None:
        raise RuntimeError("the ops database migrations have no head revision")
    return head


def ensure_schema(url: str, *, create: bool) -> None:
    """Check the schema is at head; with ``create``, build it in a database that has none."""
    from ccat_ops_db.migrate import current, upgrade

    revision, head = current(url), head_revision()
    if revision == head:
        return
    if revision is None and create:
        typer.echo(
            f"the ops database at {shown_url(url)} has no schema yet; creating it "
            "(as `ccat db upgrade` would)",
            err=True,
        )
        upgrade(url)
        return
    if revision is None:
        raise SchemaError(
            f"the ops database at {shown_url(url)} has no schema; run `ccat db upgrade`"
        )
    raise SchemaError(
        f"the ops database at {shown_url(url)} is at revision {revision}, this ccat needs "
        f"{head}; run `ccat db upgrade` (or update ccat if the database is newer)"
    )


@contextmanager
def ops_session(*, create_schema: bool = False) -> Iterator[Session]:
    """A committing session on the configured ops database, after the schema check."""
    from ccat_ops_db.session import session_scope

    url = ops_db_url()
    ensure_schema(url, create=create_schema)
    with session_scope(url) as session:
        yield session
