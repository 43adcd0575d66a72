"""``ccat instance init``: write the Dagster instance config from the packaged template, its run
limit per site derived from the policy in the ops DB (``lifecycle.capacity.run_limits``)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from ccat_dagster.cli._common import SchemaError, ops_session, register_operator_error
from ccat_dagster.instance import (
    InstanceConfigExistsError,
    template_name,
    template_path,
    write_instance_config,
)
from ccat_dagster.lifecycle.capacity.run_limits import site_run_limit
from ccat_dagster.lifecycle.common.policy import get_policy
from ccat_ops_db.policy import Policy

instance_app = typer.Typer(help="The Dagster instance config ($DAGSTER_HOME/dagster.yaml).")

register_operator_error(InstanceConfigExistsError)


@instance_app.command("init")
def init_command(
    home: Path | None = typer.Option(
        None,
        "--home",
        help="Directory to write dagster.yaml into (default: $DAGSTER_HOME).",
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing dagster.yaml."),
) -> None:
    """Write dagster.yaml: the PostgreSQL template when DAGSTER_PG_URL or DAGSTER_PG_HOST is
    set, else the SQLite one (both in ccat_dagster/instance_templates/), with the run limit per
    site derived from the policy of the ops DB at CCAT_OPS_DB_URL (unset: the default policy)."""
    if home is None:
        if not os.environ.get("DAGSTER_HOME"):
            raise typer.BadParameter("set DAGSTER_HOME or pass --home DIR", param_hint="--home")
        home = Path(os.environ["DAGSTER_HOME"])
    name = template_name()
    policy, where = _policy_in_ops_db()
    target = write_instance_config(home, replace=force, policy=policy)
    limit = site_run_limit(policy or Policy())
    typer.echo(
        f"wrote {target} from {template_path(name)}: at most {limit} runs per site, from "
        f"{where} (write it again after changing max_normal_transfers)"
    )


def _policy_in_ops_db() -> tuple[Policy | None, str]:
    """The policy of the ops DB that ``CCAT_OPS_DB_URL`` names, and where it came from; None
    (the default policy, as the image's copy of the template) when the variable is unset or the
    ops DB has no schema yet (a new deployment may write the instance first)."""
    if not os.environ.get("CCAT_OPS_DB_URL"):
        return None, "the default policy"
    try:
        with ops_session() as session:
            return get_policy(session), "the ops DB's policy"
    except SchemaError as exc:
        return None, f"the default policy ({exc}, then `ccat instance init --force`)"


def register(app: typer.Typer) -> None:
    app.add_typer(instance_app, name="instance")
