"""Planner locks: two planners of one scope run one after the other, never interleaved.

A planner reads what is ready and writes the rows of new work (packages, bundles, routes, staged
copies). Two of them at once (the daemon and a manual ``ccat run-until-idle``, two daemons after a
failover) would both read the same ready work and create it twice. :func:`planner_lock` makes
them take turns on the scope's row of ``planner_lock``: it ends the caller's open transaction,
makes sure the row exists (INSERT ... ON CONFLICT DO NOTHING, committed), then takes it with an
UPDATE as the first statement of a new transaction. On PostgreSQL that is a row lock; on SQLite
it is the database's write lock, and it must come first because SQLite in WAL mode cannot
upgrade a read snapshot that went stale to a write (and would not wait for the lock then). The
planner reads inside the block, so it sees what the twin before it committed; committing (the
planners do, and leaving the block does) or rolling back releases the lock. Scopes are named by
:func:`scope`, e.g. ``packaging:<source location id>``. The consistency audit of a location
takes one too (``audit:<location id>``): it moves the location's cursor and acts on findings.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import update
from sqlalchemy.orm import Session

from ccat_ops_db.models import PlannerLock, utcnow
from ccat_ops_db.session import dialect_insert

PACKAGING = "packaging"
BUNDLING = "bundling"
ROUTING = "routing"
STAGING = "staging"
AUDIT = "audit"


def scope(kind: str, key: int | str) -> str:
    """The lock name of one planner scope, e.g. ``scope(PACKAGING, source.id)``."""
    return f"{kind}:{key}"


def _holder(run_id: str | None) -> str:
    where = f"{socket.gethostname()}:{os.getpid()}"
    return f"{where} {run_id}"[:128] if run_id else where


def _ensure_row(session: Session, name: str) -> None:
    session.execute(
        dialect_insert(session, PlannerLock)
        .values(name=name)
        .on_conflict_do_nothing(index_elements=["name"])
    )
    session.commit()


@contextmanager
def planner_lock(session: Session, name: str, *, run_id: str | None = None) -> Iterator[None]:
    """Hold the planner lock ``name`` for the block (see the module docstring).

    Commits the caller's open transaction first. Queries inside the block see what the
    database holds now; ORM objects the session loaded before keep their old attributes unless
    re-read (``populate_existing``), so planners decide on what they query inside. Leaving the
    block normally commits; an exception rolls back; either releases the lock.
    """
    session.commit()
    _ensure_row(session, name)
    session.execute(
        update(PlannerLock)
        .where(PlannerLock.name == name)
        .values(holder=_holder(run_id), acquired_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    try:
        yield
    except BaseException:
        session.rollback()
        raise
    session.commit()
