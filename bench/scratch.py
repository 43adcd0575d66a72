"""Scratch PostgreSQL databases for the benches: a new database with a unique name, dropped
(with any connection still open to it) when the bench is done. ``CCAT_TEST_POSTGRES_URL``
names the server, as for the tests (default: the local one)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import make_url

ADMIN_URL = os.environ.get(
    "CCAT_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)


@contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """The URL of a new database ``<prefix>_<random>`` on the server of ``ADMIN_URL``."""
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
