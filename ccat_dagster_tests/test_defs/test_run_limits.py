"""The run limit per site of the Dagster instance is derived from the policy, so the policy's
transfer limit is reachable (issue 13): it is the sum of every site job's own cap."""

from __future__ import annotations

import yaml
from typer.testing import CliRunner

from ccat_dagster.cli import app
from ccat_dagster.defs.definitions import build_site_definitions
from ccat_dagster.defs.run_limit_check import site_run_limit_problem
from ccat_dagster.defs.stages import TRANSFER
from ccat_dagster.instance import (
    POSTGRES_TEMPLATE,
    SQLITE_TEMPLATE,
    render_instance_config,
    template_path,
    write_instance_config,
)
from ccat_dagster.lifecycle.capacity.run_limits import OTHER_RUNS, site_run_limit
from ccat_dagster.lifecycle.common import names
from ccat_dagster.runner import open_instance
from ccat_dagster.simulate import DEFAULT_TOPOLOGY_PATH
from ccat_ops_db.policy import Policy
from ccat_ops_db.session import session_scope
from ccat_ops_db.topology import apply_topology

runner = CliRunner()


def _run_limits(text: str) -> tuple[int, dict[str, int]]:
    runs = yaml.safe_load(text)["concurrency"]["runs"]
    return runs["max_concurrent_runs"], {
        item["key"]: item["limit"] for item in runs["tag_concurrency_limits"]
    }


def test_the_templates_hold_the_site_run_limit_of_the_default_policy():
    for name in (SQLITE_TEMPLATE, POSTGRES_TEMPLATE):
        text = template_path(name).read_text()
        assert render_instance_config(name) == text
        total, per_site = _run_limits(text)
        assert total == -1, "a limit across sites would bind before a site's own"
        # transfers at max_normal_transfers, and room for every other job of the site
        assert per_site == dict.fromkeys(("ccat/site", "dagster/code_location"), 16)
        assert site_run_limit(Policy()) == 16 > Policy().max_normal_transfers


def test_every_job_of_a_site_besides_the_transfers_has_its_cap_counted(default_topology_db):
    """A new job of a site must be added to OTHER_RUNS, or the run limit per site could bind
    before the policy's transfer limit again."""
    seen: set[str] = set()
    for site in ("ccat", "cologne", "us"):
        jobs = build_site_definitions(site, ops_db_url=default_topology_db).resolve_all_job_defs()
        ours = {j.name.removeprefix(f"{site}_") for j in jobs if j.name.startswith(f"{site}_")}
        assert ours - {TRANSFER.name} <= set(OTHER_RUNS), ours - set(OTHER_RUNS)
        seen |= ours
    assert names.stage_job("cologne", TRANSFER.name) in {f"cologne_{j}" for j in seen}
    assert seen - {TRANSFER.name} == set(OTHER_RUNS), "OTHER_RUNS counts no job that is gone"


def test_instance_init_derives_the_site_run_limit_from_the_ops_db_policy(
    ops_db_url, tmp_path, monkeypatch
):
    topology = yaml.safe_load(DEFAULT_TOPOLOGY_PATH.read_text())
    topology["policy"]["max_normal_transfers"] = 8
    with session_scope(ops_db_url) as session:
        apply_topology(session, topology)
    for name in ("DAGSTER_PG_URL", "DAGSTER_PG_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CCAT_OPS_DB_URL", ops_db_url)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dh"))

    result = runner.invoke(app, ["instance", "init"])
    assert result.exit_code == 0, result.output
    limit = 8 + sum(OTHER_RUNS.values())
    assert f"at most {limit} runs per site, from the ops DB's policy" in result.output
    total, per_site = _run_limits((tmp_path / "dh" / "dagster.yaml").read_text())
    assert per_site == dict.fromkeys(("ccat/site", "dagster/code_location"), limit)
    assert total == -1


def test_a_stale_instance_run_limit_is_reported_with_the_fix(tmp_path, monkeypatch):
    """dagster.yaml written for max_normal_transfers 5, the policy raised to 8 since."""
    for name in ("DAGSTER_PG_URL", "DAGSTER_PG_HOST"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "dh"
    write_instance_config(home)
    with open_instance(home) as instance:
        assert site_run_limit_problem(instance, Policy()) is None
        problem = site_run_limit_problem(
            instance, Policy(max_normal_transfers=8, max_critical_transfers=1)
        )
    assert problem is not None
    assert "to 16, below the 19 the policy needs" in problem
    assert "ccat instance init --force" in problem


def test_instance_init_before_the_ops_db_schema_uses_the_default_policy(tmp_path, monkeypatch):
    """The documented order of a new deployment writes the instance before `ccat db upgrade`."""
    for name in ("DAGSTER_PG_URL", "DAGSTER_PG_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CCAT_OPS_DB_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dh"))
    result = runner.invoke(app, ["instance", "init"])
    assert result.exit_code == 0, result.output
    assert "at most 16 runs per site, from the default policy" in result.output
    assert "ccat db upgrade" in result.output
    assert (tmp_path / "dh" / "dagster.yaml").read_text() == template_path(
        SQLITE_TEMPLATE
    ).read_text()


def test_the_deployed_daemon_launches_several_runs_at_once_within_the_site_limits(tmp_path):
    """The PostgreSQL template's run queue launches on 4 threads (a launch waits for the site's
    code server to start the run worker) and keeps the limits per site: Dagster accepts
    ``run_queue`` beside ``concurrency.runs``. Opened here on SQLite storage."""
    config = yaml.safe_load(template_path(POSTGRES_TEMPLATE).read_text())
    del config["storage"]
    home = tmp_path / "dh"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    with open_instance(home) as instance:
        coordinator = instance.run_coordinator
        assert coordinator.dequeue_use_threads  # type: ignore[attr-defined]
        assert coordinator.dequeue_num_workers == 4  # type: ignore[attr-defined]
        queue = instance.get_concurrency_config().run_queue_config  # what the daemon applies
        assert queue is not None
        limits = {limit["key"]: limit["limit"] for limit in queue.tag_concurrency_limits}
    assert limits == dict.fromkeys(("ccat/site", "dagster/code_location"), 16)
