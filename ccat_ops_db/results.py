"""Typed results of statements whose SQLAlchemy types are wider than what the database returns."""

from __future__ import annotations

from typing import Any, TypeVar, cast

from sqlalchemy import CursorResult, Executable, Result
from sqlalchemy.orm import Session

T = TypeVar("T")


def rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE/DELETE/INSERT matched (``session.execute`` is typed as a plain Result)."""
    return cast(CursorResult[Any], result).rowcount


def count(session: Session, statement: Executable) -> int:
    """The value of a ``SELECT count(...)`` (0 when the database returns NULL)."""
    return int(session.scalar(statement) or 0)


def required(value: T | None, what: str) -> T:
    """A column the pipeline has filled by now (e.g. a COMPLETED package's size); a missing one
    is a broken invariant, not a case to handle."""
    if value is None:
        raise RuntimeError(f"{what} is not recorded in the ops database")
    return value
