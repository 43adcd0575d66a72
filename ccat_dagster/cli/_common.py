"""What every ``ccat`` command shares: operator-error handling and the ops-database schema check.

Every refusal is one line on stderr, ``Error: <what is wrong>; <what to do>``, and a non-zero
exit, never a traceback: an operator error (bad topology, unknown location, site or package,
bad path, an ops database that is unreachable, missing or has no schema) exits 1, a usage error
(a missing or malformed option) exits 2 as click's do. ``CCAT_DEBUG=1`` shows the traceback.
A command refuses with :class:`OperatorError`; modules of other command groups add the error
classes of the library they call with :func:`register_operator_error`. The handling is in
:class:`CcatGroup`, the one place every command passes through.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session
from typer.core import TyperGroup

from ccat_dagster.lifecycle.common.locations import LocationError
from ccat_dagster.lifecycle.ingest.filing import FilingError
from ccat_ops_db.config import ops_db_url
from ccat_ops_db.topology import TopologyError

#: click's usage errors (missing option, bad value, no such command), from whichever click typer
#: uses (recent typer versions vendor their own copy)
ClickException: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"
)


class OperatorError(Exception):
    """A command refuses: the message says what is wrong and what to do, in one line."""


class SchemaError(RuntimeError):
    """The ops database schema is missing or at another revision than this code needs."""


OPERATOR_ERRORS: list[type[BaseException]] = [
    OperatorError,
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


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _missing_driver(exc: BaseException) -> str | None:
    """The database driver the configured URL needs, if ``exc`` is its failed import."""
    if not isinstance(exc, ImportError):
        return None
    try:
        make_url(ops_db_url()).get_dialect().import_dbapi()
    except ImportError as missing:
        return missing.name or str(missing)
    except Exception:  # noqa: BLE001 - a URL that does not parse is reported elsewhere
        return None
    return None


def operator_error_message(exc: BaseException) -> str | None:
    """The one-line message of an operator error (or an unusable ops database), else None."""
    # Imported here, when an error is handled: the defs pull in Dagster (a second at every
    # start of `ccat`).
    from ccat_dagster.defs.topology import TopologyUnavailableError, UnknownSiteError

    if isinstance(exc, (*OPERATOR_ERRORS, TopologyUnavailableError, UnknownSiteError)):
        return _one_line(str(exc))
    if isinstance(exc, OperationalError):
        return _one_line(
            f"cannot use the ops database at {shown_url(ops_db_url())}: "
            f"{str(exc.orig).strip()}; "
            "check CCAT_OPS_DB_URL and that the database server is running"
        )
    if isinstance(exc, ArgumentError | NoSuchModuleError):
        # The URL itself is wrong: it cannot be shown parsed, so not at all (it may hold a
        # password).
        return _one_line(
            f"CCAT_OPS_DB_URL is not a usable database URL ({exc}); give one like "
            "postgresql+psycopg2://USER@HOST:5432/DB or sqlite:////ABSOLUTE/PATH/ops.db"
        )
    if isinstance(exc, OSError) and exc.filename is not None:
        # A path the operator gave or a directory the command needs: what and where is enough.
        return _one_line(
            f"{exc.strerror or exc}: {exc.filename}; check the path, that it is mounted and "
            "its permissions"
        )
    driver = _missing_driver(exc)
    if driver:
        return (
            f"the ops database URL needs the Python driver {driver!r}, which is not installed; "
            "use a postgresql+psycopg2:// or sqlite:/// URL, or install the driver"
        )
    return None


def usage_error_message(exc: Exception) -> str:
    """A usage error of click (missing option, bad value) as one line with where to look."""
    ctx = getattr(exc, "ctx", None)
    where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    return _one_line(exc.format_message()) + where  # type: ignore[attr-defined]


class CcatGroup(TyperGroup):
    """The top-level group: turns operator errors into one line and exit code 1, usage errors of
    the subcommands into one line and click's exit code 2."""

    def invoke(self, ctx: typer.Context) -> Any:
        # Exit and Abort are no errors (message None): they pass through.
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort):
            raise
        except ClickException as exc:
            if os.environ.get("CCAT_DEBUG"):
                raise
            typer.echo(f"Error: {usage_error_message(exc)}", err=True)
            ctx.exit(getattr(exc, "exit_code", 2))
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
