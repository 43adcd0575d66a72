"""Fixtures of the lifecycle tests."""

from __future__ import annotations

import pytest

from ccat_dagster_tests import factories as f


@pytest.fixture
def topo(session, tmp_path):
    """The telescope site and one archive site (cologne) on local disks under ``tmp_path``."""
    topology = f.make_topology(session, tmp_path, lta_sites=("cologne",))
    session.commit()
    return topology
