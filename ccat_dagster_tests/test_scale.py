"""The S3 compute-log set-up of docs/scale.md works against a real S3 endpoint.

The YAML block of the guide is parsed and used as the instance's ``compute_logs`` (bucket and
endpoint pointed at the moto server); a site's stage job then runs and its step logs land in
the bucket, where the webserver of a multi-machine deployment reads them.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from ccat_dagster.defs.definitions import build_site_definitions
from ccat_dagster_tests.dagster_instance import instance_for_test
from ccat_dagster_tests.pipeline_support import real_topology, setup_pipeline
from ccat_ops_db.models import RawDataPackage
from ccat_ops_db.session import session_scope

SCALE_DOC = Path(__file__).resolve().parents[1] / "docs" / "scale.md"


def _documented_compute_logs() -> dict:
    blocks = re.findall(r"```yaml\n(.*?)```", SCALE_DOC.read_text(), flags=re.S)
    (config,) = [yaml.safe_load(b) for b in blocks if "compute_logs:" in b]
    return config["compute_logs"]


def test_step_logs_of_a_stage_run_go_to_s3(
    fresh_sqlite_url, tmp_path, s3_endpoint, s3_bucket, s3_client
):
    compute_logs = _documented_compute_logs()
    assert compute_logs["class"] == "S3ComputeLogManager"
    compute_logs["config"].update(
        bucket=s3_bucket,
        endpoint_url=s3_endpoint,
        region="us-east-1",
        local_dir=str(tmp_path / "compute-logs"),
        upload_interval=1,
    )
    setup_pipeline(
        fresh_sqlite_url,
        real_topology(tmp_path),
        tmp_path,
        n_obs_units=1,
        files_per_unit=1,
        max_size=10_000,
    )
    defs = build_site_definitions("ccat", ops_db_url=fresh_sqlite_url)
    with session_scope(fresh_sqlite_url) as session:
        from sqlalchemy import select

        from ccat_dagster.lifecycle.ingest.raw_data_packages import (
            create_raw_data_packages_for_location,
        )
        from ccat_ops_db.models import DataLocation

        source = session.scalar(
            select(DataLocation).where(DataLocation.name == "primecam_raw_data")
        )
        items = [str(p.id) for p in create_raw_data_packages_for_location(session, source)]
    with instance_for_test(overrides={"compute_logs": compute_logs}) as instance:
        result = defs.resolve_job_def("ccat_raw_data_package_creation").execute_in_process(
            run_config={
                "ops": {"ccat_raw_data_package_creation_batch": {"config": {"items": items}}}
            },
            instance=instance,
        )
        assert result.success
    keys = [
        o["Key"]
        for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket)
        for o in page.get("Contents", [])
    ]
    prefix = compute_logs["config"]["prefix"]
    assert any(k.startswith(f"{prefix}/") and result.run_id in k for k in keys), keys
    with session_scope(fresh_sqlite_url) as session:
        assert session.get(RawDataPackage, int(items[0])).size
