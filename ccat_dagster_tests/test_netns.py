"""The multi-host test network itself (``fixtures/netns.py``): each host reaches the others only
on the private subnet, over the links the fixture made; SSH works with the verified host keys;
PostgreSQL in ops answers from every host; a link cut is a real cut; and nothing is left behind."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from ccat_dagster_tests.fixtures.netns import (
    SSH_HOSTS,
    Network,
    multihost_network,
    namespaces_of_this_run,
    sweep_dead_runs,
)

pytestmark = pytest.mark.slow


def _ssh(network: Network, source: str, target: str, command: str) -> subprocess.CompletedProcess:
    host = network[target]
    return subprocess.run(
        network[source].exec_argv(
            "ssh",
            "-i",
            network.key_file,
            "-o",
            f"UserKnownHostsFile={network.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=3",
            f"root@{host.address}",
            command,
        ),
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_hosts_reach_each_other_only_inside_the_network():
    with multihost_network() as network:
        suffix = network.suffix
        assert len(namespaces_of_this_run(suffix)) == 5
        # SSH between sites, host keys checked; each host answers with its own address
        done = _ssh(network, "cologne", "ccat", "hostname -I")
        assert done.returncode == 0, done.stderr
        assert network["ccat"].address in done.stdout.split()
        done = _ssh(network, "ccat", "instrument", "hostname -I")
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == [network["instrument"].address]
        # no route off the subnet from any host
        for name in SSH_HOSTS:
            routes = subprocess.run(
                network[name].exec_argv("ip", "route"), capture_output=True, text=True, check=True
            ).stdout
            assert "default" not in routes, routes
        # PostgreSQL in ops, from a site host (psql-free: the test thread enters the namespace)
        assert network.postgres is not None
        with network.entered("us"):
            engine = sa.create_engine(network.postgres.url(), poolclass=sa.NullPool)
            with engine.connect() as conn:
                assert conn.execute(sa.text("select inet_server_addr()")).scalar() == "10.213.0.1"
            engine.dispose()
        # a cut link is a cut: us is unreachable until it comes back
        network.link("us", up=False)
        assert _ssh(network, "cologne", "us", "true").returncode != 0
        network.link("us", up=True)
        deadline = time.monotonic() + 20  # the neighbour entry of the failed tries expires
        while _ssh(network, "cologne", "us", "true").returncode != 0:
            assert time.monotonic() < deadline, "us is back within 20 s of its link"
            time.sleep(0.5)
    assert namespaces_of_this_run(suffix) == []


def test_namespaces_left_by_a_dead_run_are_swept():
    dead = 2**22 + 1  # above pid_max's default, so no process has it
    while Path(f"/proc/{dead}").exists():
        dead += 1
    stale = f"ccat-{dead}-ccat"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        assert stale in sweep_dead_runs()
        assert namespaces_of_this_run(str(dead)) == []
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)
