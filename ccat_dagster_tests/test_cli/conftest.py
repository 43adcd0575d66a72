"""Fixtures of the ``ccat`` command tests: a topology file and an ops DB before its first use."""

from __future__ import annotations

from pathlib import Path

import pytest

from ccat_dagster.simulate import demo_topology
from ccat_ops_db.topology import dump_topology


@pytest.fixture
def topology_file(tmp_path) -> Path:
    """The demo topology with every storage a directory under ``tmp_path/home``."""
    path = tmp_path / "topology.yaml"
    path.write_text(dump_topology(demo_topology(tmp_path / "home")))
    return path


@pytest.fixture
def empty_sqlite(tmp_path, monkeypatch) -> str:
    """An ops DB URL whose database has no schema yet (an operator's first start)."""
    url = f"sqlite:///{tmp_path / 'first_start.db'}"
    monkeypatch.setenv("CCAT_OPS_DB_URL", url)
    return url
