"""Partition pruning past ``partition_horizon_days`` (docs/scale.md), on SQLite and PostgreSQL.

An archive's partition set loses the packages whose lifecycle finished more than the horizon
ago; recent ones stay, and so does every package whose copy outside the archives still holds
its data (or ended within the horizon). The buffers' sets are never pruned. The cleanup job's
``<site>_cleanup_partitions`` step does it with an observation per pruned key.
"""

from __future__ import annotations

from datetime import timedelta

from dagster import AssetKey, DagsterEventType, EventRecordsFilter
from sqlalchemy import select, update

from ccat_dagster.defs.cleanup import cleanup_run_config
from ccat_dagster.defs.definitions import build_site_definitions
from ccat_dagster.defs.partitions import drop_partitions, partition_set_name, prune_partitions
from ccat_dagster.defs.topology import load_topology_snapshot
from ccat_dagster_tests.dagster_instance import instance_for_test
from ccat_dagster_tests.factories import archived_package, make_topology
from ccat_ops_db.models import (
    DataLocation,
    LocationType,
    PhysicalCopy,
    PhysicalCopyStatus,
    PolicySetting,
    RawDataPackage,
    utcnow,
)

LTA_KEY = AssetKey(["cologne", "lta", "raw_data_package"])
BUFFER_KEY = AssetKey(["cologne", "buffer", "raw_data_package"])


def _age(session, pkg: RawDataPackage, *, archived_days: float, ended_days: float | None):
    """Date the package's archive copy ``archived_days`` back; with ``ended_days``, end
    (DELETED) every other copy of it that many days ago, else leave them holding the data."""
    now = utcnow()
    lta_ids = select(DataLocation.id).where(
        DataLocation.location_type == LocationType.LONG_TERM_ARCHIVE
    )
    session.execute(
        update(PhysicalCopy)
        .where(
            PhysicalCopy.raw_data_package_id == pkg.id,
            PhysicalCopy.data_location_id.in_(lta_ids),
        )
        .values(created_at=now - timedelta(days=archived_days))
        .execution_options(synchronize_session=False)
    )
    if ended_days is not None:
        session.execute(
            update(PhysicalCopy)
            .where(
                PhysicalCopy.raw_data_package_id == pkg.id,
                PhysicalCopy.data_location_id.not_in(lta_ids),
            )
            .values(status=PhysicalCopyStatus.DELETED, updated_at=now - timedelta(days=ended_days))
            .execution_options(synchronize_session=False)
        )
    session.commit()


def _packages(session, tmp_path) -> dict[str, RawDataPackage]:
    topo = make_topology(session, tmp_path / "sites")
    pkgs = {
        name: archived_package(topo, name)[0]
        for name in ("old_done", "recent_archive", "ended_recently", "still_buffered")
    }
    session.commit()
    _age(session, pkgs["old_done"], archived_days=100, ended_days=90)
    _age(session, pkgs["recent_archive"], archived_days=5, ended_days=4)
    _age(session, pkgs["ended_recently"], archived_days=100, ended_days=3)
    # its copies at the buffers still hold the data, however old the archive copy is
    _age(session, pkgs["still_buffered"], archived_days=100, ended_days=None)
    return pkgs


def _lta(session) -> DataLocation:
    return session.scalars(
        select(DataLocation).where(DataLocation.location_type == LocationType.LONG_TERM_ARCHIVE)
    ).one()


def test_prune_removes_keys_past_the_horizon_and_keeps_recent_and_held_ones(session, tmp_path):
    pkgs = _packages(session, tmp_path)
    with instance_for_test() as instance:
        instance.add_dynamic_partitions(partition_set_name(LTA_KEY), list(pkgs))
        instance.add_dynamic_partitions(partition_set_name(BUFFER_KEY), list(pkgs))
        lta = _lta(session)

        assert prune_partitions(instance, session, lta, horizon_days=0) == [], "0 keeps all"
        pruned = prune_partitions(instance, session, lta, horizon_days=30)
        assert [o.partition for o in pruned] == ["old_done"]
        assert pruned[0].asset_key == LTA_KEY
        assert pruned[0].metadata["reason"].value == "partition_horizon_days=30"
        drop_partitions(instance, pruned)

        assert sorted(instance.get_dynamic_partitions(partition_set_name(LTA_KEY))) == [
            "ended_recently",
            "recent_archive",
            "still_buffered",
        ]
        # a buffer's set is never pruned by the horizon (its keys are what it holds now)
        buffer = session.scalars(
            select(DataLocation).where(DataLocation.location_type == LocationType.BUFFER)
        ).first()
        assert buffer is not None
        assert prune_partitions(instance, session, buffer, horizon_days=30) == []
        assert len(instance.get_dynamic_partitions(partition_set_name(BUFFER_KEY))) == 4

        # a longer horizon: the recently archived one goes only once it is past it too
        assert prune_partitions(instance, session, lta, horizon_days=200) == []
        later = utcnow() + timedelta(days=40)
        assert sorted(
            o.partition
            for o in prune_partitions(instance, session, lta, horizon_days=30, now=later)
        ) == ["ended_recently", "recent_archive"], "still_buffered: its buffer copy holds data"
        oldest_first = prune_partitions(instance, session, lta, horizon_days=30, now=later, limit=1)
        assert [o.partition for o in oldest_first] == ["ended_recently"], "a cap per run"


def test_cleanup_job_prunes_the_archive_partitions(ops_db_url, session, tmp_path):
    pkgs = _packages(session, tmp_path)
    session.merge(PolicySetting(key="partition_horizon_days", value=30))
    session.commit()
    defs = build_site_definitions("cologne", ops_db_url=ops_db_url)
    site = load_topology_snapshot(ops_db_url).site("cologne")
    job = defs.resolve_job_def("cologne_cleanup")
    with instance_for_test() as instance:
        instance.add_dynamic_partitions(partition_set_name(LTA_KEY), list(pkgs))

        dry = job.execute_in_process(
            run_config=cleanup_run_config(site, dry_run=True), instance=instance
        )
        assert dry.success
        assert len(instance.get_dynamic_partitions(partition_set_name(LTA_KEY))) == 4

        result = job.execute_in_process(run_config=cleanup_run_config(site), instance=instance)
        assert result.success
        assert sorted(instance.get_dynamic_partitions(partition_set_name(LTA_KEY))) == [
            "ended_recently",
            "recent_archive",
            "still_buffered",
        ]
        observed = instance.get_event_records(
            EventRecordsFilter(DagsterEventType.ASSET_OBSERVATION, asset_key=LTA_KEY)
        )
        assert [r.partition_key for r in observed] == ["old_done"]
