"""Where the operations database and the working home live, from the environment."""

from __future__ import annotations

import os
from pathlib import Path


def ccat_home() -> Path:
    """``CCAT_HOME`` (default ``./.ccat``): the home of the embedded default ops DB."""
    return Path(os.environ.get("CCAT_HOME", ".ccat")).resolve()


def ops_db_url() -> str:
    """``CCAT_OPS_DB_URL``, or SQLite at ``$CCAT_HOME/ops.db``."""
    url = os.environ.get("CCAT_OPS_DB_URL")
    if url:
        return url
    home = ccat_home()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'ops.db'}"
