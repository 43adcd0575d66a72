"""Stage sensors, evaluated with Dagster's test contexts against a real instance and ops DB."""

from __future__ import annotations

import json

import pytest
from dagster import SensorResult, SkipReason, build_sensor_context
from sqlalchemy import func, select

from ccat_dagster.defs.definitions import build_site_definitions
from ccat_dagster_tests.dagster_instance import instance_for_test
from ccat_dagster_tests.pipeline_support import file_simulated_data, real_topology
from ccat_ops_db.models import RawDataPackage, Status
from ccat_ops_db.topology import apply_topology


@pytest.fixture
def local_pipeline(ops_db_url, session, tmp_path):
    apply_topology(session, real_topology(tmp_path))
    session.commit()
    return ops_db_url, session, tmp_path


def _evaluate(defs, name, instance, cursor=None):
    sensor = defs.resolve_sensor_def(name)
    with build_sensor_context(
        instance=instance, cursor=cursor, definitions=defs, resources=defs.resources
    ) as context:
        return sensor(context)


def test_package_sensor_skips_and_writes_nothing_when_nothing_is_filed(local_pipeline):
    url, session, _ = local_pipeline
    defs = build_site_definitions("ccat", ops_db_url=url)
    with instance_for_test() as instance:
        result = _evaluate(defs, "ccat_raw_data_package_creation_sensor", instance)
    assert isinstance(result, SkipReason)
    assert session.scalar(select(func.count()).select_from(RawDataPackage)) == 0


def test_package_sensor_creates_packages_adds_partitions_and_requests_one_batched_run(
    local_pipeline,
):
    url, session, root = local_pipeline
    file_simulated_data(session, root, n_obs_units=2, files_per_unit=2, max_size=20_000)
    defs = build_site_definitions("ccat", ops_db_url=url)
    with instance_for_test() as instance:
        result = _evaluate(defs, "ccat_raw_data_package_creation_sensor", instance)
        assert isinstance(result, SensorResult)
        packages = session.scalars(select(RawDataPackage).order_by(RawDataPackage.id)).all()
        # grouped by obs unit x instrument module: 2 x 2
        assert len(packages) == 4
        assert all(p.status == Status.PENDING for p in packages)
        assert len(result.run_requests) == 1, "one run for the whole batch, not one per package"
        items = result.run_requests[0].run_config["ops"]["ccat_raw_data_package_creation_batch"][
            "config"
        ]["items"]
        assert items == [str(p.id) for p in packages]
        (add,) = result.dynamic_partitions_requests
        assert add.partitions_def_name == "ccat__telescope_buffer__raw_data_package"
        assert list(add.partition_keys) == [p.name for p in packages]
        cursor = json.loads(result.cursor)
        assert cursor["last_raw_data_package_id"] == packages[-1].id

        # the batch is now in flight: the next tick requests nothing for the same packages
        job = defs.resolve_job_def("ccat_raw_data_package_creation")
        instance.create_run_for_job(job_def=job, run_config=result.run_requests[0].run_config)
        again = _evaluate(defs, "ccat_raw_data_package_creation_sensor", instance, result.cursor)
        assert isinstance(again, SkipReason)
        assert "in flight" in again.skip_message


def test_transfer_sensor_at_lta_site_skips_until_something_is_routed_there(local_pipeline):
    url, _, _ = local_pipeline
    defs = build_site_definitions("cologne", ops_db_url=url)
    with instance_for_test() as instance:
        for name in (
            "cologne_data_transfer_sensor",
            "cologne_data_transfer_unpacking_sensor",
            "cologne_long_term_archive_transfer_sensor",
        ):
            assert isinstance(_evaluate(defs, name, instance), SkipReason)


def test_transfer_sensor_sets_the_transfer_pool_to_the_policy_limit(local_pipeline):
    url, session, _ = local_pipeline
    from ccat_ops_db.models import PolicySetting

    session.merge(PolicySetting(key="max_normal_transfers", value=3))
    session.commit()
    defs = build_site_definitions("cologne", ops_db_url=url)
    with instance_for_test() as instance:
        _evaluate(defs, "cologne_data_transfer_sensor", instance)
        info = instance.event_log_storage.get_concurrency_info("cologne_buffer_data_transfer")
        assert info.slot_count == 3


def test_pool_limit_written_by_a_twin_at_the_same_moment_fails_no_tick(local_pipeline, monkeypatch):
    """Two writers of a transfer pool's limit (the stage's sensor and the buffer monitor, or
    two run-until-idle) raced on the pool's first row: the loser's tick failed with Dagster's
    IntegrityError (seen in the fault suite). The loser reads again and the tick goes on."""
    from sqlalchemy.exc import IntegrityError

    url, _, _ = local_pipeline
    defs = build_site_definitions("cologne", ops_db_url=url)
    pool = "cologne_buffer_data_transfer"
    with instance_for_test() as instance:
        storage = instance.event_log_storage
        real_set = storage.set_concurrency_slots
        calls = []

        def twin_first(key, num):
            calls.append(key)
            if len(calls) == 1:
                real_set(key, num)  # the twin's write lands first ...
                raise IntegrityError("INSERT INTO concurrency_limits", {}, Exception("UNIQUE"))
            real_set(key, num)

        monkeypatch.setattr(storage, "set_concurrency_slots", twin_first)
        result = _evaluate(defs, "cologne_data_transfer_sensor", instance)
        assert isinstance(result, SkipReason)
        assert calls == [pool], "read again, found the twin's limit, wrote nothing more"
        assert storage.get_concurrency_info(pool).slot_count > 0
