"""Fixtures of the Dagster wiring tests."""

from __future__ import annotations

import pytest

from ccat_dagster.simulate import DEFAULT_TOPOLOGY_PATH
from ccat_ops_db.session import session_scope
from ccat_ops_db.topology import apply_topology


@pytest.fixture
def default_topology_db(fresh_sqlite_url, monkeypatch):
    """A fresh ops DB with the default topology, as ``CCAT_OPS_DB_URL``."""
    monkeypatch.setenv("CCAT_OPS_DB_URL", fresh_sqlite_url)
    with session_scope(fresh_sqlite_url) as session:
        apply_topology(session, DEFAULT_TOPOLOGY_PATH)
    return fresh_sqlite_url
