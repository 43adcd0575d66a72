"""The Dagster instance config: SQLite under DAGSTER_HOME by default, PostgreSQL when asked.

``DAGSTER_PG_URL`` selects dagster-postgres (``DAGSTER_PG_HOST`` etc. are assembled into it).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import quote

_TEMPLATES = Path(__file__).resolve().parent / "instance_templates"


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


def write_instance_config(home: Path) -> Path:
    """Write ``home/dagster.yaml`` (PostgreSQL when configured in the env, else SQLite)."""
    home.mkdir(parents=True, exist_ok=True)
    name = "dagster.postgres.yaml" if postgres_url_from_env() else "dagster.yaml"
    target = home / "dagster.yaml"
    shutil.copyfile(_TEMPLATES / name, target)
    return target
