"""The Dagster instance config: SQLite under DAGSTER_HOME by default, PostgreSQL when asked.

``DAGSTER_PG_URL`` selects dagster-postgres (``DAGSTER_PG_HOST`` etc. are assembled into it).
The two templates in ``instance_templates/`` (installed with the package) are the only copies in
the repository; ``ccat instance init`` writes one to ``$DAGSTER_HOME/dagster.yaml``, and
``ccat run-until-idle`` / ``ccat demo`` do so for a new DAGSTER_HOME.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from ccat_dagster.lifecycle.capacity.run_limits import site_run_limit
from ccat_ops_db.policy import Policy

_TEMPLATES = Path(__file__).resolve().parent / "instance_templates"
SQLITE_TEMPLATE = "dagster.yaml"
POSTGRES_TEMPLATE = "dagster.postgres.yaml"


class InstanceConfigExistsError(FileExistsError):
    """``$DAGSTER_HOME/dagster.yaml`` exists and was not to be replaced."""


def template_path(name: str) -> Path:
    """The packaged instance template ``name`` (``dagster.yaml`` or ``dagster.postgres.yaml``)."""
    return _TEMPLATES / name


def template_name() -> str:
    """The template this environment asks for: PostgreSQL when ``DAGSTER_PG_URL`` or
    ``DAGSTER_PG_HOST`` is set, else SQLite."""
    return POSTGRES_TEMPLATE if postgres_url_from_env() else SQLITE_TEMPLATE


def postgres_url_from_env() -> str | None:
    """``DAGSTER_PG_URL``, or one built from ``DAGSTER_PG_HOST/_PORT/_USER/_PASSWORD/_DB``."""
    if os.environ.get("DAGSTER_PG_URL"):
        return os.environ["DAGSTER_PG_URL"]
    host = os.environ.get("DAGSTER_PG_HOST")
    if not host:
        return None
    user = quote(os.environ.get("DAGSTER_PG_USER", "postgres"))
    password = os.environ.get("DAGSTER_PG_PASSWORD")
    auth = f"{user}:{quote(password)}" if password else user
    port = os.environ.get("DAGSTER_PG_PORT", "5432")
    db = os.environ.get("DAGSTER_PG_DB", "dagster")
    # The driver is named: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3.
    url = f"postgresql+psycopg2://{auth}@{host}:{port}/{db}"
    os.environ["DAGSTER_PG_URL"] = url
    return url


#: the lines of a template that hold the run limit per site (``# site run limit``)
_SITE_RUN_LIMIT = re.compile(r"(?m)^(\s+limit: )\d+(  # site run limit)$")


def render_instance_config(name: str, policy: Policy | None = None) -> str:
    """Template ``name`` with its run limit per site derived from ``policy`` (default: the
    policy's defaults, which the templates hold as written)."""
    limit = site_run_limit(policy or Policy())
    text, count = _SITE_RUN_LIMIT.subn(rf"\g<1>{limit}\g<2>", template_path(name).read_text())
    if count == 0:  # a template edited without its marker would silently keep a fixed limit
        raise ValueError(f"{template_path(name)} has no '# site run limit' line")
    return text


def write_instance_config(
    home: Path, *, replace: bool = True, policy: Policy | None = None
) -> Path:
    """Write ``home/dagster.yaml`` (PostgreSQL when configured in the env, else SQLite), its run
    limit per site derived from ``policy`` (``lifecycle.capacity.run_limits``).

    With ``replace=False`` an existing file is kept and InstanceConfigExistsError raised."""
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    if not replace and target.exists():
        raise InstanceConfigExistsError(
            f"{target} exists; compare it with {template_path(template_name())} or pass "
            "--force to replace it"
        )
    target.write_text(render_instance_config(template_name(), policy))
    return target


#: the lock file beside ``dagster.yaml`` that serializes opening the instance
LOCK_FILE = ".ccat-instance.lock"


@contextmanager
def instance_lock(home: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``home`` while a process opens its Dagster instance.

    The SQLite storages are created and stamped with their schema version when a process first
    opens a new DAGSTER_HOME; two processes doing that at once (a cron job and an operator, two
    ``run-until-idle``) fail with "table already exists" or "database is locked", or stamp the
    version twice, after which every open fails ("more than one head present"). Opening under
    this lock (``fcntl.flock``, released when the process dies) makes it one at a time; it costs
    nothing once the storages exist.
    """
    Path(home).mkdir(parents=True, exist_ok=True)
    with open(Path(home) / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
