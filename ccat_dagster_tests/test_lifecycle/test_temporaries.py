"""Temporaries of killed runs: listed per location without walking objects, removed only when
older than the cutoff, never an object, a dry run changes nothing (both ops DBs, real disks)."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ccat_dagster.lifecycle.temporaries import stale_temporaries, sweep_temporaries
from ccat_dagster.storage.errors import TransientStorageError
from ccat_dagster_tests import factories as f

HOUR = 3600


@pytest.fixture
def topo(session, tmp_path):
    t = f.make_topology(session, tmp_path, lta_sites=("cologne",))
    session.commit()
    return t


def leftover(location, name: str, *, age_seconds: float, size: int = 10) -> Path:
    partial = Path(location.path) / ".ccat-partial"
    partial.mkdir(exist_ok=True)
    path = partial / name
    path.write_bytes(b"x" * size)
    then = time.time() - age_seconds
    os.utime(path, (then, then))
    return path


def test_sweep_removes_only_what_is_older_than_the_cutoff(topo):
    buffer, lta = topo.locations["ccat/telescope_buffer"], topo.locations["cologne/lta"]
    f.write_object(buffer, "raw/pkg.tar", b"object")
    old_buffer = leftover(buffer, "a-pkg.tar", age_seconds=2 * HOUR)
    old_lta = leftover(lta, "b-pkg.tar", age_seconds=2 * HOUR, size=5)
    young = leftover(buffer, "c-pkg.tar", age_seconds=60)
    cutoff = datetime.now(UTC) - timedelta(hours=1)
    locations = list(topo.locations.values())

    listed = stale_temporaries(locations, f.local_storage_for, older_than=cutoff)
    assert sorted(t.describe().split(",")[0] for t in listed.stale) == [
        "ccat/telescope_buffer: .ccat-partial/a-pkg.tar",
        "cologne/lta: .ccat-partial/b-pkg.tar",
    ]
    assert listed.younger == 1
    assert listed.removed == []
    dry = sweep_temporaries(locations, f.local_storage_for, older_than=cutoff, dry_run=True)
    assert len(dry.stale) == 2
    assert dry.removed == []
    assert old_buffer.exists()

    report = sweep_temporaries(locations, f.local_storage_for, older_than=cutoff)
    assert len(report.removed) == 2
    assert report.removed_bytes == 15
    assert not report.errors
    assert not old_buffer.exists()
    assert not old_lta.exists()
    assert young.exists(), "a run in flight may still be writing it"
    assert f.object_path(buffer, "raw/pkg.tar").read_bytes() == b"object"
    assert "2 removed (15 bytes), 1 younger kept" in report.summary()


def test_a_location_that_cannot_be_listed_is_reported_and_the_rest_swept(topo):
    buffer = topo.locations["ccat/telescope_buffer"]
    old = leftover(buffer, "a-pkg.tar", age_seconds=2 * HOUR)
    broken = topo.locations["cologne/buffer"]

    def storage_for(location):
        if location is broken:
            raise TransientStorageError("host unreachable", location="cologne/buffer")
        return f.local_storage_for(location)

    report = sweep_temporaries(
        [broken, buffer], storage_for, older_than=datetime.now(UTC) - timedelta(hours=1)
    )
    assert not old.exists()
    assert len(report.removed) == 1
    assert report.errors
    assert "cologne/buffer" in report.errors[0]
